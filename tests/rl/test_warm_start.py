"""The GRPO warm start (rl/warm_start.py) and the run that learns nothing (GRPORunConfig.stall_*): the rows and
their loss mask built independently, the shared supervised loop resuming exactly, and a GRPO run whose groups
never differ warning and then stopping with its cause."""

import logging
from pathlib import Path

from grpo_job import MAX_PROMPT_TOKENS, make_workspace
import jax
import numpy as np
import pytest

from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.generation import prompts as P
from synpro_jax.rl.warm_start import WarmStartConfig, answer_text, warm_start_batch, warm_start_rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("warm_ws"))


SOURCE = (
    "Rivers carve valleys over long times. Stones roll in the water and grind the bed. The valley grows "
    "wider each year. Nobody sees it happen."
)


def test_the_answer_is_the_heading_then_the_documents_first_sentences_in_the_operations_layout():
    rephrase = answer_text(SOURCE, "rephrase", 90)
    parsed = P.parse_answer(rephrase, "rephrase")
    assert parsed.headings == 1
    assert parsed.text == "Rivers carve valleys over long times. Stones roll in the water and grind the bed."
    reformat = answer_text(SOURCE, "reformat", 90)
    parsed = P.parse_answer(reformat, "reformat")
    assert parsed.headings == 1
    entries = P.parse_entries(parsed.text)
    assert [e.content for e in entries] == [
        "Rivers carve valleys over long times.",
        "Stones roll in the water and grind the bed.",
    ]
    assert entries[0].topic == "Rivers carve valleys over"


def test_rows_are_grpo_prompts_and_the_loss_falls_on_the_answer_and_its_eos_only(workspace):
    vocab = load_vocabulary(str(workspace["vocab"]))
    cfg = WarmStartConfig(documents=[str(workspace["organic"])], answer_chars=60, answer_tokens=12, min_source_chars=0)
    rows = warm_start_rows(cfg, vocab, "rephrase", MAX_PROMPT_TOKENS, 7000)
    from synpro_jax.rl.prompt_set import PromptSet

    ps = PromptSet([str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS)
    assert [r[0] for r in rows] == [it.ids for it in ps.items]  # exactly the prompts GRPO would build
    assert all(r[1][-1] == vocab.eos_id and len(r[1]) <= 13 for r in rows)
    length = max(len(p) + len(a) for p, a in rows) + 3
    batch = warm_start_batch(rows, [2, 0], length, pad_id=0)
    for r, i in enumerate([2, 0]):
        prompt, answer = rows[i]
        row = np.array(prompt + answer)
        # target t is token t+1: the answer's tokens are the targets at positions len(prompt)-1 .. len(row)-2
        want = np.zeros(length - 1)
        want[len(prompt) - 1 : len(row) - 1] = 1
        np.testing.assert_array_equal(batch["loss_mask"][r], want)
        np.testing.assert_array_equal(batch["targets"][r][want == 1], answer)
        np.testing.assert_array_equal(batch["inputs"][r][: len(row) - 1], row[:-1])
        assert batch["segment_ids"][r].sum() == len(row) and batch["segment_ids"][r][len(row) :].sum() == 0
    with pytest.raises(ValueError, match="WarmStartConfig.documents"):
        WarmStartConfig(documents="one.jsonl")
    with pytest.raises(ValueError, match="WarmStartConfig.steps=0"):
        WarmStartConfig(documents=["a"], steps=0)


@pytest.mark.slow  # two supervised runs, one killed and resumed
def test_the_supervised_loop_killed_after_its_checkpoint_resumes_to_the_uninterrupted_parameters(workspace, tmp_path):
    from synpro_jax import sharding
    from synpro_jax.models import hf
    from synpro_jax.train.optimizer import OptimizerConfig
    from synpro_jax.train.supervised import train_supervised

    cfg, params = hf.load(workspace["generator"])
    mesh = sharding.make_mesh(sharding.MeshConfig())
    rng = np.random.default_rng(0)
    rows = [(list(rng.integers(3, 400, 10)), list(rng.integers(3, 400, 6))) for _ in range(16)]

    def batch(step):
        idx = np.random.default_rng([0, step]).choice(len(rows), 8, replace=False)
        return warm_start_batch(rows, idx, 17)

    opt = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, weight_decay=0.0)
    straight = train_supervised(
        cfg,
        mesh,
        opt,
        batch,
        4,
        tmp_path / "a",
        {"x": 1},
        params=params,
        checkpoint_every=2,
        log_every=1,
        progress=False,
    )
    recs = straight.records
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["loss"] < recs[0]["loss"]
    assert straight.step == 4 and not straight.preempted
    train_supervised(
        cfg, mesh, opt, batch, 2, tmp_path / "b", {"x": 1}, params=params, checkpoint_every=2, progress=False
    )  # "killed" after step 2's checkpoint
    resumed = train_supervised(
        cfg,
        mesh,
        opt,
        batch,
        4,
        tmp_path / "b",
        {"x": 1},
        params=params,
        checkpoint_every=2,
        log_every=1,
        progress=False,
    )
    assert [r["step"] for r in resumed.records] == [2, 3, 4]  # step 2 as the first call logged it, then 3 and 4
    assert resumed.start == 2
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match=r"made with other settings \(x: 1 then, 2 now\)"):
        train_supervised(cfg, mesh, opt, batch, 4, tmp_path / "b", {"x": 2}, params=params, progress=False)


def test_a_run_whose_groups_never_differ_warns_then_stops_naming_the_cause(workspace, tmp_path, caplog):
    from synpro_jax import sharding
    from synpro_jax.models import hf
    from synpro_jax.rl.config import GRPOConfig
    from synpro_jax.rl.prompt_set import PromptSet
    from synpro_jax.rl.rewards.base import RewardSuite, make_reward
    from synpro_jax.rl.trainer import GRPORunConfig, GRPOStalled, GRPOTrainer

    cfg, params = hf.load(workspace["generator"])
    vocab = load_vocabulary(str(workspace["vocab"]))
    algo = GRPOConfig(num_generations=4, max_prompt_tokens=MAX_PROMPT_TOKENS, max_completion_tokens=8)
    ps = PromptSet([str(workspace["organic"])], vocab, "rephrase", max_prompt_tokens=MAX_PROMPT_TOKENS)
    # A random tiny LM never writes the heading: format is 0 and length 1 for every completion.
    suite = RewardSuite(
        {"format": make_reward("format"), "length": make_reward("length")}, {"format": 1.0, "length": 1.0}
    )
    run = GRPORunConfig(
        out_dir=str(tmp_path / "run"),
        num_steps=5,
        prompts_per_step=2,
        progress=False,
        stall_warn_steps=1,
        stall_stop_steps=2,
        checkpoint_every=1,
    )
    trainer = GRPOTrainer(cfg, sharding.make_mesh(sharding.MeshConfig()), params, vocab, ps, suite, run, algo)
    with caplog.at_level(logging.WARNING, logger="synpro_jax.rl.trainer"):
        with pytest.raises(GRPOStalled) as err:
            trainer.run()
    assert "GRPO learns nothing" in caplog.text and "steps 1-1" in caplog.text
    msg = str(err.value)
    assert "stopped at step 2" in msg and "zero spread for 2 steps in a row (steps 1-2" in msg
    assert "stall_stop_steps=2" in msg and "format=0.000" in msg and "length=1.000" in msg
    assert "never writes the answer heading" in msg and "warm_start" in msg
    assert "max_completion_tokens" in msg  # every completion used its 8 tokens
    assert Path(tmp_path / "run" / "checkpoints" / "1").is_dir()  # what it had is kept
    with pytest.raises(ValueError, match="stall_stop_steps=1: must be an int >= stall_warn_steps=3"):
        GRPORunConfig(out_dir="o", num_steps=1, prompts_per_step=1, stall_stop_steps=1)


def test_warm_start_documents_that_give_no_row_are_named_as_such(workspace):
    vocab = load_vocabulary(str(workspace["vocab"]))
    cfg = WarmStartConfig(documents=[str(workspace["organic"])], min_source_chars=10**6)
    with pytest.raises(ValueError, match=r"WarmStartConfig.documents \[.*organic.jsonl'\]: no usable document"):
        warm_start_rows(cfg, vocab, "rephrase", MAX_PROMPT_TOKENS, 7000)
