"""The influence HTTP service around a real tiny model, through real HTTP clients: scores equal the library call,
/health, malformed requests get 4xx, concurrent clients each get their own answers, and the release's client
(requests.Session().post(json={"texts": ...}) in batches of 16) works unchanged."""

import concurrent.futures
import http.client
import json

import jax
import numpy as np
import pytest
import requests

from synpro_jax import models, sharding
from synpro_jax.influence.probe import Probe
from synpro_jax.influence.service import InfluenceServer


def encode(texts):  # bytes as tokens: a real tokenizer is not the point here
    return [[2 + b for b in t.encode("utf-8")][:200] for t in texts]


@pytest.fixture(scope="module")
def tiny_probe():
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 1, 1), devices=jax.devices()[:4])
    params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    tuned = jax.tree.map(lambda x: x * 1.02, params)
    return Probe(cfg, mesh, params, tuned, max_len=128)


@pytest.fixture(scope="module")
def server(tiny_probe):
    srv = InfluenceServer(tiny_probe, encode, port=0, batch_size=8, max_texts=20, max_body_bytes=4096).start()
    yield srv, tiny_probe
    srv.close()


def request(srv, method, path, body=None, raw=None):
    conn = http.client.HTTPConnection(*srv.address, timeout=120)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    conn.close()
    return resp.status, payload


def test_binds_localhost_and_health(server):
    srv, _ = server
    assert srv.address[0] == "127.0.0.1"
    assert request(srv, "GET", "/health") == (200, {"status": "ok"})


def test_scores_equal_the_library(server):
    srv, probe = server
    texts = ["The cat sat on the mat.", "Numbers 1 2 3 4 5", "ab", "x" * 500]
    status, out = request(srv, "POST", "/get_influence", {"texts": texts})
    assert status == 200 and set(out) == {"influence_scores", "loss_before", "loss_after"}
    ref = probe.score_docs([np.asarray(t, np.int32) for t in encode(texts)], 8)
    np.testing.assert_allclose(out["influence_scores"], ref["influence"], atol=1e-6)
    np.testing.assert_allclose(out["loss_before"], ref["loss_before"], atol=1e-6)
    np.testing.assert_allclose(
        np.array(out["loss_before"]) - np.array(out["loss_after"]), out["influence_scores"], atol=1e-5
    )
    assert request(srv, "POST", "/get_influence", {"texts": []}) == (
        200,
        {"influence_scores": [], "loss_before": [], "loss_after": []},
    )


@pytest.mark.parametrize(
    "raw, code, message",
    [
        (b"{not json", 400, "invalid JSON"),
        (b'{"text": ["a"]}', 400, "list field 'texts'"),
        (b'{"texts": "a"}', 400, "list field 'texts'"),
        (b'{"texts": ["a", 3]}', 400, "must be a string"),
        (json.dumps({"texts": ["a"] * 21}).encode(), 413, "limit of 20"),
        (json.dumps({"texts": ["a" * 5000]}).encode(), 413, "exceeds the limit of 4096"),
        (b'{"texts": ["tab\there"]}', 400, "invalid JSON: Invalid control character at line 1, column 16 (char 15)"),
        (
            b'{"texts": ["ok text", "lone \\ud800 surrogate"]}',
            400,
            "texts[1]: invalid UTF-16 surrogate '\\ud800' at character 5",
        ),
        (
            json.dumps({"texts": ["fine text", "", "more text", "a"]}).encode(),
            400,
            "texts[1]: nothing to predict (0 tokens; a text needs at least 2); texts[3]: nothing to predict (1 token;",
        ),
    ],
)
def test_malformed_requests_get_4xx(server, raw, code, message):
    srv, _ = server
    status, out = request(srv, "POST", "/get_influence", raw=raw)
    assert status == code and message in out["error"]
    assert request(srv, "GET", "/nope")[0] == 404
    assert request(srv, "GET", "/health")[0] == 200  # still serving


def test_texts_with_nothing_to_predict_refuse_the_request_whole(release_server):
    """ "" and "a" (0 and 1 tokens) have no next-token prediction: no loss and no influence, so no 0.0 stands in
    for them. The request is refused before anything is scored, naming each such text; a lone surrogate too."""
    srv, probe = release_server
    endpoint = "http://%s:%d/get_influence" % srv.address
    probe.shapes.clear()
    session = requests.Session()
    r = session.post(endpoint, json={"texts": ["a real sentence", "a", "another one", "", "x"]}, timeout=120)
    assert r.status_code == 400
    body = r.json()
    assert body["index"] == 1 and body["indices"] == [1, 3, 4]
    assert body["error"].startswith(
        "texts[1]: nothing to predict (1 token; a text needs at least 2); texts[3]: nothing to predict (0 tokens;"
    )
    assert (
        "texts[4]: nothing to predict (1 token;" in body["error"]
        and "Nothing in this request was scored" in body["error"]
    )
    r = session.post(endpoint, json={"texts": ["fine", "fine \ud800 not", "ok", "z\udfff"]}, timeout=120)
    assert r.status_code == 400 and r.json()["indices"] == [1, 3]
    assert r.json()["error"].startswith(
        "texts[1]: invalid UTF-16 surrogate '\\ud800' at character 5; texts[3]: "
        "invalid UTF-16 surrogate '\\udfff' at character 1"
    )
    assert "TypeError" not in r.json()["error"] and "Encode" not in r.json()["error"]
    assert probe.shapes == []  # nothing was scored for either request
    fine = ["ab", "an emoji, sent as a surrogate pair: \U0001f600"]  # 2 tokens is enough; a pair is no lone surrogate
    r = session.post(endpoint, json={"texts": fine}, timeout=120)
    r.raise_for_status()
    ref = probe.probe.score_docs([np.asarray(t, np.int32) for t in encode(fine)], 8)
    np.testing.assert_allclose(r.json()["influence_scores"], ref["influence"], atol=1e-5)


def test_concurrent_clients_get_their_own_answers(server):
    srv, probe = server
    batches = [[f"client {i} text {j} " * (1 + (i + j) % 4) for j in range(1 + i % 5)] for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda texts: request(srv, "POST", "/get_influence", {"texts": texts}), batches))
    for texts, (status, out) in zip(batches, results):
        assert status == 200
        ref = probe.score_docs([np.asarray(t, np.int32) for t in encode(texts)], 8)
        np.testing.assert_allclose(out["influence_scores"], ref["influence"], atol=1e-6)


class RecordingProbe:
    """The real probe, recording the block shapes the service sends it."""

    def __init__(self, probe):
        self.probe, self.max_len, self.shapes = probe, probe.max_len, []

    def score(self, tokens, mask):
        self.shapes.append(tokens.shape)
        return self.probe.score(tokens, mask)


@pytest.fixture(scope="module")
def release_server(tiny_probe):
    probe = RecordingProbe(tiny_probe)
    srv = InfluenceServer(probe, encode, port=0, batch_size=8).start()
    yield srv, probe
    srv.close()


class ReleaseStyleClient:
    """Written the way generator/data_influence_reward.py in the release calls the service."""

    def __init__(self, endpoint, batch_size=16, timeout_seconds=120.0):
        self.endpoint, self.batch_size, self.timeout_seconds = endpoint, batch_size, timeout_seconds
        self.session = requests.Session()

    def _query_batch(self, texts):
        response = self.session.post(self.endpoint, json={"texts": texts}, timeout=self.timeout_seconds)
        response.raise_for_status()
        return [float(x) for x in response.json()["influence_scores"]]

    def score_texts(self, texts):
        out = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._query_batch(texts[start : start + self.batch_size]))
        return out


def test_release_client_works_unchanged_and_short_texts_are_not_padded(release_server):
    srv, probe = release_server
    texts = [f"Sample {i}: the quick brown fox." * (1 + i % 2) for i in range(40)]  # 30 to 62 tokens
    probe.shapes.clear()
    client = ReleaseStyleClient("http://%s:%d/get_influence" % srv.address)
    scores = client.score_texts(texts)
    ref = probe.probe.score_docs([np.asarray(t, np.int32) for t in encode(texts)], 8)
    np.testing.assert_allclose(scores, ref["influence"], atol=1e-5)
    assert len(probe.shapes) == 5  # per request: 16 texts in two blocks of 8, then 8 in one
    assert {width for _, width in probe.shapes} <= {33, 65}  # not 129: short texts stay in small buckets
    health = client.session.get("http://%s:%d/health" % srv.address, timeout=10)
    assert health.json() == {"status": "ok"}


def test_bad_text_fails_only_its_request_beside_a_good_one(release_server):
    srv, probe = release_server
    endpoint = "http://%s:%d/get_influence" % srv.address
    good = [f"good text {i}" for i in range(16)]
    bad = [f"text {i}" for i in range(16)]
    bad[5] = "lone surrogate \ud800 here"
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(requests.Session().post, endpoint, json={"texts": t}, timeout=120) for t in (bad, good)]
        r_bad, r_good = (f.result() for f in futures)
    assert r_bad.status_code == 400 and r_bad.json()["index"] == 5 and "texts[5]" in r_bad.json()["error"]
    r_good.raise_for_status()
    ref = probe.probe.score_docs([np.asarray(t, np.int32) for t in encode(good)], 8)
    np.testing.assert_allclose(r_good.json()["influence_scores"], ref["influence"], atol=1e-5)
