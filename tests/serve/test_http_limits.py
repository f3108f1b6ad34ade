"""The server's own defences on a real socket (uvicorn in a thread over the fake tokenizer and sampler, no JAX):
a body's size and read time are bounded before the app sees it, tokenizing stays off the event loop, and the real
``openai`` client sees OpenAI error objects. Socket timeouts are hang guards only: each reply is expected at once
(or within the server's 1 s body timeout), the guard is several times that."""

import json
import threading
import time

import httpx
import pytest
from serve_helpers import CharVocab, ThreadServer, echo_engine, json_error, post_bytes, raw_http

from synpro_jax.serve.server import build_app

LIMIT = 4096  # max_body_bytes of these servers
BODY = json.dumps({"prompt": "the cat", "max_tokens": 3, "temperature": 0}).encode()  # 63 bytes


@pytest.fixture(scope="module")
def server():
    engine = echo_engine(max_body_bytes=LIMIT, body_timeout_s=1.0)
    with ThreadServer(build_app(engine)) as s:
        yield s


def test_a_huge_content_length_is_a_413_before_the_body_is_read(server):
    """Content-Length: 10**12 with a short body: today's server waits for the rest forever."""
    status, headers, body = raw_http(server.port, post_bytes("/v1/completions", BODY, content_length=10**12))
    assert status == 413 and headers["connection"] == "close"
    error = json_error(body)
    assert str(LIMIT) in error["message"] and error["code"] == "request_too_large"
    status, _, _ = raw_http(server.port, post_bytes("/v1/completions", BODY, content_length=LIMIT + 1))
    assert status == 413
    assert raw_http(server.port, post_bytes("/v1/completions", BODY))[0] == 200  # the server still serves


def test_a_stalled_body_is_a_408(server):
    """Fewer bytes than Content-Length, then nothing: the server answers after its body timeout (1 s here)."""
    status, headers, body = raw_http(server.port, post_bytes("/v1/completions", BODY, content_length=len(BODY) + 50))
    assert status == 408 and headers["connection"] == "close"
    assert json_error(body)["code"] == "request_timeout"

    def trickle(sock):  # a byte at a time, slower than the whole body may take: the deadline is for the body
        try:
            for _ in range(8):
                sock.sendall(b" ")
                time.sleep(0.25)
        except OSError:  # the server answered and closed the connection
            pass

    status, _, _ = raw_http(
        server.port, post_bytes("/v1/completions", BODY, content_length=len(BODY) + 100), then=trickle
    )
    assert status == 408


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_chunked_bodies_are_bounded_while_read(server):
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    status, _, body = raw_http(server.port, head + chunked([BODY[:20], BODY[20:]]))
    assert status == 200 and json.loads(body)["choices"][0]["text"] == "tac"
    big = json.dumps({"prompt": "x" * (2 * LIMIT)}).encode()

    def endless(sock):  # chunk after chunk with no end: refused once past the limit, not read on forever
        try:
            for _ in range(64):
                sock.sendall(b"%x\r\n%s\r\n" % (1024, b"x" * 1024))
        except OSError:  # the server closed the connection after refusing
            pass

    for request, then in [
        (head + chunked([big[i : i + 1000] for i in range(0, len(big), 1000)]), None),
        (head + b"%x\r\n%s\r\n" % (len(BODY), BODY), endless),
    ]:
        status, headers, body = raw_http(server.port, request, then=then)
        assert status == 413 and headers["connection"] == "close"
        assert json_error(body)["code"] == "request_too_large"
    status, _, _ = raw_http(server.port, head + b"%x\r\n%s\r\n" % (len(BODY), BODY))  # no last chunk: a stall
    assert status == 408


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    ],
    ids=["bad-content-length", "no-request-line", "two-content-lengths"],
)
def test_unparsable_http_is_a_json_400(server, request_bytes):
    """uvicorn refuses these before the app runs; its answer is an OpenAI error object too."""
    status, headers, body = raw_http(server.port, request_bytes)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json_error(body)["code"] == "malformed_http"


def test_tokenizing_does_not_block_the_event_loop():
    """A request whose tokenizing blocks must not stall the server: another request is answered meanwhile."""
    release, entered = threading.Event(), threading.Event()

    class BlockingVocab(CharVocab):
        def encode(self, text):
            if text == "block":
                entered.set()
                release.wait(30)
            return super().encode(text)

    engine = echo_engine(BlockingVocab())
    with ThreadServer(build_app(engine)) as s, httpx.Client(timeout=10) as http:
        result = {}

        def slow():
            result["slow"] = http.post(f"{s.url}/completions", json={"prompt": "block", "max_tokens": 2})

        worker = threading.Thread(target=slow)
        worker.start()
        try:
            assert entered.wait(10)
            assert http.get(f"{s.url}/models", timeout=5).status_code == 200
            r = http.post(f"{s.url}/completions", json={"prompt": [5, 6], "max_tokens": 2}, timeout=5)
            assert r.status_code == 200
        finally:
            release.set()
            worker.join(15)
        assert result["slow"].status_code == 200 and result["slow"].json()["choices"][0]["text"] == "kc"


def test_the_openai_client_sees_openai_errors(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=10)
    r = client.completions.create(model="echo", prompt="abc", max_tokens=3, temperature=0, n=2)
    assert [c.text for c in r.choices] == ["cba", "cba"]
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.choices[0].message.content == "\n>|"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="echo", prompt="abc", n=2.5)
    assert e.value.param == "n" and "n" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # 10**400 rows would never be built
        client.completions.create(model="echo", prompt="abc", n=10**400)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="echo", prompt="abc", extra_body={"top_k": 1.5})
    assert e.value.param == "top_k"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="other", prompt="abc")
    assert e.value.param == "model"
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="echo", prompt="x" * (2 * LIMIT))
    assert e.value.status_code == 413 and e.value.code == "request_too_large"
