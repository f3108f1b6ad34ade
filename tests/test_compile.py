"""`synpro compile`: the pretraining step, the GRPO step and the rollout sampler compiled ahead of time, with
their memory per device (XLA:CPU here; XLA:TPU through libtpu where it is installed)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from synpro_jax import cli, configs, models, sharding
from synpro_jax import compile as aot
from synpro_jax.rl.config import GRPOConfig
from synpro_jax.sharding import MeshConfig
from synpro_jax.train.optimizer import OptimizerConfig

# A tiny GRPO: 8 prompts x G 4 = 32 completions of 48 (bucketed to 64) prompt + 32 completion slots.
GRPO = GRPOConfig(num_generations=4, max_prompt_tokens=48, max_completion_tokens=32)
TINY_GRPO_GIN = """include 'gin/experiments/markov_tiny.gin'
synpro.grpo.model = %MODEL
synpro.grpo.algorithm = @synpro.GRPOConfig()
synpro.GRPOConfig.num_generations = 4
synpro.GRPOConfig.max_prompt_tokens = 48
synpro.GRPOConfig.max_completion_tokens = 32
synpro.GRPORunConfig.prompts_per_step = 8
synpro.GRPORunConfig.share_prompts = False  # (shorter compiles: no prompt sharing, float32)
synpro.grpo.dtype = None
"""


def report(**knobs):
    accum = knobs.pop("accum_steps", 1)
    cfg = models.get_preset("tiny").replace(vocab_size=8192, **knobs)
    return aot.train_step_memory(cfg, MeshConfig(2, 2, 2), OptimizerConfig(), 16, 256, 1e-5, accum, "cpu")


def test_the_memory_report_sees_what_the_knobs_save():
    dense = report()
    assert dense.devices == 8 and dense.mesh == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dense.argument_bytes > 0 and dense.temp_bytes > 0 and dense.fits is None  # no HBM size for a CPU
    assert dense.total_bytes == (
        dense.argument_bytes + dense.output_bytes - dense.alias_bytes + dense.temp_bytes + dense.code_bytes
    )
    # The logits dominate here (8192 vocabulary): the chunked loss and micro-batches shrink the temporaries.
    assert report(loss_chunk=32).temp_bytes < dense.temp_bytes
    assert report(accum_steps=4).temp_bytes < dense.temp_bytes
    assert "train step (tiny, batch 16 x 256" in dense.line() and "per device arguments" in dense.line()


def test_an_unknown_topology_is_named():
    with pytest.raises(ValueError, match="--topology='v9-8'"):
        aot.topology_devices("v9-8")


def grpo_model():
    return models.get_preset("tiny").replace(vocab_size=2048)


def test_the_grpo_step_is_compiled_with_its_batch_and_the_buffers_beside_it():
    theta = models.get_preset("tiny")
    r = aot.grpo_step_memory(grpo_model(), MeshConfig(2, 2, 2), GRPO, 8, accum_steps=2, topology="cpu", influence=theta)
    assert r.kind == "grpo_step" and r.devices == 8 and r.argument_bytes > 0 and r.temp_bytes > 0
    assert "32 completions = 8 prompts x G 4, 64 prompt + 32 completion slots, accum 2" in r.line()
    # The frozen reference (float32), the sampler's weights and data_influence's theta and theta' live through the
    # update: counted, not arguments.
    assert r.resident == "frozen reference, sampler weights, influence theta and theta' (tiny)"
    mesh = sharding.make_mesh(MeshConfig(2, 2, 2))
    assert r.resident_bytes > aot.influence_bytes(theta, mesh) > 0
    assert r.total_bytes == (
        r.argument_bytes + r.output_bytes - r.alias_bytes + r.temp_bytes + r.code_bytes + r.resident_bytes
    )
    with pytest.raises(ValueError, match="must divide into accum_steps=3"):
        aot.grpo_step_memory(grpo_model(), MeshConfig(2, 2, 2), GRPO, 8, accum_steps=3, topology="cpu")


def test_the_sampler_prefill_and_decode_are_compiled_beside_the_learner():
    prefill, decode = aot.sampler_memory(grpo_model(), MeshConfig(2, 2, 2), GRPO, 8, "cpu")
    assert (prefill.kind, decode.kind) == ("sampler_prefill", "sampler_decode")
    for r in (prefill, decode):
        assert r.argument_bytes > 0 and r.temp_bytes > 0 and r.fits is None
        assert r.resident == "learner state, frozen reference" and r.resident_bytes > r.argument_bytes
    # The decode takes the prefill's KV cache besides the weights; G rows per prompt, 32 new slots.
    assert decode.argument_bytes > prefill.argument_bytes
    assert "8 prompts x 64 slots x G 4 + 32 new slots" in decode.line()
    alone, _ = aot.sampler_memory(grpo_model(), MeshConfig(2, 2, 2), GRPO, 8, "cpu", with_learner=False)
    assert alone.resident_bytes == 0 and alone.argument_bytes == prefill.argument_bytes


def test_a_program_over_its_hbm_budget_does_not_fit():
    prefill, _ = aot.sampler_memory(grpo_model(), MeshConfig(2, 2, 2), GRPO, 8, "cpu", hbm_bytes=2**20)
    assert prefill.hbm_bytes == 2**20 and prefill.total_bytes > 2**20 and prefill.fits is False
    assert "of 0.00 GiB HBM (DOES NOT FIT)" in prefill.line() and "accum_steps" in aot.hint(
        aot.MemoryReport("p", "cpu", 8, {}, 0, 0, 0, 0, 0, None, kind="grpo_step")
    )


def test_an_experiment_without_grpo_gets_the_release_generator():
    try:
        configs.parse(["gin/experiments/markov_tiny.gin"], [])
        default = aot.grpo_shapes()
        pretraining_only = aot.experiment_programs()
        with pytest.raises(ValueError, match=r"--programs: unknown \['rollout'\]"):
            aot.compile_experiment("cpu", programs=("train", "rollout"))
        configs.parse(["gin/experiments/cpu_grpo_rephrase.gin"], [])
        configured = aot.grpo_shapes()
        grpo_only = aot.experiment_programs()
    finally:
        import gin

        gin.clear_config()
    # What is compiled by default: what the experiment runs (a pretraining one never pays for a 1B generator).
    assert pretraining_only == ("train",) and grpo_only == ("grpo", "sampler")
    assert default.model.name == "olmo2_1b_instruct" and default.model.dtype == "bfloat16"
    assert default.algorithm == GRPOConfig() and default.prompts_per_step is None and default.accum_steps == 4
    assert default.mesh == MeshConfig() and default.source == (
        "GRPO knobs from gin; unbound, so: the olmo2_1b_instruct preset, bf16, synpro.grpo's data-parallel mesh, "
        "GRPOConfig(), 4 prompts per data shard, accum 4"
    )
    # A GRPO experiment's own knobs (its dtype None keeps the model's float32).
    assert configured.model.name == "cpu_small" and configured.model.dtype == "float32"
    assert configured.prompts_per_step == 4 and configured.accum_steps == 1
    assert configured.algorithm.max_completion_tokens == 128
    assert configured.source == "GRPO knobs from gin; unbound, so: synpro.grpo's data-parallel mesh"


def test_compile_fills_unset_required_macros_but_not_for_a_shape(tmp_path, capsys):
    """compile reads no data: a run directory or data path left REQUIRED gets a placeholder; a knob compile reads
    (the batch) from a REQUIRED macro is refused, naming it."""
    gin_file = tmp_path / "exp.gin"
    gin_file.write_text("include 'gin/experiments/markov_tiny.gin'\nOUT_DIR = %gin.REQUIRED\nORGANIC = %gin.REQUIRED\n")
    args = ["compile", f"--gin_file={gin_file}", "--topology=cpu", "--hbm_gib=1"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "the unset REQUIRED macros OUT_DIR, ORGANIC are placeholders" in out and "of 1.00 GiB HBM (fits)" in out
    assert cli.main([*args, "--gin.GLOBAL_BATCH=%gin.REQUIRED"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: synpro.TrainerConfig.global_batch = %GLOBAL_BATCH, a REQUIRED macro: set it (--gin.GLOBAL_BATCH=VALUE) "
        "to compile"
    )


def test_the_v5e_grpo_experiment_counts_theta_beside_the_generator():
    try:
        configs.parse(
            ["gin/experiments/olmo2_grpo_rephrase_v5e.gin"],
            aot.placeholder_bindings(aot.unset_macros(["gin/experiments/olmo2_grpo_rephrase_v5e.gin"], [])),
        )
        shapes = aot.grpo_shapes()
    finally:
        import gin

        gin.clear_config()
    assert shapes.model.name == "olmo2_1b_instruct" and shapes.model.remat == "full"
    assert shapes.model.dtype == "bfloat16" and shapes.mesh == MeshConfig(data=1, fsdp=-1)
    assert (shapes.prompts_per_step, shapes.accum_steps, shapes.logits_chunk) == (16, 8, 256)
    assert shapes.influence.name == "olmo_400m" and shapes.source == "GRPO knobs from gin"


@pytest.mark.slow  # the CLI end to end in a fresh process; the reports it prints are pinned in process above
def test_the_cli_reports_every_program_writes_json_and_fails_on_those_over_budget(tmp_path):
    gin_file, out = tmp_path / "tiny_grpo.gin", tmp_path / "mem.json"
    gin_file.write_text(TINY_GRPO_GIN)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # 4 MiB per device: the train and GRPO steps need more here (~13 and ~7 MiB), the sampler's programs less.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "synpro_jax.cli",
            "compile",
            f"--gin_file={gin_file}",
            "--topology=cpu",
            "--hbm_gib=0.004",
            f"--json={out}",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "per device arguments" in line]
    assert [line.split(" (")[0] for line in lines] == ["train step", "grpo step", "sampler prefill", "sampler decode"]
    assert [line.endswith("(DOES NOT FIT)") for line in lines] == [True, True, False, False]
    rows = json.loads(out.read_text())
    assert [r["kind"] for r in rows] == ["train_step", "grpo_step", "sampler_prefill", "sampler_decode"]
    assert all(r["argument_bytes"] > 0 and r["temp_bytes"] > 0 for r in rows)
    assert [r["fits"] for r in rows] == [False, False, True, True]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert [e.split(" needs")[0] for e in errors] == ["error: train_step", "error: grpo_step"]
    assert "--hbm_gib=0.004 has 0.00 GiB" in errors[1] and "GRPORunConfig.accum_steps" in errors[1]


@pytest.mark.slow  # an XLA:TPU compile; test_compile_libtpu.py's compile through libtpu stays in the fast tier
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (pip install libtpu)")
def test_xla_tpu_compiles_for_a_v5e_8_without_a_tpu():
    cfg = models.get_preset("tiny").replace(dtype="bfloat16")
    r = aot.train_step_memory(cfg, MeshConfig(1, -1, 1), OptimizerConfig(), 16, 256, 1e-5, 1, "v5e-8")
    assert r.devices == 8 and r.hbm_bytes == 16 * 2**30 and r.fits
    g = aot.grpo_step_memory(cfg, MeshConfig(1, -1, 1), GRPO, 8, accum_steps=2, topology="v5e-8")
    prefill, decode = aot.sampler_memory(cfg, MeshConfig(1, -1, 1), GRPO, 8, "v5e-8")
    assert "kv cache bfloat16" in decode.line()  # a TPU sampler keeps its cache in the compute dtype
    assert all(x.fits and x.temp_bytes > 0 for x in (g, prefill, decode))
