"""Reading params (and Adam's moments) from a run without the optimizer that wrote it, and the layering of
train/checkpoint.py."""

import ast
from pathlib import Path

import jax
import numpy as np
import pytest

from synpro_jax import models, sharding
from synpro_jax.data.corpus import TokenizedCorpus
from synpro_jax.data.packing import PackedStream
from synpro_jax.models import hf
from synpro_jax.train import OptimizerConfig, TrainStep, params_io
from synpro_jax.train.checkpoint import Checkpointer
from synpro_jax.train.trainer import Trainer, TrainerConfig

CHECKPOINT_PY = Path(__file__).resolve().parents[2] / "synpro_jax" / "train" / "checkpoint.py"
# a run trained with settings unlike the reader's defaults: no clipping, a cosine schedule, no norm decay
RUN_OPT = OptimizerConfig(
    learning_rate=1e-2, warmup_steps=1, schedule="cosine", total_steps=10, clip_norm=None, decay_norms=False
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt_run")
    cfg = models.get_preset("tiny")
    mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 256, size=rng.integers(5, 40)) for _ in range(64)]
    stream = PackedStream(TokenizedCorpus.from_token_lists(docs, [f"d{i}" for i in range(64)]), 17, eos_id=1)
    tcfg = TrainerConfig(
        out_dir=str(out),
        num_steps=3,
        global_batch=8,
        seq_len=16,
        checkpoint_every=3,
        async_checkpoints=False,
        progress=False,
        log_every=1,
        eval_every=100,
    )
    Trainer(cfg, mesh, RUN_OPT, tcfg, stream).run()
    # the run's own view of its state, restored with its full template (the trainer's path)
    step = TrainStep(cfg, mesh, RUN_OPT)
    template = {"train": step.init(jax.random.key(0)), "rng": jax.random.key_data(jax.random.key(1))}
    ckpt = Checkpointer(out / "checkpoints", save_every=1, keep=1, async_save=False)
    state, _, at = ckpt.restore(template)
    ckpt.close()
    return cfg, mesh, out, jax.device_get(state["train"]), at


def test_checkpoint_module_imports_neither_hf_nor_the_train_step():
    imported = set()
    for node in ast.walk(ast.parse(CHECKPOINT_PY.read_text())):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{a.name}" for a in node.names)
    assert not any(
        m.startswith(("synpro_jax.models", "synpro_jax.train.step", "synpro_jax.train.optimizer")) for m in imported
    ), imported


@pytest.mark.slow
def test_params_load_without_the_runs_optimizer_template(run):
    cfg, mesh, out, state, at = run
    assert at == 3
    for source in (out, out / "checkpoints"):
        loaded = params_io.load(cfg, mesh, source)
        assert loaded.kind == "checkpoint" and loaded.step == 3 and loaded.adam is None
        for a, b in zip(jax.tree.leaves(jax.device_get(loaded.params)), jax.tree.leaves(state.params)):
            np.testing.assert_array_equal(a, b)
        assert loaded.params["embedding"].sharding.spec == models.param_shardings(cfg, mesh)["embedding"].spec
    params, step = params_io.load_params_and_step(cfg, mesh, out)
    assert step == 3


@pytest.mark.slow
def test_adam_moments_and_count_come_with_the_params(run):
    cfg, mesh, out, state, _ = run
    loaded = params_io.load(cfg, mesh, out, with_adam=True)
    adam_state = state.opt_state[0]  # no clipping in RUN_OPT: adamw's chain is the first element
    assert int(loaded.adam.count) == int(adam_state[0].count) == 3
    for got, want in ((loaded.adam.mu, adam_state[0].mu), (loaded.adam.nu, adam_state[0].nu)):
        assert jax.tree.structure(got) == jax.tree.structure(state.params)
        for a, b in zip(jax.tree.leaves(jax.device_get(got)), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
        assert float(np.abs(jax.device_get(got["lm_head"])).max()) > 0


@pytest.mark.slow
def test_another_model_shape_is_refused_naming_the_tensor(run):
    _, mesh, out, _, _ = run
    with pytest.raises(
        ValueError,
        match=r"tensor embedding has shape \(256, 64\) but the configured model needs "
        r"\(320, 64\)",
    ):
        params_io.load(models.get_preset("tiny", vocab_size=320), mesh, out)
    with pytest.raises(FileNotFoundError, match="neither an HF directory"):
        params_io.load(models.get_preset("tiny"), mesh, out / "nothing_here")


@pytest.mark.slow
def test_hf_directory_has_step_zero_and_no_moments(run, tmp_path):
    cfg, mesh, _, state, _ = run
    hf.save(cfg, state.params, tmp_path / "hf")
    loaded = params_io.load(cfg, mesh, tmp_path / "hf", with_adam=True)
    assert loaded.kind == "hf" and loaded.step == 0 and loaded.adam is None
    np.testing.assert_array_equal(jax.device_get(loaded.params["lm_head"]), state.params["lm_head"])
