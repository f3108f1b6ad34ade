"""``synpro serve`` (an OpenAI-compatible server over the in-graph sampler) and a resilient OpenAI client."""

from synpro_jax.serve.client import (
    CircuitBreaker,
    CircuitOpenError,
    ClientConfig,
    MalformedReply,
    OpenAIClient,
    RemoteError,
)

__all__ = ["CircuitBreaker", "CircuitOpenError", "ClientConfig", "MalformedReply", "OpenAIClient", "RemoteError"]
