"""The influence service under load and bad input, with a probe stub whose scoring can be held on an event:
Content-Length checks and header and body timeouts over raw sockets, uvicorn's HTTP/1.1 keep-alive, the bounded
queue (503 + Retry-After), cancelled work for clients that left, gave up or timed out, length buckets, and encode
failures confined to their request."""

import contextlib
import inspect
import json
from pathlib import Path
import re
import socket
import threading
import time

import numpy as np
import pytest
import requests

from synpro_jax.influence import service
from synpro_jax.influence.service import InfluenceServer, bucket_width

MAX_LEN = 64


def encode(texts):  # bytes as tokens; a text holding "UNENCODABLE" fails, as a tokenizer refusing a text would
    for t in texts:
        if "UNENCODABLE" in t:
            raise ValueError("this tokenizer refuses the text")
    return [[2 + b for b in t.encode("utf-8")] for t in texts]


class GatedProbe:
    """Scores a row as its token count; ``gate`` holds scoring so tests can fill the queue deterministically."""

    def __init__(self, max_len=MAX_LEN):
        self.max_len = max_len
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.shapes, self.rows_scored = [], 0

    def score(self, tokens, mask):
        self.shapes.append(tokens.shape)
        self.entered.set()
        assert self.gate.wait(20), "test never opened the gate"
        self.rows_scored += int(mask.any(axis=1).sum())
        n = mask.sum(axis=1).astype(np.float32)
        return {"influence": n, "loss_before": 2 * n, "loss_after": n}


def expected(texts, max_len=MAX_LEN):
    return [float(min(len(t.encode("utf-8")), max_len + 1)) for t in texts]


@contextlib.contextmanager
def serving(probe, **kw):
    kw = {"port": 0, "batch_size": 4, "max_texts": 64, "max_body_bytes": 1 << 16, **kw}
    srv = InfluenceServer(probe, encode, **kw).start()
    try:
        yield srv
    finally:
        probe.gate.set()
        srv.close()


def url(srv):
    return "http://%s:%d/get_influence" % srv.address


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def raw_exchange(srv, data: bytes, timeout=2.0, shutdown_write=False):
    """Send raw bytes, read until the server closes; (status, lower-cased headers, body). A hang fails on the
    timeout."""
    with socket.create_connection(srv.address, timeout=timeout) as s:
        s.sendall(data)
        if shutdown_write:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else None
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    return status, headers, body


def read_response(sock) -> tuple[bytes, bytes]:
    """One response from a connection left open: (head, body), the body read to its Content-Length."""

    def more() -> bytes:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-response"
        return chunk

    data = b""
    while b"\r\n\r\n" not in data:
        data += more()
    head, _, body = data.partition(b"\r\n\r\n")
    want = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < want:
        body += more()
    return head, body


def post_async(srv, texts, timeout=10.0):
    """A release-style request on its own thread; returns (thread, result holder)."""
    out = {}

    def run():
        try:
            out["resp"] = requests.Session().post(url(srv), json={"texts": texts}, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - surfaced by the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_default_port_is_the_release_clients():
    assert service.DEFAULT_PORT == 24775
    assert inspect.signature(InfluenceServer).parameters["port"].default == 24775
    from synpro_jax import configs

    assert inspect.signature(configs.configurables()["influence_server"]).parameters["port"].default == 24775
    root = Path(configs.__file__).resolve().parents[1]
    bound = [
        (p, m.group(1))
        for p in root.rglob("*.gin")
        for m in re.finditer(r"influence_server\.port\s*=\s*(\S+)", p.read_text())
    ]
    assert all(port == "24775" for _, port in bound), bound


HEAD = b"POST /get_influence HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    "length_lines, code",
    [
        (b"", 411),  # missing
        (b"Content-Length: -5\r\n", 400),  # negative: used to read to EOF, i.e. hang
        (b"Content-Length: 12abc\r\n", 400),  # not an integer
        (b"Content-Length: 1.5\r\n", 400),
        (b"Content-Length: 4\r\nContent-Length: 9\r\n", 400),  # ambiguous
        (b"Content-Length: 99999999999\r\n", 413),  # over max_body_bytes
        (b"Transfer-Encoding: chunked\r\n", 411),
    ],
)
def test_bad_content_length_gets_4xx_at_once(length_lines, code):
    probe = GatedProbe()
    with serving(probe, socket_timeout_s=30.0) as srv:  # the answer must not wait for a socket timeout
        start = time.monotonic()
        status, headers, body = raw_exchange(srv, HEAD + length_lines + b"\r\n", timeout=2.0)
        assert status == code and time.monotonic() - start < 2.0
        assert "error" in json.loads(body) and headers.get("connection") == "close"
        assert requests.get("http://%s:%d/health" % srv.address, timeout=5).json() == {"status": "ok"}
    assert probe.rows_scored == 0


def test_stalled_clients_do_not_hold_a_worker():
    probe = GatedProbe()
    with serving(probe, socket_timeout_s=0.4) as srv:
        # Headers promising 100 bytes, 10 sent, then silence: 408 after the socket timeout, connection closed.
        start = time.monotonic()
        status, headers, body = raw_exchange(srv, HEAD + b"Content-Length: 100\r\n\r\n" + b'{"texts": ', timeout=3.0)
        assert status == 408 and "did not arrive in full within 0.4 s" in json.loads(body)["error"]
        assert headers["connection"] == "close"
        assert 0.3 < time.monotonic() - start < 3.0
        # Headers never finished: the server hangs up on its own.
        start = time.monotonic()
        with socket.create_connection(srv.address, timeout=3.0) as s:
            s.sendall(b"POST /get_influence HTTP/1.1\r\nHost: t\r\n")
            assert s.recv(65536) == b""  # closed after the socket timeout, not left open
        assert 0.3 < time.monotonic() - start < 3.0
        # A body that ends early is a 400, not a wait.
        status, _, body = raw_exchange(srv, HEAD + b"Content-Length: 100\r\n\r\n{}", shutdown_write=True)
        assert status == 400 and "ended after 2 of 100" in json.loads(body)["error"]
        r = requests.Session().post(url(srv), json={"texts": ["still serving"]}, timeout=5)
        r.raise_for_status()
        assert r.json()["influence_scores"] == expected(["still serving"])


def test_full_queue_answers_503_with_retry_after():
    probe = GatedProbe()
    probe.gate.clear()
    with serving(probe, batch_size=4, max_queued=2, retry_after_s=7) as srv:
        batches = [[f"request {i} text {j}" for j in range(4)] for i in range(3)]
        running = [post_async(srv, batches[0])]
        assert probe.entered.wait(10)  # request 0 holds the device
        running += [post_async(srv, b) for b in batches[1:]]
        wait_until(lambda: srv.scoring.queued() == 2)
        start = time.monotonic()
        r = requests.Session().post(url(srv), json={"texts": ["one too many"]}, timeout=2)
        assert r.status_code == 503 and r.headers["Retry-After"] == "7" and "busy" in r.json()["error"]
        assert time.monotonic() - start < 2.0
        probe.gate.set()
        for (t, out), texts in zip(running, batches):
            t.join(10)
            out["resp"].raise_for_status()
            assert out["resp"].json()["influence_scores"] == expected(texts)
        assert probe.rows_scored == 12 and srv.scoring.stats["requests_rejected"] == 1


def test_work_of_a_client_that_left_is_not_computed():
    probe = GatedProbe()
    probe.gate.clear()
    with serving(probe, batch_size=4) as srv:
        t0, out0 = post_async(srv, [f"holder {j}" for j in range(4)])
        assert probe.entered.wait(10)
        # A queued request whose client hangs up: dropped from the queue.
        body = json.dumps({"texts": [f"gone {j}" for j in range(4)]}).encode()
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            wait_until(lambda: srv.scoring.queued() == 1)
        wait_until(lambda: srv.scoring.stats["requests_cancelled"] == 1)
        assert srv.scoring.queued() == 0
        probe.gate.set()
        t0.join(10)
        assert out0["resp"].status_code == 200
        r = requests.Session().post(url(srv), json={"texts": ["after"]}, timeout=5)
        assert r.json()["influence_scores"] == expected(["after"])
        assert probe.rows_scored == 4 + 1  # the 4 texts of the client that left were never scored


def test_a_client_that_leaves_mid_request_stops_its_remaining_blocks():
    probe = GatedProbe()
    probe.gate.clear()
    with serving(probe, batch_size=4) as srv:
        body = json.dumps({"texts": [f"long request {j}" for j in range(12)]}).encode()  # 3 blocks of 4
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert probe.entered.wait(10)  # first block is on the device
        wait_until(lambda: srv.scoring.stats["requests_cancelled"] == 1)
        probe.gate.set()
        r = requests.Session().post(url(srv), json={"texts": ["after"]}, timeout=5)
        assert r.json()["influence_scores"] == expected(["after"])
        assert probe.rows_scored == 4 + 1  # blocks 2 and 3 were skipped


def test_work_of_a_timed_out_request_is_not_computed():
    probe = GatedProbe()
    probe.gate.clear()
    with serving(probe, batch_size=4, timeout_s=0.3) as srv:
        t0, out0 = post_async(srv, [f"holder {j}" for j in range(4)])
        assert probe.entered.wait(10)
        r = requests.Session().post(url(srv), json={"texts": [f"late {j}" for j in range(4)]}, timeout=5)
        assert r.status_code == 503 and "Retry-After" in r.headers
        probe.gate.set()
        t0.join(10)
        r = requests.Session().post(url(srv), json={"texts": ["after"]}, timeout=5)
        assert r.status_code == 200
        assert probe.rows_scored == 4 + 1


def test_bucket_width():
    assert [bucket_width(n, 2048) for n in (0, 1, 2, 17, 18, 33, 1000, 2049)] == [17, 17, 17, 17, 33, 33, 1025, 2049]
    assert bucket_width(100, 24) == 25 and bucket_width(3, 24, min_bucket=4) == 5


def test_batches_are_bucketed_by_length():
    probe = GatedProbe(max_len=512)
    with serving(probe, batch_size=8) as srv:
        short = [f"t{j}" for j in range(16)]  # 16 short texts: two [8, 17] blocks, not [8, 513]
        r = requests.Session().post(url(srv), json={"texts": short}, timeout=10)
        assert r.json()["influence_scores"] == expected(short, 512)
        assert probe.shapes == [(8, 17), (8, 17)]
        probe.shapes.clear()
        mixed = ["a" * 5, "b" * 600, "c" * 40, "d" * 7, "e" * 100, "f" * 3, "g" * 70, "h" * 2, "i" * 30]
        r = requests.Session().post(url(srv), json={"texts": mixed}, timeout=10)
        assert r.json()["influence_scores"] == expected(mixed, 512)  # answers in request order
        assert probe.shapes == [(8, 129), (8, 513)]  # sorted by length: 8 short ones, then the long one


def test_encode_failure_fails_only_its_request():
    probe = GatedProbe()
    probe.gate.clear()
    with serving(probe, batch_size=4) as srv:
        good = ["fine one", "fine two"]
        t0, out0 = post_async(srv, good)
        assert probe.entered.wait(10)
        t1, out1 = post_async(srv, ["also fine"])
        wait_until(lambda: srv.scoring.queued() == 1)
        bad = ["ok", "ok too", "broken UNENCODABLE text", "ok"]
        r = requests.Session().post(url(srv), json={"texts": bad}, timeout=5)  # answered while the device is held
        assert r.status_code == 400 and r.json()["index"] == 2
        assert "texts[2] could not be encoded: ValueError: this tokenizer refuses" in r.json()["error"]
        probe.gate.set()
        for t, out, texts in ((t0, out0, good), (t1, out1, ["also fine"])):
            t.join(10)
            out["resp"].raise_for_status()
            assert out["resp"].json()["influence_scores"] == expected(texts)
        assert probe.rows_scored == 3


def hf_encoder():
    """A real Hugging Face tokenizer (byte-level BPE with no merges: one token per byte), as the service is given
    one by `synpro influence-server`; it raises TypeError on a lone surrogate."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return lambda texts: [e.ids for e in tok.encode_batch(list(texts))]


@pytest.mark.parametrize(
    "texts, indices, message",
    [
        (["fine", "", "fine too"], [1], "texts[1]: nothing to predict (0 tokens; a text needs at least 2)"),
        (
            ["a", "fine", "b"],
            [0, 2],
            "texts[0]: nothing to predict (1 token; a text needs at least 2); texts[2]: nothing to predict (1 token;",
        ),
        (
            ["fine", "lone \ud800", "x\udc00y"],
            [1, 2],
            "texts[1]: invalid UTF-16 surrogate '\\ud800' at character 5; "
            "texts[2]: invalid UTF-16 surrogate '\\udc00' at character 1",
        ),
    ],
)
def test_unscorable_texts_refuse_the_request_whole_through_a_real_tokenizer(texts, indices, message):
    probe = GatedProbe()
    encode_hf = hf_encoder()
    assert [len(ids) for ids in encode_hf(["", "a", "fine"])] == [0, 1, 4]
    srv = InfluenceServer(probe, encode_hf, port=0, batch_size=4).start()
    try:
        r = requests.Session().post(url(srv), json={"texts": texts}, timeout=10)
        assert r.status_code == 400, r.text
        assert r.json()["index"] == indices[0] and r.json()["indices"] == indices
        assert r.json()["error"].startswith(message) and "Nothing in this request was scored" in r.json()["error"]
        assert "TypeError" not in r.json()["error"]  # the tokenizer's words for a surrogate, before this check
        assert probe.rows_scored == 0 and probe.shapes == []
        r = requests.Session().post(url(srv), json={"texts": ["ab", "fine"]}, timeout=10)
        assert r.status_code == 200 and r.json()["influence_scores"] == [2.0, 4.0]
    finally:
        srv.close()


def test_a_json_error_reads_once_at_its_position():
    probe = GatedProbe()
    with serving(probe) as srv:
        r = requests.Session().post(url(srv), data=b'{"texts": ["a\tb"]}', timeout=10)
        assert r.status_code == 400
        assert r.json()["error"] == "invalid JSON: Invalid control character at line 1, column 14 (char 13)"
        assert "at at" not in r.json()["error"] and "at:" not in r.json()["error"]


def test_a_client_that_gives_up_cancels_its_queued_work():
    """The release's client posts with a timeout: once it gives up and closes its connection, uvicorn reports the
    disconnect and the request's texts leave the queue unscored."""
    probe = GatedProbe()
    probe.gate.clear()
    with serving(probe, batch_size=4) as srv:
        t0, out0 = post_async(srv, [f"holder {j}" for j in range(4)])
        assert probe.entered.wait(10)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.Session().post(url(srv), json={"texts": [f"impatient {j}" for j in range(4)]}, timeout=0.5)
        wait_until(lambda: srv.scoring.stats["requests_cancelled"] == 1)
        assert srv.scoring.queued() == 0
        probe.gate.set()
        t0.join(10)
        assert out0["resp"].json()["influence_scores"] == expected([f"holder {j}" for j in range(4)])
        r = requests.Session().post(url(srv), json={"texts": ["after"]}, timeout=5)
        assert r.json()["influence_scores"] == expected(["after"])
        assert probe.rows_scored == 4 + 1 and probe.shapes == [(4, 17), (4, 17)]


def test_served_by_uvicorn_with_http11_keep_alive():
    """uvicorn (h11) serves the app: answers keep the connection open for the next request, a kept-alive
    connection that then stalls inside the next request's headers is closed after socket_timeout_s, every refusal
    (uvicorn's own for unparsable HTTP, Starlette's 405 included) is {"error": ...}, and a NaN score goes out as
    json.dumps writes it."""
    probe = GatedProbe()
    with serving(probe, socket_timeout_s=0.5) as srv:
        body = json.dumps({"texts": ["first", "second one"]}).encode()
        request = HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
        with socket.create_connection(srv.address, timeout=5) as s:
            for _ in range(2):  # two requests, one connection
                s.sendall(request)
                head, payload = read_response(s)
                assert head.startswith(b"HTTP/1.1 200") and b"server: uvicorn" in head
                assert b"connection: close" not in head
                assert json.loads(payload)["influence_scores"] == expected(["first", "second one"])
            start = time.monotonic()
            s.sendall(b"POST /get_influence HTTP/1.1\r\nHost: t\r\n")  # then nothing more
            assert s.recv(65536) == b""
            assert 0.3 < time.monotonic() - start < 3.0
        status, headers, body = raw_exchange(srv, b"NOT HTTP AT ALL\r\n\r\n")
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body) == {"error": "malformed HTTP request: Invalid HTTP request received."}
        r = requests.get(url(srv), timeout=5)
        assert r.status_code == 405 and r.headers["Allow"] == "POST"
        assert r.json()["error"] == "GET is not allowed on /get_influence; use GET /health or POST /get_influence"

    class NaNProbe(GatedProbe):
        def score(self, tokens, mask):
            return {**super().score(tokens, mask), "influence": np.full(len(tokens), np.nan, np.float32)}

    with serving(NaNProbe()) as srv:
        r = requests.Session().post(url(srv), json={"texts": ["no number"]}, timeout=5)
        assert r.status_code == 200 and r.text.startswith('{"influence_scores": [NaN], ')
