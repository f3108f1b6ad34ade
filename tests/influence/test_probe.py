"""The probe as the release runs it (AdamW continuing the checkpoint's moments, constant lr from step 1, norms
decayed, plain slices of the concatenated reference examples, the answer loss over every token of the batch),
the sign of influence on crafted texts, and corpus scoring that cannot misalign (ids, fingerprints, resume with
another chunk size, verified merge, checked theta' reuse)."""

import functools
import json
import logging
from pathlib import Path

from flan_by_hand import examples_end_to_end
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from synpro_jax import models, sharding
from synpro_jax.data.corpus import TokenizedCorpus
from synpro_jax.data.packing import PackedStream
from synpro_jax.influence import influence_scores
from synpro_jax.influence.kernel import example_losses
from synpro_jax.influence.probe import Probe, ProbeConfig, finetune, score_corpus, unique_keys
from synpro_jax.influence.reference import PackedReference, ReferenceExample
from synpro_jax.influence.run import _save_finetuned, load_finetuned, theta_identity
from synpro_jax.train import OptimizerConfig, TrainStep, make_optimizer, make_schedule, params_io
from synpro_jax.train.checkpoint import Checkpointer
from synpro_jax.train.trainer import Trainer, TrainerConfig

RUN_OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=1)  # the "pretraining" run behind theta


class CharVocab:
    pad_id, eos_id, vocab_size = 0, 1, 256

    def encode(self, s):
        return [2 + (ord(c) % 200) for c in s]


def encode(text):
    return np.asarray(CharVocab().encode(text), np.int32)


def xyz_examples(n, seed=0):
    """The reference task: after a random prompt, answer with the cycle x -> y -> z."""
    rng = np.random.default_rng(seed)
    return [
        ReferenceExample(f"r{i}", "".join(rng.choice(list("abcdefgh"), size=6)), "xyz" * int(rng.integers(2, 6)))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    out = tmp_path_factory.mktemp("theta_run")
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 256, size=rng.integers(5, 40)) for _ in range(64)]
    stream = PackedStream(TokenizedCorpus.from_token_lists(docs, [f"d{i}" for i in range(64)]), 33, eos_id=1)
    Trainer(
        cfg,
        mesh,
        RUN_OPT,
        TrainerConfig(
            out_dir=str(out),
            num_steps=4,
            global_batch=8,
            seq_len=32,
            checkpoint_every=4,
            async_checkpoints=False,
            progress=False,
            eval_every=100,
        ),
        stream,
    ).run()
    packed = PackedReference(xyz_examples(48), CharVocab(), seq_len=32, seed=0)
    return cfg, mesh, out, packed


def release_rows(examples, order, seq_len, rows):
    """The release's FLAN rows, built here and not by the library: the examples laid end to end in ``order``
    (flan_by_hand), cut into plain ``seq_len``-token slices (OLMo's MemMapDataset chunks)."""
    tokens, labels = examples_end_to_end(examples, order, CharVocab())
    n = rows * seq_len
    assert len(tokens) >= n
    return tokens[:n].reshape(rows, seq_len), labels[:n].reshape(rows, seq_len)


def release_loss(cfg, params, tokens, labels, z_loss):
    """OLMo's train_micro_batch: the model reads the whole row (no document masking, positions 0..L-1), the
    last position's logits are dropped, labels are the next tokens with prompt tokens ignored, and the summed
    cross-entropy + z_loss * logsumexp^2 is divided by input_ids.numel(), every token of the batch."""
    logits = models.forward(cfg, params, tokens)[:, :-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    z = jax.nn.logsumexp(logits, axis=-1) ** 2
    return jnp.sum((ce + z_loss * z) * labels[:, 1:]) / tokens.size


def separate_loss(cfg, params, batch, z_loss):
    """synpro's earlier probe: examples kept apart, the mean over answer tokens of cross-entropy + z_loss *
    logsumexp^2, written here from the model's logits."""
    logits = models.forward(
        cfg, params, batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"]
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    z = jax.nn.logsumexp(logits, axis=-1) ** 2
    m = batch["loss_mask"]
    return jnp.sum((ce + z_loss * z) * m) / jnp.sum(m)


def optax_probe(params, run_adam, losses, clip_norm=1.0):
    """The probe's AdamW written with plain optax, its Adam state replaced by the run's, one step per loss."""

    def not_embedding(p):
        return {k: jax.tree.map(lambda _: k != "embedding", v) for k, v in p.items()}

    tx = optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=not_embedding),
    )
    state = tx.init(params)
    state = (state[0], (state[1][0]._replace(mu=run_adam.mu, nu=run_adam.nu, count=run_adam.count),) + state[1][1:])
    for loss in losses:
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def max_diff(a, b):
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def assert_same_params(got, want):
    for path, a in jax.tree_util.tree_leaves_with_path(got):
        b = want
        for k in path:
            b = b[k.key]
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_probe_is_the_release_fine_tune_from_the_restored_moments(world):
    """theta' equals an independent recomputation of the release's fine-tune: its rows (plain slices of the
    concatenated examples), its loss (answer tokens summed over every token of the batch) and AdamW continuing
    from the checkpoint's moments. synpro's earlier probe (answer-token mean, examples kept apart), still
    available as loss_normalization="answer_tokens", packing="separate", equals its own recomputation and lands
    elsewhere.

    Here the gradient's norm is above 1 under either normalization (about 1.6 and 4.7), so with the release's
    clip of 1.0 the two differ only in the packing; a clip that does not bind (10) shows the normalization."""
    cfg, mesh, out, packed = world
    steps, rows, seq_len = 3, 8, 32
    theta = params_io.load(cfg, mesh, out, with_adam=True)
    assert theta.step == 4 and theta.adam is not None

    def tune(packing="release", **kw):
        ref = (
            packed
            if packing == "release"
            else PackedReference(xyz_examples(48), CharVocab(), seq_len, seed=0, packing=packing)
        )
        pcfg = ProbeConfig(steps=steps, batch_size=rows, seq_len=seq_len, packing=packing, **kw)
        return jax.device_get(
            finetune(cfg, mesh, theta.params, ref, pcfg, adam=theta.adam, step=theta.step, progress=False)
        )

    assert ProbeConfig().loss_normalization == "batch_tokens" and ProbeConfig().packing == "release"

    # the independent run: the checkpoint restored with the run's own optimizer template, then plain optax
    template = {
        "train": TrainStep(cfg, mesh, RUN_OPT).init(jax.random.key(0)),
        "rng": jax.random.key_data(jax.random.key(1)),
    }
    ckpt = Checkpointer(out / "checkpoints", save_every=1, keep=1, async_save=False)
    restored = jax.device_get(ckpt.restore(template)[0]["train"])
    ckpt.close()
    run_adam = restored.opt_state[1][0]  # (clip, adamw chain); adamw's first state is scale_by_adam's
    assert int(run_adam.count) == 4

    order = [packed.epoch_order(e) for e in range(2)]  # only the example order is taken from the library
    tokens, labels = release_rows(xyz_examples(48), order, seq_len, steps * rows)
    assert 0.1 < labels.mean() < 0.5  # prompt tokens are most of the batch: the denominator matters
    release_losses = [
        functools.partial(
            release_loss,
            cfg,
            tokens=tokens[i * rows : (i + 1) * rows],
            labels=labels[i * rows : (i + 1) * rows],
            z_loss=1e-5,
        )
        for i in range(steps)
    ]
    tuned = tune()
    assert_same_params(tuned, optax_probe(restored.params, run_adam, release_losses))

    # with a clip that does not bind, the answer-token mean (the earlier probe's loss) lands elsewhere
    loose = optax_probe(restored.params, run_adam, release_losses, clip_norm=10.0)
    assert_same_params(tune(clip_norm=10.0), loose)
    update = max_diff(loose, restored.params)
    assert max_diff(tune(clip_norm=10.0, loss_normalization="answer_tokens"), loose) > 0.1 * update

    # synpro's earlier probe is still there, equal to its own recomputation, and away from the release's
    separate = PackedReference(xyz_examples(48), CharVocab(), seq_len, seed=0, packing="separate")
    old = tune("separate", loss_normalization="answer_tokens")
    assert_same_params(
        old,
        optax_probe(
            restored.params,
            run_adam,
            [functools.partial(separate_loss, cfg, batch=separate.batch(i, rows), z_loss=1e-5) for i in range(steps)],
        ),
    )
    assert max_diff(old, tuned) > 0.1 * max_diff(tuned, restored.params)

    # the restored moments matter: starting from zero moments lands elsewhere
    fresh = jax.device_get(
        finetune(
            cfg, mesh, theta.params, packed, ProbeConfig(steps=steps, batch_size=rows, seq_len=seq_len), progress=False
        )
    )
    assert max_diff(fresh, tuned) > 1e-5


@pytest.mark.slow
def test_constant_lr_from_step_one_and_norms_decayed_embeddings_not(world, caplog):
    cfg, mesh, _, packed = world
    opt = ProbeConfig().optimizer()
    assert float(make_schedule(opt)(0)) == pytest.approx(1e-4)
    params = models.init_params(cfg, jax.random.key(1))
    tx = make_optimizer(opt)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)  # step 1, zero gradients: the decay alone
    assert float(jnp.abs(updates["embedding"]).max()) == 0.0
    for leaf in (updates["final_norm"]["scale"], updates["layers"]["post_attn_norm"]["scale"]):
        assert float(jnp.abs(leaf).max()) > 0
    np.testing.assert_allclose(updates["final_norm"]["scale"], -1e-4 * 0.1 * params["final_norm"]["scale"], rtol=1e-6)
    np.testing.assert_allclose(updates["lm_head"], -1e-4 * 0.1 * params["lm_head"], rtol=1e-6)

    # one probe step from a source without moments moves the weights by lr (Adam's first step is ~lr * sign(g))
    with caplog.at_level(logging.WARNING, logger="synpro_jax.influence.probe"):
        tuned = jax.device_get(
            finetune(
                cfg,
                mesh,
                jax.device_get(params),
                packed,
                ProbeConfig(steps=1, batch_size=8, seq_len=32),
                progress=False,
            )
        )
    assert sum("zero moments" in r.getMessage() for r in caplog.records) == 1
    moved = np.abs(tuned["embedding"] - np.asarray(params["embedding"]))
    assert moved.max() == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.slow
def test_both_paths_rank_helpful_text_above_harmful(world):
    """Reference answers cycle x -> y -> z. A text following the cycle helps the reference task; a text of tokens
    its answers never use (q, v, w) is anti-correlated: the fine-tune moves probability away from it. Both
    influence paths rank them so, and the exact one has the signs."""
    cfg, mesh, _, packed = world
    theta = jax.device_get(models.init_params(cfg, jax.random.key(2)))
    tuned = jax.device_get(
        finetune(
            cfg,
            mesh,
            theta,
            packed,
            ProbeConfig(steps=10, learning_rate=1e-3, batch_size=8, seq_len=32),
            progress=False,
        )
    )
    texts = np.stack([encode("xyz" * 8), encode("qvw" * 8)])
    exact = np.asarray(influence_scores(cfg, theta, tuned, texts, method="exact"))
    first = np.asarray(influence_scores(cfg, theta, tuned, texts, method="first_order"))
    assert exact[0] > 0 > exact[1], exact
    assert first[0] > first[1], first
    probe = Probe(cfg, mesh, theta, tuned, max_len=24)
    served = probe.score_docs(list(texts), batch_size=8)["influence"]
    np.testing.assert_allclose(served, exact, atol=1e-5)


@pytest.mark.slow
def test_probe_scores_are_the_loss_difference(world):
    cfg, mesh, _, packed = world
    theta = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    tuned = jax.device_get(
        finetune(cfg, mesh, theta, packed, ProbeConfig(steps=2, batch_size=8, seq_len=32), progress=False)
    )
    docs = [encode("xyzab" * k) for k in range(1, 6)]
    scores = Probe(cfg, mesh, theta, tuned, max_len=16).score_docs(docs, batch_size=8)
    for i in (0, 3):
        doc = docs[i][:17][None]
        b, a = float(example_losses(cfg, theta, doc)[0]), float(example_losses(cfg, tuned, doc)[0])
        assert scores["loss_before"][i] == pytest.approx(b, abs=1e-5)
        assert scores["influence"][i] == pytest.approx(b - a, abs=1e-5)


# --- corpus scoring -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scoring():
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    theta = jax.device_get(models.init_params(cfg, jax.random.key(0)))
    probe = Probe(cfg, mesh, theta, jax.tree.map(lambda x: x * 1.01, theta), max_len=16)
    rng = np.random.default_rng(5)
    docs = [rng.integers(2, 256, size=rng.integers(4, 20)) for _ in range(37)]
    ids = [f"file.jsonl:{i + 1}" for i in range(37)]
    fp = {
        "theta_source": "/runs/a",
        "theta_step": 4,
        "probe": {"config": {"steps": 3}},
        "vocabulary": {"n": 256},
        "corpus": [["/data/a.jsonl", 100, 1]],
    }
    return cfg, probe, docs, ids, fp


class Killed(Exception):
    pass


def test_scores_keyed_by_id_resume_with_another_chunk_size(scoring, tmp_path, monkeypatch):
    _, probe, docs, ids, fp = scoring
    full = tmp_path / "full"
    with np.load(
        score_corpus(probe, docs, ids, full, fingerprint=fp, batch_size=8, chunk_docs=8, progress=False)
    ) as z:  # no allow_pickle: ids are plain unicode
        assert z["ids"].dtype.kind == "U" and z["ids"].tolist() == ids
        want = {k: z[k] for k in ("influence", "loss_before", "loss_after")}
    # a job killed after two chunks of 8 ...
    calls = {"n": 0}
    real = Probe.score_docs

    def dying(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise Killed()
        return real(self, *a, **kw)

    monkeypatch.setattr(Probe, "score_docs", dying)
    with pytest.raises(Killed):
        score_corpus(probe, docs, ids, tmp_path / "resumed", fingerprint=fp, batch_size=8, chunk_docs=8, progress=False)
    monkeypatch.setattr(Probe, "score_docs", real)
    assert len(list((tmp_path / "resumed" / "parts").glob("part-*.npz"))) == 2
    # ... resumes with another chunk and batch size, scoring only what is left
    seen = []
    monkeypatch.setattr(Probe, "score_docs", lambda self, d, *a, **kw: seen.append(len(d)) or real(self, d, *a, **kw))
    path = score_corpus(
        probe, docs, ids, tmp_path / "resumed", fingerprint=fp, batch_size=16, chunk_docs=5, progress=False
    )
    assert sum(seen) == len(docs) - 16 and max(seen) == 5
    with np.load(path) as z:
        assert z["ids"].tolist() == ids and len(set(z["ids"].tolist())) == len(ids)
        for k, v in want.items():
            np.testing.assert_allclose(z[k], v, atol=1e-6)


@pytest.mark.parametrize(
    "field,change,named",
    [
        ("theta_step", 5, "theta_step: 4 then, 5 now"),
        ("probe", {"config": {"steps": 4}}, "probe.config.steps: 3 then"),
        ("vocabulary", {"n": 320}, "vocabulary.n: 256 then, 320 now"),
        ("corpus", [["/data/b.jsonl", 100, 1]], "corpus"),
    ],
)
def test_resume_refuses_another_fingerprint_naming_the_field(scoring, tmp_path, field, change, named):
    _, probe, docs, ids, fp = scoring
    score_corpus(probe, docs[:10], ids[:10], tmp_path, fingerprint=fp, batch_size=8, chunk_docs=4, progress=False)
    with pytest.raises(ValueError, match=f"other settings \\(.*{named}"):
        score_corpus(
            probe, docs[:10], ids[:10], tmp_path, fingerprint={**fp, field: change}, batch_size=8, progress=False
        )


def test_resume_refuses_another_max_len_or_corpus(scoring, tmp_path):
    cfg, probe, docs, ids, fp = scoring
    score_corpus(probe, docs[:10], ids[:10], tmp_path, fingerprint=fp, batch_size=8, progress=False)
    other = Probe(cfg, probe.mesh, probe.params, probe.params_ft, max_len=12)
    with pytest.raises(ValueError, match="max_len: 16 then, 12 now"):
        score_corpus(other, docs[:10], ids[:10], tmp_path, fingerprint=fp, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="documents.count: 10 then, 9 now"):
        score_corpus(probe, docs[:9], ids[:9], tmp_path, fingerprint=fp, batch_size=8, progress=False)


def test_a_score_directory_without_a_fingerprint_is_refused(scoring, tmp_path):
    _, probe, docs, ids, fp = scoring
    (tmp_path / "manifest.json").write_text(json.dumps({"num_docs": 10, "max_len": 16}))  # an older layout
    with pytest.raises(ValueError, match="records no fingerprint"):
        score_corpus(probe, docs[:10], ids[:10], tmp_path, fingerprint=fp, batch_size=8, progress=False)


def test_merge_is_verified(scoring, tmp_path):
    _, probe, docs, ids, fp = scoring
    out = tmp_path / "s"
    score_corpus(probe, docs[:12], ids[:12], out, fingerprint=fp, batch_size=8, chunk_docs=6, progress=False)
    (out / "influence.npz").unlink()
    first = sorted((out / "parts").glob("part-*.npz"))[0]
    with np.load(first) as z:
        part = {k: z[k] for k in z.files}
    np.savez(out / "parts" / "part-999999998-999999999.npz", **part)  # the same ids scored twice
    with pytest.raises(ValueError, match="is scored in both"):
        score_corpus(probe, docs[:12], ids[:12], out, fingerprint=fp, batch_size=8, progress=False)
    part["ids"] = np.array(["stranger"] * len(part["ids"]))
    np.savez(out / "parts" / "part-999999998-999999999.npz", **part)
    with pytest.raises(ValueError, match="is scored in both|not in this corpus"):
        score_corpus(probe, docs[:12], ids[:12], out, fingerprint=fp, batch_size=8, progress=False)
    (out / "parts" / "part-999999998-999999999.npz").unlink()
    score_corpus(probe, docs[:12], ids[:12], out, fingerprint=fp, batch_size=8, progress=False)
    with np.load(out / "influence.npz") as z:  # a final file whose ids are not this corpus's is refused
        final = {k: z[k] for k in z.files}
    final["ids"] = final["ids"][::-1]
    np.savez(out / "influence.npz", **final)
    with pytest.raises(ValueError, match="not this corpus's documents"):
        score_corpus(probe, docs[:12], ids[:12], out, fingerprint=fp, batch_size=8, progress=False)


def test_repeated_ids_get_their_own_keys():
    assert unique_keys(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]
    with pytest.raises(ValueError, match="not unique"):
        unique_keys(["a", "a", "a#2"])


@pytest.mark.slow
def test_reused_theta_prime_must_come_from_this_theta_and_probe(world, tmp_path):
    cfg, mesh, out, packed = world
    theta = params_io.load(cfg, mesh, out)
    tuned = finetune(cfg, mesh, theta.params, packed, ProbeConfig(steps=1, batch_size=8, seq_len=32), progress=False)
    probe_fp = {"config": {"steps": 1}, "reference": [["/ref.tsv", 10, 1]]}
    _save_finetuned(cfg, tuned, tmp_path / "finetuned", {"theta": theta_identity(theta), "probe": probe_fp})
    again = load_finetuned(cfg, tmp_path / "finetuned", theta, probe_fp)
    np.testing.assert_allclose(again["lm_head"], np.asarray(jax.device_get(tuned["lm_head"])), atol=1e-7)
    with pytest.raises(ValueError, match=r"other probe settings \(config.steps: 1 then, 2 now\)"):
        load_finetuned(cfg, tmp_path / "finetuned", theta, {**probe_fp, "config": {"steps": 2}})
    with pytest.raises(ValueError, match="another theta: step 4 then, 5 now"):
        load_finetuned(
            cfg, tmp_path / "finetuned", params_io.LoadedParams(theta.params, 5, theta.source, theta.kind), probe_fp
        )
    other = jax.tree.map(lambda x: x * 1.1, theta.params)
    with pytest.raises(ValueError, match="other weights"):
        load_finetuned(
            cfg, tmp_path / "finetuned", params_io.LoadedParams(other, 4, theta.source, theta.kind), probe_fp
        )
    (tmp_path / "finetuned" / "probe.json").unlink()
    with pytest.raises(ValueError, match="no probe.json"):
        load_finetuned(cfg, tmp_path / "finetuned", theta, probe_fp)


def test_files_fingerprint_follows_the_files(tmp_path):
    from synpro_jax.influence.run import files_fingerprint

    (tmp_path / "qasc_train.tsv").write_text("q\ta\n")
    before = files_fingerprint([str(tmp_path / "*.tsv"), "tfds:foo/train"])
    assert before[0][0] == str((tmp_path / "qasc_train.tsv").resolve()) and before[1] == "tfds:foo/train"
    (tmp_path / "qasc_train.tsv").write_text("q\ta longer answer\n")
    assert files_fingerprint([str(tmp_path / "*.tsv"), "tfds:foo/train"]) != before


def test_no_pickle_in_the_influence_stage():
    root = Path(__file__).resolve().parents[2]
    for f in list((root / "synpro_jax" / "influence").glob("*.py")) + [root / "bench" / "influence_checks.py"]:
        assert "allow_pickle" not in f.read_text(), f


def test_a_batch_that_does_not_divide_over_the_mesh_is_named(scoring):
    _, probe, docs, _, _ = scoring
    with pytest.raises(ValueError, match="batch of 4 rows does not divide over the mesh's 8 data shards"):
        probe.score_docs(docs[:4], batch_size=4)


def test_probe_config_errors_name_the_knob():
    with pytest.raises(ValueError, match="ProbeConfig.learning_rate"):
        ProbeConfig(learning_rate=0)
    with pytest.raises(ValueError, match="ProbeConfig.batch_size=6 is not divisible by accum_steps=4"):
        ProbeConfig(batch_size=6, accum_steps=4)
    with pytest.raises(ValueError, match="ProbeConfig.loss_normalization='tokens': must be one of"):
        ProbeConfig(loss_normalization="tokens")
    with pytest.raises(ValueError, match="ProbeConfig.packing='olmo': must be one of"):
        ProbeConfig(packing="olmo")
    assert ProbeConfig(loss_normalization="answer_tokens").train_normalization() == "loss_tokens"
    assert ProbeConfig().train_normalization() == "batch_tokens"
    separate = PackedReference(xyz_examples(4), CharVocab(), seq_len=16, packing="separate")
    with pytest.raises(ValueError, match="ProbeConfig.packing='release', but the reference rows are packed"):
        finetune(None, None, None, separate, ProbeConfig(seq_len=16))
