"""The HTTP layer in process (no JAX): Starlette's test client over an Engine with a fake tokenizer and sampler."""

import json
from types import SimpleNamespace

import pytest
from serve_helpers import CharVocab, EchoSampler, json_error
from starlette.testclient import TestClient

from synpro_jax.serve.server import Engine, Fault, FaultInjector, ServeConfig, build_app


@pytest.fixture
def app():
    sampler = EchoSampler()
    engine = Engine(
        SimpleNamespace(max_seq_len=64, vocab_size=300),
        sampler,
        CharVocab(),
        ServeConfig(model_name="echo", batch_wait_s=0.0, allow_fault_injection=True, batching="static"),
    )
    injector = FaultInjector()
    with TestClient(build_app(engine, injector)) as client:
        yield client, sampler, injector


def test_completions_choices_usage_and_stop(app):
    client, _, _ = app
    r = client.post(
        "/v1/completions", json={"prompt": ["abc", "hello"], "n": 2, "max_tokens": 4, "temperature": 0}
    ).json()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in r["choices"]] == [
        (0, "cba", "stop"),
        (1, "cba", "stop"),
        (2, "olle", "length"),
        (3, "olle", "length"),
    ]
    assert r["usage"] == {"prompt_tokens": 8, "completion_tokens": 4 + 4 + 4 + 4, "total_tokens": 24}
    r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 5, "stop": "l"}).json()
    assert r["choices"][0]["text"] == "o" and r["choices"][0]["finish_reason"] == "stop"
    r = client.post("/v1/completions", json={"prompt": [[70, 71]], "max_tokens": 2}).json()  # token ids
    assert r["choices"][0]["text"] == "ED"


def test_chat_renders_the_template(app):
    client, _, _ = app
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    ).json()
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
    engine = Engine(
        SimpleNamespace(max_seq_len=64, vocab_size=300),
        EchoSampler(),
        CharVocab(),
        ServeConfig(model_name="echo", batching="static"),
    )
    with TestClient(build_app(engine)) as client:
        r = client.post("/synpro/faults", json={"kind": "5xx"})
        assert r.status_code == 403 and "--allow_fault_injection" in r.json()["error"]["message"]


NUMBER_FIELDS = [
    "temperature",
    "top_p",
    "top_k",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "presence_penalty",
    "frequency_penalty",
]


def post_raw(client, path, text, content_type="application/json"):
    return client.post(path, content=text.encode(), headers={"content-type": content_type})


@pytest.mark.parametrize("literal", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", NUMBER_FIELDS)
def test_non_finite_numbers_are_a_400_naming_the_field(app, field, literal):
    """Python's json reads 1e400 as inf and takes NaN/Infinity: none of them may reach int() or the sampler."""
    client, _, _ = app
    for path, rest in [
        ("/v1/completions", '"prompt": "abc"'),
        ("/v1/chat/completions", '"messages": [{"role": "user", "content": "hi"}]'),
    ]:
        r = post_raw(client, path, f'{{{rest}, "{field}": {literal}}}')
        assert r.status_code == 400, (path, field, literal, r.text)
        error = json_error(r.content)
        assert error["param"] == field and field in error["message"], error
        assert error["type"] == "invalid_request_error"


def test_non_finite_numbers_anywhere_are_a_400_naming_where(app):
    client, _, _ = app
    r = post_raw(client, "/v1/completions", '{"prompt": "abc", "logit_bias": {"5": 1e400}}')
    assert r.status_code == 400 and json_error(r.content)["param"] == "logit_bias.5", r.text
    r = post_raw(client, "/v1/completions", '{"prompt": [[3, 4], [5, NaN]]}')
    assert r.status_code == 400 and json_error(r.content)["param"] == "prompt[1][1]", r.text


@pytest.mark.parametrize("field", ["top_k", "n", "max_tokens", "seed"])
@pytest.mark.parametrize("value", [2.5, "3", True, [1]])
def test_integer_fields_take_only_integers(app, field, value):
    client, _, _ = app
    r = client.post("/v1/completions", json={"prompt": "abc", field: value})
    assert r.status_code == 400, (field, value, r.text)
    error = json_error(r.content)
    assert error["param"] == field and field in error["message"] and "integer" in error["message"], error


def test_integral_floats_and_huge_integers(app):
    client, _, _ = app
    r = client.post("/v1/completions", json={"prompt": "abc", "n": 2.0, "max_tokens": 3.0, "temperature": 0})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text
    # huge integers are refused by their bounds before anything is sized by them (10**30 rows would never end)
    for field, word in [("n", "max_rows"), ("max_tokens", "context")]:
        r = post_raw(client, "/v1/completions", f'{{"prompt": "abc", "{field}": {10**30}}}')
        assert r.status_code == 400 and word in json_error(r.content)["message"], r.text
    r = post_raw(client, "/v1/completions", f'{{"prompt": "abc", "top_k": {10**30}, "seed": {10**30}}}')
    assert r.status_code == 200, r.text  # top_k past the vocabulary is no top-k; the seed is taken mod 2**32
    r = client.post("/v1/completions", json={"prompt": [[3, True]]})
    assert r.status_code == 400 and json_error(r.content)["param"] == "prompt", r.text


def test_every_error_is_an_openai_error_object(app):
    client, sampler, _ = app
    cases = [
        (post_raw(client, "/v1/completions", '{"prompt": "abc",'), 400, None),  # malformed JSON
        (client.post("/v1/completions", content=b'{"prompt": "\xff\xfe"}'), 400, None),  # not UTF-8
        (post_raw(client, "/v1/completions", '{"prompt": "a\\ud800"}'), 400, "prompt"),  # a lone surrogate
        (post_raw(client, "/v1/completions", "[1, 2]"), 400, None),  # not an object
        (post_raw(client, "/v1/completions", "[" * 100_000 + "]" * 100_000), 400, None),  # too deep to parse
        (post_raw(client, "/v1/completions", '{"prompt": "abc"}', "text/plain"), 415, None),
        (post_raw(client, "/v1/completions", "prompt=abc", "application/x-www-form-urlencoded"), 415, None),
        (client.get("/v1/nothing"), 404, None),
        (client.post("/v2/completions", json={"prompt": "abc"}), 404, None),
        (client.get("/v1/completions"), 405, None),
        (client.delete("/v1/models"), 405, None),
        (client.post("/v1/completions", json={"prompt": "abc", "model": "other"}), 404, "model"),
        (client.post("/v1/completions", json={"max_tokens": 3}), 400, "prompt"),
        (client.post("/v1/chat/completions", json={"messages": "hi"}), 400, "messages"),
        (client.post("/synpro/faults", json={"kind": "5xx", "count": 2.5}), 400, "count"),
        (post_raw(client, "/synpro/faults", '{"kind": "5xx", "count": 1e400}'), 400, "count"),
    ]
    for r, status, param in cases:
        assert r.status_code == status, (status, r.text)
        assert r.headers["content-type"] == "application/json", r.headers
        error = json_error(r.content)
        assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert "POST" in client.get("/v1/completions").headers["allow"]
    r = post_raw(client, "/v1/completions", '{"prompt": "abc"}', "application/json; charset=utf-8")
    assert r.status_code == 200, r.text
    r = client.post("/v1/completions", content=b'{"prompt": "abc"}')  # no content type: read as JSON
    assert r.status_code == 200, r.text


def test_an_unexpected_server_fault_is_a_json_500():
    class BrokenVocab(CharVocab):
        def encode(self, text):
            raise KeyError("broken tokenizer")

    engine = Engine(
        SimpleNamespace(max_seq_len=64, vocab_size=300),
        EchoSampler(),
        BrokenVocab(),
        ServeConfig(model_name="echo", batch_wait_s=0.0, batching="static"),
    )
    with TestClient(build_app(engine), raise_server_exceptions=False) as client:
        r = client.post("/v1/completions", json={"prompt": "abc"})
        assert r.status_code == 500 and json_error(r.content)["type"] == "server_error", r.text
        assert client.post("/v1/completions", json={"prompt": [3, 4]}).status_code == 200  # still serving


def test_bodies_over_the_limit_are_a_413():
    engine = Engine(
        SimpleNamespace(max_seq_len=64, vocab_size=300),
        EchoSampler(),
        CharVocab(),
        ServeConfig(model_name="echo", batch_wait_s=0.0, max_body_bytes=1000, batching="static"),
    )
    with TestClient(build_app(engine)) as client:
        r = client.post(
            "/v1/completions",
            content=json.dumps({"prompt": "x" * 2000}).encode(),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413, r.text
        error = json_error(r.content)
        assert "1000" in error["message"] and error["type"] == "invalid_request_error"
        assert client.post("/v1/completions", json={"prompt": "x" * 20}).status_code == 200
