"""A client for any OpenAI-compatible endpoint (vLLM, ``synpro serve``, ...), on httpx.

Each call has a timeout, is retried with exponential backoff (``backoff_s * 2**attempt``, capped, with jitter) on
timeouts, dropped connections, 408/429/5xx and malformed bodies, and goes through a circuit breaker: after
``breaker_failures`` consecutive failed calls (each after its retries) the client fails fast for
``breaker_cooldown_s``, then lets one trial call through; its success closes the breaker again.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from typing import Any, Sequence

import httpx

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class RemoteError(RuntimeError):
    """A call failed: after its retries, on a non-retryable status, or with the breaker open."""


class CircuitOpenError(RemoteError):
    """The circuit breaker is open: the endpoint failed too often just now."""


class MalformedReply(RemoteError):
    """The endpoint answered 200 with a body that is not an OpenAI reply."""


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # None: the first model GET /models lists
    api_key: str = "EMPTY"
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 3  # attempts after the first
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={self.base_url!r}: an http(s) URL such as http://127.0.0.1:8000/v1")
        for name in ("timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ClientConfig.{name}={getattr(self, name)} must be > 0")
        for name in ("backoff_s", "max_backoff_s", "breaker_cooldown_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"ClientConfig.{name}={getattr(self, name)} must be >= 0")
        if self.max_retries < 0 or self.breaker_failures < 1:
            raise ValueError(f"ClientConfig.max_retries={self.max_retries} must be >= 0 and breaker_failures="
                             f"{self.breaker_failures} >= 1")


class CircuitBreaker:
    """Closed -> open after ``failures`` consecutive failures -> half-open after ``cooldown_s`` (one trial)."""

    def __init__(self, failures: int, cooldown_s: float, clock=time.monotonic):
        self.failures, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.consecutive = 0
        self.opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self.opened_at is None:
                return "closed"
            return "half-open" if self.clock() - self.opened_at >= self.cooldown_s else "open"

    def before_call(self) -> None:
        with self._lock:
            if self.opened_at is None:
                return
            left = self.cooldown_s - (self.clock() - self.opened_at)
            if left > 0 or self._trial:
                raise CircuitOpenError(f"circuit open after {self.consecutive} consecutive failures; "
                                       f"failing fast for {max(left, 0):.1f}s more")
            self._trial = True  # half-open: this call is the trial

    def record(self, ok: bool) -> None:
        with self._lock:
            self._trial = False
            if ok:
                self.consecutive, self.opened_at = 0, None
                return
            self.consecutive += 1
            if self.consecutive >= self.failures or self.opened_at is not None:
                self.opened_at = self.clock()


class OpenAIClient:
    """``completions(prompts, **knobs) -> [text]`` and ``chat(messages, **knobs) -> text``; thread-safe."""

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None = None):
        self.config = config
        timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        self._http = httpx.Client(base_url=config.base_url.rstrip("/") + "/", timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {config.api_key}"})
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self.stats: dict[str, int] = {"calls": 0, "attempts": 0, "retries": 0, "failures": 0, "fast_failures": 0}
        self._stats_lock = threading.Lock()
        self._model = config.model

    def _count(self, key: str, k: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += k

    @property
    def model(self) -> str:
        if self._model is None:
            reply = self._request("GET", "models", None)
            try:
                self._model = str(reply["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise MalformedReply(f"{self.config.base_url}/models lists no model: {str(reply)[:200]}") from None
        return self._model

    def _attempt(self, method: str, path: str, body: dict | None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code} from {path}: {response.text[:200]}")
        if response.status_code != 200:
            raise RemoteError(f"HTTP {response.status_code} from {self.config.base_url}/{path}: "
                              f"{response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise _Retryable(f"malformed JSON body from {path}: {response.text[:200]!r}", malformed=True) from None

    def _request(self, method: str, path: str, body: dict | None, check=None) -> Any:
        """One call: retries with backoff, then the breaker's verdict. ``check(reply)`` raises MalformedReply for
        a body that parses as JSON but is not the expected shape (retried like a malformed body)."""
        try:
            self.breaker.before_call()
        except CircuitOpenError:
            self._count("fast_failures")
            raise
        self._count("calls")
        cfg, last = self.config, None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                delay = min(cfg.backoff_s * 2 ** (attempt - 1), cfg.max_backoff_s) * (0.5 + random.random() / 2)
                self._count("retries")
                log.info("retrying %s in %.2fs after: %s", path, delay, last)
                time.sleep(delay)
            self._count("attempts")
            try:
                reply = self._attempt(method, path, body)
                if check is not None:
                    check(reply)
                self.breaker.record(True)
                return reply
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
            except _Retryable as e:
                last = str(e)
            except MalformedReply as e:
                last = f"malformed reply: {e}"
            except RemoteError:
                self.breaker.record(False)
                self._count("failures")
                raise
        self.breaker.record(False)
        self._count("failures")
        raise RemoteError(f"{self.config.base_url}/{path}: failed after {cfg.max_retries + 1} attempts; last "
                          f"error: {last}")

    def completions(self, prompts: Sequence[str], **knobs) -> list[str]:
        """One text per prompt (n=1), in order; ``knobs`` are OpenAI fields (max_tokens, temperature, stop, ...)."""
        prompts = list(prompts)
        if not prompts:
            return []
        body = {"model": self.model, "prompt": prompts, **knobs}

        def check(reply):
            choices = reply.get("choices") if isinstance(reply, dict) else None
            if (not isinstance(choices, list) or len(choices) != len(prompts)
                    or not all(isinstance(c, dict) and isinstance(c.get("text"), str)
                               and isinstance(c.get("index"), int) for c in choices)
                    or sorted(c["index"] for c in choices) != list(range(len(prompts)))):
                raise MalformedReply(f"expected {len(prompts)} choices with text and index: {str(reply)[:200]}")

        reply = self._request("POST", "completions", body, check)
        return [c["text"] for c in sorted(reply["choices"], key=lambda c: c["index"])]

    def chat(self, messages: Sequence[dict], **knobs) -> str:
        body = {"model": self.model, "messages": list(messages), **knobs}

        def check(reply):
            try:
                content = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                content = None
            if not isinstance(content, str):
                raise MalformedReply(f"expected choices[0].message.content: {str(reply)[:200]}")

        return self._request("POST", "chat/completions", body, check)["choices"][0]["message"]["content"]

    def close(self) -> None:
        self._http.close()


class _Retryable(RemoteError):
    def __init__(self, message: str, malformed: bool = False):
        super().__init__(message)
        self.malformed = malformed
