"""The demo's effective tokens: the oracle fit through repetition and the oracle arms, with intervals from
resampling the held-out documents."""

import numpy as np
import pytest

from synpro_jax.demo.report import effective_tokens_by_documents


def test_effective_tokens_recover_a_known_curve_with_document_intervals():
    rng = np.random.default_rng(0)
    n, tokens = 300, np.full(300, 40.0)
    curve = lambda d: 1.0 + 50.0 / np.sqrt(d)  # noqa: E731
    difficulty = rng.normal(0, 0.3, n)  # shared by every arm: a document's own difficulty

    def arm(d, noise):
        return {"nll": (curve(d) + difficulty + rng.normal(0, noise, n)) * tokens, "tokens": tokens}

    oracle = {"repetition": 1000, "oracle_2000": 2000, "oracle_4000": 4000}
    exact = {**{a: arm(d, 0.0) for a, d in oracle.items()}, "synpro": arm(1500, 0.0)}
    out = effective_tokens_by_documents(exact, oracle, resamples=50)
    synpro = out["arms"]["synpro"]
    assert synpro["effective_tokens"]["value"] == pytest.approx(1500, rel=1e-4)
    assert synpro["multiplier"]["value"] == pytest.approx(1.5, rel=1e-4)
    assert out["arms"]["repetition"]["multiplier"]["value"] == pytest.approx(1.0)
    # A shift every document shares moves E only: every resample recovers the same D.
    assert synpro["effective_tokens"]["high"] - synpro["effective_tokens"]["low"] < 1.0

    noisy = {**{a: arm(d, 0.05) for a, d in oracle.items()}, "synpro": arm(1500, 0.05)}
    out = effective_tokens_by_documents(noisy, oracle, resamples=200)
    m = out["arms"]["synpro"]["multiplier"]
    assert m["low"] < m["value"] < m["high"] and m["low"] < 1.5 < m["high"]
    assert m["status"] == "ok" and out["level"] == 0.9
