"""The probe: fine-tuned copy, two-forward scores, resumable corpus scoring, and its first-order agreement
with the jvp kernel."""

import json

import jax
import numpy as np
import pytest
from scipy.stats import spearmanr

from synpro_jax import models, sharding
from synpro_jax.influence import grad_dot, tree_sub
from synpro_jax.influence.kernel import example_losses
from synpro_jax.influence.probe import Probe, ProbeConfig, finetune, score_corpus


@pytest.fixture(scope="module")
def world():
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    params = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    # reference task: "count up" answers after a random prompt; loss on the answer half only
    starts = rng.integers(0, 200, size=(64, 1))
    ref = np.concatenate([rng.integers(0, 256, size=(64, 8)), (starts + np.arange(9)) % 256], axis=1)
    ref_mask = np.zeros_like(ref, np.float32)
    ref_mask[:, 8:] = 1.0
    # documents: some count up (like the reference), some are noise
    docs = [((rng.integers(0, 250) + np.arange(rng.integers(6, 17))) % 256) if i % 2 else
            rng.integers(0, 256, rng.integers(6, 17)) for i in range(40)]
    return cfg, mesh, params, ref, ref_mask, docs


def test_finetune_copies_and_learns(world):
    cfg, mesh, params, ref, ref_mask, _ = world
    before = jax.tree.map(np.copy, params)
    tuned = finetune(cfg, mesh, params, ref, ref_mask, ProbeConfig(steps=15, learning_rate=1e-2, warmup_steps=2,
                                                                   batch_size=16, seq_len=16), progress=False)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)  # theta is untouched
    loss0 = float(np.mean(example_losses(cfg, params, ref, ref_mask)))
    loss1 = float(np.mean(example_losses(cfg, jax.device_get(tuned), ref, ref_mask)))
    assert loss1 < loss0 - 0.5


def test_probe_scores_are_the_loss_difference(world):
    cfg, mesh, params, ref, ref_mask, docs = world
    tuned = jax.device_get(finetune(cfg, mesh, params, ref, ref_mask, ProbeConfig(steps=3, batch_size=16,
                                                                                  seq_len=16), progress=False))
    probe = Probe(cfg, mesh, params, tuned, max_len=16)
    scores = probe.score_docs(docs, batch_size=8)
    for i in (0, 1, 17):
        doc = np.asarray(docs[i])[None]
        b = float(example_losses(cfg, params, doc)[0])
        a = float(example_losses(cfg, tuned, doc)[0])
        assert scores["loss_before"][i] == pytest.approx(b, abs=1e-5)
        assert scores["influence"][i] == pytest.approx(b - a, abs=1e-5)


def test_score_corpus_is_resumable_and_aligned(world, tmp_path):
    cfg, mesh, params, ref, ref_mask, docs = world
    probe = Probe(cfg, mesh, params, jax.tree.map(lambda x: x * 1.01, params), max_len=16)
    ids = [f"doc{i}" for i in range(len(docs))]
    full = np.load(score_corpus(probe, docs, ids, tmp_path / "a", batch_size=8, chunk_batches=1,
                                progress=False), allow_pickle=True)
    # a "killed" run: two chunks done, then a restart
    part_dir = tmp_path / "b"
    score_corpus(probe, docs[:16], ids[:16], tmp_path / "tmp", batch_size=8, chunk_batches=1, progress=False)
    (part_dir / "parts").mkdir(parents=True)
    for p in sorted((tmp_path / "tmp" / "parts").iterdir()):
        p.rename(part_dir / "parts" / p.name)
    resumed = np.load(score_corpus(probe, docs, ids, part_dir, batch_size=8, chunk_batches=1, progress=False),
                      allow_pickle=True)
    assert list(resumed["ids"]) == ids and len(set(resumed["ids"])) == len(ids)
    np.testing.assert_allclose(resumed["influence"], full["influence"], atol=1e-6)
    with pytest.raises(ValueError, match="another corpus"):
        score_corpus(probe, docs[:5], ids[:5], tmp_path / "a", batch_size=8, progress=False)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["num_docs"] == len(docs)


def test_first_order_agreement_with_small_probe_step(world):
    """L_theta(x) - L_theta'(x) ~ -grad L_x . (theta' - theta) when theta' is one small step away."""
    cfg, mesh, params, ref, ref_mask, docs = world
    tuned = jax.device_get(finetune(cfg, mesh, params, ref, ref_mask,
                                    ProbeConfig(steps=1, learning_rate=1e-4, warmup_steps=0, batch_size=16,
                                                seq_len=16), progress=False))
    probe = Probe(cfg, mesh, params, tuned, max_len=16)
    scores = probe.score_docs(docs, batch_size=8)
    rows, mask = probe.rows(docs, len(docs))
    jvp = np.asarray(grad_dot(cfg, params, tree_sub(tuned, params), rows, loss_mask=mask))
    rho = spearmanr(scores["influence"], -jvp).statistic
    assert rho >= 0.9, rho
