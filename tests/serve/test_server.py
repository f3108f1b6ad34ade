"""`synpro serve` as a real process: the OpenAI endpoints, batching of concurrent requests, greedy equality with
the library sampler, and each injected fault as the remote client sees it."""

import concurrent.futures
import time

import httpx
import pytest
from serve_helpers import ServeProcess, json_error, make_model_dir, post_bytes, raw_http

from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.generation import prompts as prompts_lib
from synpro_jax.generation.sampler import sample
from synpro_jax.models import hf
from synpro_jax.serve import CircuitOpenError, ClientConfig, OpenAIClient, RemoteError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir, sp = make_model_dir(tmp_path_factory.mktemp("serve"))
    server = ServeProcess(model_dir, "--batch_wait_ms", "50")
    yield server, model_dir, sp
    server.stop()


@pytest.fixture
def server(served):
    served[0].clear_faults()
    yield served[0]
    served[0].clear_faults()


def client(server, **kw):
    settings = dict(
        model="tiny_olmo", timeout_s=30.0, max_retries=2, backoff_s=0.05, breaker_failures=10, breaker_cooldown_s=5.0
    )
    settings.update(kw)
    return OpenAIClient(ClientConfig(base_url=server.url, **settings))


def library_greedy(model_dir, sp, text, max_tokens):
    cfg, params = hf.load(model_dir)
    vocab = load_vocabulary(str(sp))
    out = sample(cfg, params, [vocab.encode(text)], max_new_tokens=max_tokens, eos_id=vocab.eos_id)
    ids = out.completions()[0]  # usage counts a final eos; the text does not hold it
    return vocab.decode(ids[:-1] if out.finished[0] else ids), len(ids), len(vocab.encode(text))


def test_models_lists_the_served_model(server):
    r = httpx.get(f"{server.url}/models", timeout=10).json()
    assert [m["id"] for m in r["data"]] == ["tiny_olmo"]
    assert r["data"][0]["max_model_len"] == 512
    assert client(server, model=None).model == "tiny_olmo"  # a client without a model takes the listed one


def test_greedy_completion_equals_the_library_sampler(served, server):
    _, model_dir, sp = served
    for text in ["the cat runs under the river", "Seven blue stones."]:
        body = {"model": "tiny_olmo", "prompt": text, "max_tokens": 12, "temperature": 0}
        r = httpx.post(f"{server.url}/completions", json=body, timeout=120).json()
        want, n_new, n_prompt = library_greedy(model_dir, sp, text, 12)
        assert r["choices"][0]["text"] == want
        assert r["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": n_new, "total_tokens": n_prompt + n_new}
        assert r["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_applies_the_olmo2_template(served, server):
    _, model_dir, sp = served
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the dog reads a map"}]
    r = httpx.post(
        f"{server.url}/chat/completions", json={"messages": messages, "max_tokens": 10, "temperature": 0}, timeout=120
    ).json()
    want, _, n_prompt = library_greedy(model_dir, sp, prompts_lib.OLMO2_CHAT.render(messages), 10)
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["message"] == {"role": "assistant", "content": want}
    assert r["usage"]["prompt_tokens"] == n_prompt


def test_n_seed_stop_and_batched_prompts(server):
    body = {"prompt": ["the cat", "a dog sleeps"], "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "n": 3, "seed": 7}
    a = httpx.post(f"{server.url}/completions", json=body, timeout=120).json()
    b = httpx.post(f"{server.url}/completions", json=body, timeout=120).json()
    assert [c["index"] for c in a["choices"]] == list(range(6))
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]  # seeded: reproducible
    assert len({c["text"] for c in a["choices"][:3]}) > 1  # the n choices draw different streams
    first = a["choices"][0]["text"]
    if len(first) > 2:
        stopped = httpx.post(f"{server.url}/completions", json={**body, "stop": [first[1:3]]}, timeout=120).json()
        assert stopped["choices"][0]["text"] == first[: first.find(first[1:3])]
        assert stopped["choices"][0]["finish_reason"] == "stop"


def test_bad_requests_are_400_naming_the_field(server):
    cases = [
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10_000}, "context"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": "x", "stop": [1]}, "stop"),
    ]
    for body, word in cases:
        r = httpx.post(f"{server.url}/completions", json=body, timeout=30)
        assert r.status_code == 400 and word in r.json()["error"]["message"], (body, r.text)
    r = httpx.post(f"{server.url}/completions", json={"prompt": "x", "model": "other"}, timeout=30)
    assert r.status_code == 404
    r = httpx.post(f"{server.url}/chat/completions", json={"messages": [{"role": "tool", "content": "x"}]}, timeout=30)
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "field,literal",
    [
        ("n", "1e400"),
        ("top_k", "1e400"),
        ("temperature", "NaN"),
        ("top_p", "-Infinity"),
        ("max_tokens", "1e400"),
        ("seed", "NaN"),
    ],
)
def test_non_finite_numbers_are_a_json_400_naming_the_field(server, field, literal):
    """1e400 is valid JSON that Python reads as infinity; NaN and Infinity are literals it takes too."""
    rest = "" if field == "max_tokens" else ', "max_tokens": 2'
    body = f'{{"prompt": "the cat"{rest}, "{field}": {literal}}}'
    r = httpx.post(f"{server.url}/completions", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    error = json_error(r.content)
    assert error["param"] == field and field in error["message"]


def test_a_huge_content_length_is_refused_at_once(server):
    """Content-Length: 10**12 and a 78-byte body: a JSON 413 (the default limit), not a wait for the rest."""
    body = b'{"model": "tiny_olmo", "prompt": "the cat runs", "max_tokens": 4, "temperature": 0}'[:78]
    status, headers, reply = raw_http(
        server.port, post_bytes("/v1/completions", body, content_length=10**12), timeout_s=10
    )
    assert status == 413 and headers["connection"] == "close"
    assert json_error(reply)["code"] == "request_too_large"


def test_the_openai_client(server):
    openai = pytest.importorskip("openai")
    c = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
    r = c.completions.create(model="tiny_olmo", prompt="the cat", max_tokens=4, temperature=0, n=2)
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text
    r = c.chat.completions.create(model="tiny_olmo", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.choices[0].message.role == "assistant"
    for kw, param in [
        ({"n": 1.5}, "n"),
        ({"n": 10**400}, "n"),
        ({"temperature": -1}, "temperature"),
        ({"extra_body": {"top_k": 2.5}}, "top_k"),
        ({"max_tokens": 10**400}, "max_tokens"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model="tiny_olmo", prompt="the cat", **kw)
        assert e.value.param == param, (kw, e.value)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="other", prompt="the cat")
    with pytest.raises(openai.APIStatusError) as e:  # over the default limit of 1 MiB
        c.completions.create(model="tiny_olmo", prompt="the cat " * 200_000, max_tokens=2)
    assert e.value.status_code == 413


def test_concurrent_requests_share_device_calls(server):
    before = len(server.stats()["batches"])
    body = {"prompt": "the green map", "max_tokens": 6, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda i: httpx.post(f"{server.url}/completions", json=body, timeout=120).json(), range(8))
        )
    assert len({r["choices"][0]["text"] for r in replies}) == 1  # batch neighbours do not change a greedy row
    batches = server.stats()["batches"][before:]
    assert sum(req for req, _ in batches) == 8
    assert max(req for req, _ in batches) >= 2, batches  # several requests per device call
    assert len(batches) < 8


def test_slow_reply_times_out_then_the_retry_succeeds(server):
    c = client(server, timeout_s=1.0)
    c.completions(["the cat"], max_tokens=4, temperature=0)  # compiled: later attempts are fast
    server.fault("slow", 1, delay_s=3.0)
    t = time.monotonic()
    [text] = c.completions(["the cat"], max_tokens=4, temperature=0)
    assert isinstance(text, str)
    assert c.stats["retries"] == 1 and time.monotonic() - t >= 1.0
    assert server.stats()["faults_injected"]["slow"] >= 1


def test_5xx_is_retried(server):
    c = client(server)
    server.fault("5xx", 2)
    assert c.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0) is not None
    assert c.stats["retries"] == 2 and c.stats["failures"] == 0


def test_dropped_connection_is_retried(server):
    c = client(server)
    server.fault("drop", 1)
    assert len(c.completions(["a", "b"], max_tokens=3, temperature=0)) == 2
    assert c.stats["retries"] == 1


def test_malformed_body_fails_after_the_retries(server):
    c = client(server, max_retries=2)
    server.fault("malformed", 3)
    with pytest.raises(RemoteError, match="3 attempts.*malformed"):
        c.completions(["a"], max_tokens=3, temperature=0)
    assert c.stats["attempts"] == 3
    server.fault("malformed", 1)
    assert len(c.completions(["a"], max_tokens=3, temperature=0)) == 1  # one bad body, then a good one


def test_breaker_opens_and_fails_fast_then_recovers(server):
    c = client(server, max_retries=0, breaker_failures=2, breaker_cooldown_s=1.5)
    server.fault("5xx", 2)
    for _ in range(2):
        with pytest.raises(RemoteError, match="503"):
            c.completions(["a"], max_tokens=2, temperature=0)
    injected = server.stats()["faults_injected"]["5xx"]
    t = time.monotonic()
    with pytest.raises(CircuitOpenError):
        c.completions(["a"], max_tokens=2, temperature=0)
    assert time.monotonic() - t < 0.1 and server.stats()["faults_injected"]["5xx"] == injected  # no request sent
    assert c.stats["fast_failures"] == 1
    time.sleep(1.6)
    assert len(c.completions(["a"], max_tokens=2, temperature=0)) == 1  # half-open trial succeeds
    assert c.breaker.state == "closed"
