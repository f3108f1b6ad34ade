"""The HTTP layer in process (no JAX): Starlette's test client over an Engine with a fake tokenizer and sampler."""

from types import SimpleNamespace

import numpy as np
import pytest
from starlette.testclient import TestClient

from synpro_jax.serve.server import Engine, Fault, FaultInjector, ServeConfig, build_app


class CharVocab:
    """One token per character (ids = code points + 2); eos 1, pad 0."""

    eos_id, pad_id, vocab_size = 1, 0, 300

    def encode(self, text):
        return [ord(c) + 2 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 2) for i in ids)


class EchoSampler:
    """Each row answers its own prompt reversed, then eos if that fits the budget; can be told to fail."""

    def __init__(self):
        self.fail = False

    def generate(self, prompts, *, max_new_tokens, stream_ids, eos_id, **kw):
        if self.fail:
            raise RuntimeError("device lost")
        width = max(max_new_tokens)
        tokens, lengths, finished = np.zeros((len(prompts), width), int), [], []
        for r, (p, b) in enumerate(zip(prompts, max_new_tokens)):
            row = (list(reversed(p)) + [eos_id[0]])[:b]
            tokens[r, :len(row)] = row
            lengths.append(len(row))
            finished.append(row[-1] == eos_id[0])
        return SimpleNamespace(tokens=tokens, lengths=np.array(lengths), finished=np.array(finished))


@pytest.fixture
def app():
    sampler = EchoSampler()
    engine = Engine(SimpleNamespace(max_seq_len=64, vocab_size=300), sampler, CharVocab(),
                    ServeConfig(model_name="echo", batch_wait_s=0.0, allow_fault_injection=True))
    injector = FaultInjector()
    with TestClient(build_app(engine, injector)) as client:
        yield client, sampler, injector


def test_completions_choices_usage_and_stop(app):
    client, _, _ = app
    r = client.post("/v1/completions", json={"prompt": ["abc", "hello"], "n": 2, "max_tokens": 4,
                                             "temperature": 0}).json()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in r["choices"]] == [
        (0, "cba", "stop"), (1, "cba", "stop"), (2, "olle", "length"), (3, "olle", "length")]
    assert r["usage"] == {"prompt_tokens": 8, "completion_tokens": 4 + 4 + 4 + 4, "total_tokens": 24}
    r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 5, "stop": "l"}).json()
    assert r["choices"][0]["text"] == "o" and r["choices"][0]["finish_reason"] == "stop"
    r = client.post("/v1/completions", json={"prompt": [[70, 71]], "max_tokens": 2}).json()  # token ids
    assert r["choices"][0]["text"] == "ED"


def test_chat_renders_the_template(app):
    client, _, _ = app
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 8}).json()
    assert r["choices"][0]["message"]["content"] == "\n>|tnats"  # "<|assistant|>\n" reversed, cut at 8


def test_device_failure_is_a_500_and_faults_need_the_switch(app):
    client, sampler, injector = app
    sampler.fail = True
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert r.status_code == 500 and "device lost" in r.json()["error"]["message"]
    sampler.fail = False
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200
    injector.add(Fault("5xx", 1))
    assert client.post("/v1/completions", json={"prompt": "x"}).status_code == 503
    assert client.get("/v1/models").status_code == 200  # faults only touch the generation endpoints
    assert client.post("/synpro/faults", json={"kind": "nope"}).status_code == 400


def test_fault_endpoint_is_off_by_default():
    engine = Engine(SimpleNamespace(max_seq_len=64, vocab_size=300), EchoSampler(), CharVocab(),
                    ServeConfig(model_name="echo"))
    with TestClient(build_app(engine)) as client:
        r = client.post("/synpro/faults", json={"kind": "5xx"})
        assert r.status_code == 403 and "--allow_fault_injection" in r.json()["error"]["message"]
