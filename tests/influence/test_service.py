"""The influence HTTP service through a real HTTP client: scores equal the library call, /health, malformed
requests get 4xx, and concurrent clients each get their own answers."""

import concurrent.futures
import http.client
import json

import jax
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.influence.probe import Probe
from synpro_jax.influence.service import InfluenceServer


def encode(texts):  # bytes as tokens: a real tokenizer is not the point here
    return [[2 + b for b in t.encode("utf-8")][:200] for t in texts]


@pytest.fixture(scope="module")
def server():
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 1, 1), devices=jax.devices()[:4])
    params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    tuned = jax.tree.map(lambda x: x * 1.02, params)
    probe = Probe(cfg, mesh, params, tuned, max_len=24)
    srv = InfluenceServer(probe, encode, port=0, batch_size=8, max_texts=20, max_body_bytes=4096).start()
    yield srv, probe
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
    texts = ["The cat sat on the mat.", "Numbers 1 2 3 4 5", "", "x" * 500]
    status, out = request(srv, "POST", "/get_influence", {"texts": texts})
    assert status == 200 and set(out) == {"influence_scores", "loss_before", "loss_after"}
    ref = probe.score_docs([np.asarray(t, np.int32) for t in encode(texts)], 8)
    np.testing.assert_allclose(out["influence_scores"], ref["influence"], atol=1e-6)
    np.testing.assert_allclose(out["loss_before"], ref["loss_before"], atol=1e-6)
    np.testing.assert_allclose(np.array(out["loss_before"]) - np.array(out["loss_after"]),
                               out["influence_scores"], atol=1e-5)
    assert request(srv, "POST", "/get_influence", {"texts": []}) == (
        200, {"influence_scores": [], "loss_before": [], "loss_after": []})


@pytest.mark.parametrize("raw, code, message", [
    (b"{not json", 400, "invalid JSON"),
    (b'{"text": ["a"]}', 400, "list field 'texts'"),
    (b'{"texts": "a"}', 400, "list field 'texts'"),
    (b'{"texts": ["a", 3]}', 400, "must be a string"),
    (json.dumps({"texts": ["a"] * 21}).encode(), 413, "limit of 20"),
    (json.dumps({"texts": ["a" * 5000]}).encode(), 413, "exceeds the limit of 4096"),
])
def test_malformed_requests_get_4xx(server, raw, code, message):
    srv, _ = server
    status, out = request(srv, "POST", "/get_influence", raw=raw)
    assert status == code and message in out["error"]
    assert request(srv, "GET", "/nope")[0] == 404
    assert request(srv, "GET", "/health")[0] == 200  # still serving


def test_concurrent_clients_get_their_own_answers(server):
    srv, probe = server
    batches = [[f"client {i} text {j} " * (1 + (i + j) % 4) for j in range(1 + i % 5)] for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda texts: request(srv, "POST", "/get_influence", {"texts": texts}), batches))
    for texts, (status, out) in zip(batches, results):
        assert status == 200
        ref = probe.score_docs([np.asarray(t, np.int32) for t in encode(texts)], 8)
        np.testing.assert_allclose(out["influence_scores"], ref["influence"], atol=1e-6)
