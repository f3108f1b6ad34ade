"""`synpro loop` baselines on tiny presets: repetition and oracle runs continue from the shared round 0 at the
same compute, the effective-token fit uses them, and a rerun with a changed input is refused by the manifest."""

import json
from pathlib import Path
import sys

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import loop_job  # noqa: E402
from test_loop import run_to_end, stages  # noqa: E402

pytestmark = pytest.mark.slow


def test_baselines_and_effective_tokens_and_a_changed_input_is_refused(workspace, tmp_path):
    """Repetition and two oracle budgets continue from the shared round 0 at the same steps; with repetition
    they are the 3 oracle points of the effective-token fit. A rerun with other round steps is refused."""
    out = tmp_path / "baselines"
    settings = [
        "--gin.ROUNDS=1",
        "--gin.ROUND_STEPS=[4, 4]",
        "--gin.METHODS=['repetition', 'oracle']",
        "--gin.ORACLE_BUDGETS=[600, 880]",
        "--gin.GENERATORS=[]",
        "--gin.synpro.DataConfig.organic_budget_tokens=300",
    ]
    run_to_end(workspace, out, *settings)
    got = stages(out)
    assert list(got) == [
        "r0/pretrain",
        "r0/eval",
        "r1/repetition/pretrain",
        "r1/repetition/eval",
        "r1/oracle_600/pretrain",
        "r1/oracle_600/eval",
        "r1/oracle_880/pretrain",
        "r1/oracle_880/eval",
    ]
    unique = {
        run: got[f"r1/{run}/pretrain"]["outputs"]["organic_tokens"]
        for run in ("repetition", "oracle_600", "oracle_880")
    }
    assert unique == {"repetition": 300, "oracle_600": 600, "oracle_880": 880}
    assert {got[f"r1/{run}/pretrain"]["outputs"]["train_step"] for run in unique} == {8}  # the same compute
    assert got["r0/pretrain"]["outputs"]["organic_tokens"] == 300
    # The data goes on: repetition reads the organic rows after round 0's 4 x 8 (its epoch counter goes on), an
    # oracle's larger organic set is another stream, read from row 0. Each stage reads 4 x 8 rows of 33 tokens,
    # a whole epoch of every organic set here, so it reads each of its budget's tokens.
    r0 = got["r0/pretrain"]["outputs"]
    rep = got["r1/repetition/pretrain"]
    assert (r0["organic_rows"], r0["organic_unique_tokens"]) == (32, 300)
    org = rep["outputs"]["data"]["synpro_toy_organic"]
    assert rep["inputs"]["data_start"]["synpro_toy_organic"]["tokens"] == 32 * 33
    assert (org["start_row"], org["rows"], org["from"]) == (32, 32, "continued")
    epoch = org["epoch_tokens"]
    assert 300 < epoch and 32 * 33 >= 3 * epoch  # 300 tokens and an EOS per document: round 0 read 3+ epochs
    logged = [
        json.loads(line) for line in (out / "repetition" / "r1" / "pretrain" / "metrics.jsonl").read_text().splitlines()
    ]
    last = [r for r in logged if "epoch" in r][-1]  # step 4 reads organic rows 56..63, round 0 read rows 0..31
    assert last["step"] == 4 and last["epoch"] == (32 + 32 - 1) * 33 // epoch > (32 - 1) * 33 // epoch >= 3
    for run, budget in unique.items():
        outputs = got[f"r1/{run}/pretrain"]["outputs"]
        d = outputs["data"]["synpro_toy_organic"]
        assert d["epoch_tokens"] <= 32 * 33  # a whole epoch inside the stage's rows
        assert (outputs["organic_rows"], outputs["organic_unique_tokens"]) == (32, budget)
        assert (d["start_row"], d["from"]) == ((32, "continued") if run == "repetition" else (0, "changed"))
    summary = json.loads((out / "loop_summary.json").read_text())
    effective = summary["effective_tokens"]
    # 3 ladder points: the curve passes through them, which is an interpolation, never called a fit
    assert effective["status"] == "interpolated" and effective["fit"]["oracle_tokens"] == [300, 600, 880]
    assert effective["ladder"] == {"repetition": 300, "oracle_600": 600, "oracle_880": 880}  # D as read
    rep = effective["arms"]["repetition"]["multiplier"]["repetition"]
    assert rep["value"] == pytest.approx(1.0)
    assert set(effective["arms"]["oracle_600"]["multiplier"]) == {"repetition", "round 0"}
    assert set(summary["runs"]) == {"repetition", "oracle_600", "oracle_880"}
    assert sorted((out / "tensorboard").iterdir()) == [out / "tensorboard" / r for r in sorted(summary["runs"])]

    changed = loop_job.start_loop(
        workspace, out, tmp_path / "changed.log", *settings[:1], "--gin.ROUND_STEPS=[4, 5]", *settings[2:]
    )
    assert changed.wait(timeout=300) == 2
    text = (tmp_path / "changed.log").read_text()
    assert "stage r1/repetition/pretrain was recorded with other inputs: steps: 4 then, 5 now" in text
