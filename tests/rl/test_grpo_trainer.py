"""The GRPO loop: prompts as a pure function of the step, `synpro grpo` end to end (metrics, curves, an HF export
that transformers loads and `synpro synthesize` takes), refusal of a changed run, and SIGKILL-then-resume giving
the parameters of an uninterrupted run."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from grpo_job import MAX_PROMPT_TOKENS, make_workspace
import jax
import numpy as np
import pytest

from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.rl.prompt_set import PromptSet
from synpro_jax.rl.trainer import step_seed

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
JOB = HERE / "grpo_job.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("grpo_ws"))


def synpro(*args, cwd=REPO):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "synpro_jax.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )


# --- prompts --------------------------------------------------------------------------------------------------------


def test_prompts_of_a_step_are_a_pure_function_of_it_and_each_epoch_reads_every_document(workspace):
    vocab = load_vocabulary(str(workspace["vocab"]))
    a = PromptSet([str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS, seed=3)
    b = PromptSet([str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS, seed=3)
    n = len(a)
    assert n == 12
    # a restarted run (a fresh PromptSet, steps asked in another order) reads the same prompts at each step
    assert [a.indices(s, 4) for s in range(6)] == [b.indices(s, 4) for s in reversed(range(6))][::-1]
    epoch0 = [i for s in range(3) for i in a.indices(s, 4)]
    epoch1 = [i for s in range(3, 6) for i in a.indices(s, 4)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n)) and epoch0 != epoch1  # reshuffled each epoch
    c = PromptSet([str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS, seed=4)
    assert [c.indices(s, 4) for s in range(3)] != [a.indices(s, 4) for s in range(3)]
    item = a.batch(0, 1)[0]
    assert item.source in vocab.decode(item.ids) and "rewritten document" in vocab.decode(item.ids)
    assert step_seed(0, 5) == step_seed(0, 5) != step_seed(0, 6)


def test_prompts_skip_short_documents_and_refuse_when_none_is_left(workspace, tmp_path):
    vocab = load_vocabulary(str(workspace["vocab"]))
    lengths = [len(json.loads(line)["text"]) for line in workspace["organic"].read_text().splitlines()]
    cut = sorted(lengths)[5]
    ps = PromptSet(
        [str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS, min_source_chars=cut
    )
    assert len(ps) == sum(n >= cut for n in lengths) and ps.skipped["short"] == sum(n < cut for n in lengths)
    with pytest.raises(ValueError, match="no usable document.*too_long"):
        PromptSet([str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=8)


# --- one step ---------------------------------------------------------------------------------------------------


def test_one_step_is_the_scored_rollout_then_one_learner_update_and_the_sampler_gets_the_new_weights(
    workspace, tmp_path
):
    from grpo_job import LetterShare

    from synpro_jax import sharding
    from synpro_jax.generation.sampler import Sampler
    from synpro_jax.models import hf
    from synpro_jax.rl.config import GRPOConfig
    from synpro_jax.rl.rewards.base import RewardSuite
    from synpro_jax.rl.trainer import GRPORunConfig, GRPOTrainer

    cfg, params = hf.load(workspace["generator"])
    vocab = load_vocabulary(str(workspace["vocab"]))
    g = 4
    algo = GRPOConfig(
        num_generations=g,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_completion_tokens=16,
        learning_rate=1e-4,
        warmup_ratio=0.0,
    )
    prompt_set = PromptSet([str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS)
    suite = RewardSuite({"letter_e": LetterShare()}, {"letter_e": 2.0})
    run = GRPORunConfig(out_dir=str(tmp_path), num_steps=4, prompts_per_step=2, progress=False)
    trainer = GRPOTrainer(cfg, sharding.make_mesh(sharding.MeshConfig()), params, vocab, prompt_set, suite, run, algo)
    with pytest.raises(ValueError, match="prompts_per_step=3 x GRPOConfig.num_generations=4 = 12 completions"):
        GRPOTrainer(
            cfg,
            sharding.make_mesh(sharding.MeshConfig()),
            params,
            vocab,
            prompt_set,
            suite,
            GRPORunConfig(out_dir=str(tmp_path), num_steps=4, prompts_per_step=3),
            algo,
        )
    with pytest.raises(ValueError, match="GRPORunConfig.logits_chunk=5 must divide GRPOConfig.max_completion_tok"):
        GRPOTrainer(
            cfg,
            sharding.make_mesh(sharding.MeshConfig()),
            params,
            vocab,
            prompt_set,
            suite,
            GRPORunConfig(out_dir=str(tmp_path), num_steps=4, prompts_per_step=2, logits_chunk=5),
            algo,
        )

    # By hand: the step's rollout, its texts, rewards and group advantages in NumPy, one GRPOStep update.
    items, rollout = trainer.rollouts(1)
    texts, lengths, finished = trainer.completion_texts(rollout)
    r = 2.0 * LetterShare()(type("Inputs", (), {"completions": texts})()).astype(np.float64).reshape(-1, g)
    adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)
    assert np.abs(adv).max() > 0
    batch = {
        "tokens": rollout.tokens,
        "positions": rollout.positions,
        "segment_ids": rollout.segment_ids,
        "completion_mask": rollout.completion_mask,
        "advantages": adv.astype(np.float32),
    }
    batch = trainer.step_fn.place(batch)
    batch["ref_logp"] = trainer.step_fn.logprobs(trainer.step_fn.copy_params(params), batch)
    expected, _ = trainer.step_fn(trainer.step_fn.init(jax.random.key(0), params), batch)

    state, record = trainer.train_step(trainer.step_fn.init(jax.random.key(0), params), 1)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert record["step"] == 2 and record["reward/letter_e_mean"] == pytest.approx(r.mean() / 2.0, abs=1e-6)
    assert record["reward/total_mean"] == pytest.approx(r.mean(), abs=1e-6)
    assert record["completion_length"] == lengths.mean() and record["truncated_share"] == 1 - finished.mean()
    assert np.abs(np.asarray(jax.tree.leaves(state.params)[0]) - np.asarray(jax.tree.leaves(params)[0])).max() > 0

    # The sampler now samples from the updated weights (greedy completions equal a fresh sampler's).
    prompts = [it.ids for it in items]
    fresh = Sampler(cfg, jax.device_get(state.params), mesh=trainer.mesh)
    kw = dict(max_new_tokens=8, temperature=0.0, eos_id=trainer.stop_ids)
    np.testing.assert_array_equal(trainer.sampler.generate(prompts, **kw).tokens, fresh.generate(prompts, **kw).tokens)


# --- synpro grpo end to end -----------------------------------------------------------------------------------------


def grpo_gin(workspace, out_dir: Path, weights: str = '{"format": 1.0, "length": 1.0}') -> str:
    return f"""
include 'gin/runs/grpo.gin'
GENERATOR = "{workspace["generator"]}"
PROMPTS = ["{workspace["organic"]}"]
OUT_DIR = "{out_dir}"
THETA = None
THETA_PRIME = None
PROMPTS_PER_STEP = 2
NUM_STEPS = 2
synpro.grpo.dtype = None
synpro.RewardsConfig.operation = "rephrase"
synpro.RewardsConfig.weights = {weights}
synpro.GRPORunConfig.accum_steps = 1
synpro.GRPORunConfig.progress = False
synpro.GRPOConfig.num_generations = 4
synpro.GRPOConfig.max_prompt_tokens = {MAX_PROMPT_TOKENS}
synpro.GRPOConfig.max_completion_tokens = 16
synpro.grpo.warm_start = @synpro.WarmStartConfig()
synpro.WarmStartConfig.documents = ["{workspace["organic"]}"]
synpro.WarmStartConfig.min_source_chars = 0
synpro.WarmStartConfig.steps = 2
synpro.WarmStartConfig.batch = 8
synpro.WarmStartConfig.answer_tokens = 8
"""


@pytest.fixture(scope="module")
def cli_run(workspace, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo_cli")
    out = root / "run"
    (root / "run.gin").write_text(grpo_gin(workspace, out))
    result = synpro("grpo", f"--gin_file={root / 'run.gin'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out, result


@pytest.mark.slow
def test_synpro_grpo_writes_every_metric_the_curves_and_a_summary(cli_run):
    _, out, result = cli_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in (
        "reward/format_mean",
        "reward/format_std",
        "reward/length_mean",
        "reward/length_std",
        "reward/total_mean",
        "reward/total_std",
        "reward_failures/format",
        "kl",
        "clip_fraction",
        "completion_length",
        "truncated_share",
        "rollout_tokens_per_s",
        "update_tokens_per_s",
        "time/rollout_s",
        "time/rewards_s",
        "time/reference_s",
        "time/update_s",
        "learning_rate",
    ):
        assert all(key in r and np.isfinite(r[key]) for r in records), key
    assert all(r["completion_length"] <= 16 and 0 <= r["truncated_share"] <= 1 for r in records)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "reward_curves.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and not summary["preempted"] and '"steps": 2' in result.stdout
    assert (out / "config.gin").exists()
    # The warm start ran first, in out/warm_start, and GRPO started from it (its weights are in the fingerprint).
    warm = json.loads((out / "warm_start" / "warm_start.json").read_text())
    assert warm["steps"] == 2 and warm["rows"] == 12 and 0 <= warm["after"]["format_rate"] <= 1
    assert "warm start: 2 supervised steps on 12 rows" in result.stdout
    info = json.loads((out / "export" / "synpro_grpo.json").read_text())
    assert info["fingerprint"]["warm_start"]["config"]["steps"] == 2


@pytest.mark.slow
def test_the_export_is_the_trained_generator_transformers_loads_it_and_synthesize_takes_it(cli_run, workspace):
    import torch
    import transformers

    from synpro_jax import models, sharding
    from synpro_jax.models import hf
    from synpro_jax.train.checkpoint import read_params
    from synpro_jax.train.params_io import abstract_target

    root, out, _ = cli_run
    export = out / "export"
    cfg, exported = hf.load(export)
    trained = read_params(out, abstract_target(cfg, sharding.single_device_mesh()))
    assert trained.step == 2
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(exported)[0], jax.tree.leaves(trained.params)):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=jax.tree_util.keystr(path))
    assert json.loads((export / "synpro_grpo.json").read_text())["step"] == 2

    model = transformers.AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(models.forward(cfg, exported, tokens))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)

    synth = root / "synth"
    result = synpro(
        "synthesize",
        "--gin_file=gin/runs/synthesize.gin",
        f"--gin.GENERATOR='{export}'",
        f"--gin.SHARDS=['{workspace['organic']}']",
        f"--gin.SYNTH_OUT='{synth}'",
        "--gin.OPERATION='rephrase'",
        f"--gin.synpro.SynthesisConfig.max_prompt_tokens={MAX_PROMPT_TOKENS}",
        "--gin.synpro.SynthesisConfig.max_new_tokens=8",
        "--gin.synpro.SynthesisConfig.keep_unparsed=True",
        "--gin.synpro.synthesize.progress=False",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (synth / "organic.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["generator"] == str(export) for r in records)


@pytest.mark.slow
def test_a_rerun_with_another_reward_weight_is_refused_naming_it(cli_run, workspace):
    root, out, _ = cli_run
    (root / "changed.gin").write_text(grpo_gin(workspace, out, '{"format": 1.0, "length": 2.0}'))
    config = (out / "config.gin").read_text()
    result = synpro("grpo", f"--gin_file={root / 'changed.gin'}")
    assert result.returncode == 2
    assert "rewards.weights.length: 1.0 then, 2.0 now" in result.stderr
    assert (out / "config.gin").read_text() == config  # still describes the checkpoints


# --- kill and resume ------------------------------------------------------------------------------------------------

STEPS = 8


def start(workspace_root: Path, out_dir: Path) -> subprocess.Popen:
    # One persistent compilation cache for the three runs: the same executables, compiled once.
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(workspace_root / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return subprocess.Popen(
        [sys.executable, str(JOB), str(workspace_root), str(out_dir), str(STEPS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def logged_steps(out_dir: Path) -> int:
    path = out_dir / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    for line in reversed(lines):  # the last line may be half-written
        try:
            return json.loads(line)["step"]
        except ValueError:
            continue
    return 0


def records(out_dir: Path) -> list[dict]:
    rs = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and not k.endswith("tokens_per_s")} for r in rs]


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_parameters(workspace, tmp_path):
    ws = workspace["generator"].parent
    straight = tmp_path / "straight"
    proc = start(ws, straight)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    kill_at = int(np.random.default_rng(int(time.time())).integers(3, STEPS - 1))  # checkpoints every 2 steps
    killed = tmp_path / "killed"
    proc = start(ws, killed)
    deadline = time.time() + 600
    while logged_steps(killed) < kill_at:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert logged_steps(killed) < STEPS
    committed = max(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    proc = start(ws, killed)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"GRPO: resuming from step {committed}" in out and committed >= 2  # it did resume, mid-run

    a, b = records(straight), records(killed)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))  # every step logged exactly once
    assert a == b  # rewards, losses, KL: exact
    assert any(r["grad_norm"] > 0 for r in a)  # the run did learn something to compare
    pa, pb = np.load(straight / "final_params.npz"), np.load(killed / "final_params.npz")
    for key in pa.files:
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)


# --- gin ------------------------------------------------------------------------------------------------------------

FILLED = [
    "GENERATOR='g'",
    "PROMPTS=['p']",
    "OUT_DIR='o'",
    "THETA='t'",
    "THETA_PRIME='tp'",
    "PROMPTS_PER_STEP=4",
    "QUALITY_DATA='q'",
]


@pytest.mark.parametrize(
    "run_file, steps, families",
    [
        (
            "gin/runs/grpo_rephrase.gin",
            300,
            {"data_influence", "quality", "similarity", "structure", "length", "format"},
        ),
        ("gin/runs/grpo_reformat.gin", 240, {"data_influence", "faithfulness", "quality", "format"}),
    ],
)
def test_the_release_run_files_hold_its_settings_and_require_their_macros(
    run_file, steps, families, tmp_path, monkeypatch
):
    import gin

    from synpro_jax import configs

    monkeypatch.chdir(tmp_path)  # found beside the package, from anywhere
    try:
        configs.parse([run_file], FILLED)
        run, algo = gin.get_bindings("synpro.GRPORunConfig"), gin.get_bindings("synpro.GRPOConfig")
        assert run["num_steps"] == steps and run["accum_steps"] == 4
        assert (algo["num_generations"], algo["beta"], algo["learning_rate"], algo["top_p"]) == (8, 0.005, 1e-6, 0.9)
        weights = gin.get_bindings("synpro.RewardsConfig")["weights"]
        assert set(weights) == families and weights["data_influence"] == 3.0
        gin.clear_config()
        with pytest.raises(configs.GinConfigError, match=r"\['THETA'\] are REQUIRED"):
            configs.parse([run_file], [b for b in FILLED if not b.startswith("THETA=")])
    finally:
        gin.clear_config()
