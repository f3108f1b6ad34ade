"""similarity_local: BERTScore-style greedy F1 on hand-computed embeddings, the threshold, sources embedded once
per prompt, our LM's final hidden states (padding-invariant, equal on a mesh and on one device), error paths."""

import jax
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.generation.prompts import HEADINGS
from synpro_jax.rl.rewards import RewardError, RewardInputs, make_reward
from synpro_jax.rl.rewards.similarity import LMEmbedder, final_hidden_states, greedy_f1

H = HEADINGS["rephrase"]


def test_greedy_f1_known_values():
    e = np.eye(3)
    assert greedy_f1(e, e) == pytest.approx(1.0)
    assert greedy_f1(e[:1], e[1:]) == pytest.approx(0.0)
    # cand [x]; ref [x, y]: P = 1, R = (1 + 0) / 2, F1 = 2 * 0.5 / 1.5
    assert greedy_f1(e[:1], e[:2]) == pytest.approx(2 / 3)
    # scale does not matter (cosines); an empty side gives 0
    assert greedy_f1(5 * e[:1], e[:2]) == pytest.approx(2 / 3)
    assert greedy_f1(np.zeros((0, 3)), e) == 0.0
    # 45 degrees: cos = 1/sqrt2 for every best match
    assert greedy_f1(np.array([[1.0, 1.0, 0]]), e[:1]) == pytest.approx(1 / np.sqrt(2))


class Letters:
    """One-hot embedding per letter a-c: a text's tokens are its letters."""

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen += list(texts)
        return [np.eye(3)[[ord(c) - 97 for c in t if c in "abc"]].reshape(-1, 3) for t in texts]


def test_threshold_and_sources_embedded_once():
    emb = Letters()
    reward = make_reward("similarity_local", embedder=emb)
    inputs = RewardInputs(
        "rephrase",
        ["ab"] * 3 + ["abc"] * 2,
        [f"{H}\nab", f"{H}\na", "no heading", f"{H}\nabc", f"{H}\nc"],
        np.array([0, 0, 0, 1, 1]),
    )
    np.testing.assert_allclose(reward.f1(inputs), [1, 2 / 3, 0, 1, 0.5], atol=1e-6)
    np.testing.assert_array_equal(reward(inputs), [1, 1, 0, 1, 0])  # > 0.65
    np.testing.assert_array_equal(make_reward("similarity_local", embedder=emb, threshold=0.7)(inputs), [1, 0, 0, 1, 0])
    emb.seen.clear()
    reward(inputs)
    assert emb.seen.count("ab") == 2  # the source once, and one answer that happens to equal it
    assert emb.seen.count("abc") == 2 and "" not in emb.seen  # empty answers are not embedded


def test_errors():
    inputs = RewardInputs("rephrase", ["ab"], [f"{H}\nab"], np.zeros(1, int))
    with pytest.raises(ValueError, match="needs an embedder"):
        make_reward("similarity_local")

    def down(texts):
        raise TimeoutError("device busy")

    with pytest.raises(RewardError, match="similarity_local embedder failed: TimeoutError: device busy"):
        make_reward("similarity_local", embedder=down)(inputs)
    with pytest.raises(RewardError, match="returned 0 arrays"):
        make_reward("similarity_local", embedder=lambda t: [])(inputs)
    with pytest.raises(RewardError, match="a source embeds to no tokens"):
        make_reward("similarity_local", embedder=Letters())(
            RewardInputs("rephrase", ["xyz"], [f"{H}\nab"], np.zeros(1, int))
        )


def encode(texts):
    return [[2 + (ord(c) % 200) for c in t] for t in texts]


@pytest.mark.slow  # ~10 s on 2 cores: the tiny model compiled on two meshes and unpadded
def test_lm_embeddings_are_the_final_hidden_states_on_any_mesh():
    cfg = models.get_preset("tiny")
    params = jax.device_get(models.init_params(cfg, jax.random.key(1)))
    texts = ["rivers and hills", "short"]  # both in one 16-wide block: one compile per mesh
    forward = jax.jit(lambda p, t: models.forward(cfg, p, t, return_hidden=True))
    one = LMEmbedder(cfg, params, encode, batch_size=2)(texts)
    grid = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    with pytest.raises(ValueError, match="batch_size=4 does not divide over the mesh's 8 data shards"):
        LMEmbedder(cfg, params, encode, batch_size=4, mesh=grid)
    mesh = LMEmbedder(cfg, params, encode, batch_size=8, mesh=grid)
    for text, a, b in zip(texts, one, mesh(texts)):
        want = np.asarray(forward(params, np.asarray(encode([text]), np.int32)))[0]  # unpadded
        assert a.shape == (len(text), cfg.d_model)
        np.testing.assert_allclose(a, want, atol=1e-5)  # the end padding does not reach real tokens
        np.testing.assert_allclose(b, want, atol=1e-5)
    cut = LMEmbedder(cfg, params, encode, max_len=8, bos_id=1)(texts[:1])[0]
    want = final_hidden_states(cfg, params, np.asarray([[1] + encode(texts[:1])[0][:8]], np.int32))[0, 1:]
    np.testing.assert_allclose(cut, want, atol=1e-5)
    reward = make_reward("similarity_local", embedder=mesh)
    same = RewardInputs("rephrase", [texts[0]] * 2, [f"{H}\n{texts[0]}", f"{H}\n"], np.zeros(2, int))
    np.testing.assert_allclose(reward.f1(same), [1.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(reward(same), [1, 0])
