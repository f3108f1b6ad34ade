"""`synpro demo --quick` end to end as a user runs it: a real process, SIGKILLed once in the middle of the
experiment, rerun to the end; its table has every arm, and a rerun of the finished demo reports the same table
without redoing any work.

``demo_quick_seed0.json`` is the report of an uninterrupted ``synpro demo --quick`` (seed 0, one CPU device) made
when the evaluation wording was reserved and the oracle ladder added (issue 25): the killed and resumed demo must
give it to the last digit. Regenerate it only for a change meant to move the numbers, and say so in the commit."""

import json
import math
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def start(out: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's laptop
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "synpro_jax.cli", "demo", "--quick", "--out", str(out)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=out.parent,
        )


def done_stages(out: Path) -> list[str]:
    path = out / "loop" / "loop.json"
    if not path.exists():
        return []
    try:
        stages = json.loads(path.read_text())["stages"]
    except ValueError:
        return []
    return [f"r{s['round']}/{s['name']}" for s in stages if s["status"] == "done"]


def test_quick_demo_killed_and_rerun_reports_every_arm(tmp_path):
    out, log = tmp_path / "demo", tmp_path / "demo.log"
    proc = start(out, log)
    deadline = time.monotonic() + 600
    first_step = out / "loop" / "synpro" / "r1" / "grpo_reformat" / "checkpoints" / "1"
    while proc.poll() is None and time.monotonic() < deadline:
        if first_step.exists():  # killed while GRPO trains the second generator, after its first step
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    assert not (out / "demo.json").exists()
    assert "r1/synpro/grpo_rephrase" in done_stages(out) and "r1/synpro/grpo_reformat" not in done_stages(out)
    proc = start(out, log)
    assert proc.wait(timeout=600) == 0, log.read_text(errors="replace")[-4000:]
    text = log.read_text(errors="replace")
    assert "r1/synpro/grpo_rephrase: done, skipping" in text and "r1/synpro/grpo_reformat: resuming" in text

    report = json.loads((out / "demo.json").read_text())
    golden = json.loads((Path(__file__).parent / "demo_quick_seed0.json").read_text())
    assert {k: v for k, v in report.items() if k != "out_dir"} == golden  # bit-identical, killed or not
    arms = {a["arm"]: a for a in report["arms"]}
    assert list(arms)[:3] == ["round 0", "synpro", "repetition"] and len(arms) == 7
    oracles = [a for name, a in arms.items() if name.startswith("oracle")]
    assert [a["biographies_per_person"] for a in oracles] == [1.5, 2, 4, 6]  # quick: the shortest ladder
    assert list(arms)[3] == "oracle x1.5"
    unique = [a["unique_organic_tokens"] for a in oracles]
    assert arms["synpro"]["unique_organic_tokens"] == arms["repetition"]["unique_organic_tokens"] < unique[0]
    assert unique == sorted(unique) and all(a["unique_read"]["complete"] for a in oracles)  # D is what each read
    assert len({a["tokens"] for name, a in arms.items() if name != "round 0"}) == 1  # the same compute
    assert all(0 <= a["qa_last"] <= 1 and 0 <= a["qa_best"] <= 1 for a in arms.values())
    # The report scores QA itself (per item, for the intervals): it agrees with the loop's own evaluation.
    loop = json.loads((out / "loop" / "loop_summary.json").read_text())
    assert arms["synpro"]["qa_last"] == pytest.approx(loop["runs"]["synpro"][-1]["eval"]["tasks"]["qa"]["acc"])
    assert oracles[-1]["test_loss_last"] < arms["repetition"]["test_loss_last"]  # unique data teaches more
    # The fit has 4 oracle points and repetition: 2 degrees of freedom, residuals reported (the default demo: 5
    # oracle runs, 3 degrees of freedom).
    fit = report["readings"]["test_loss_last"]
    assert len(fit["ladder"]) == 5 and fit["dof"] == 2 and len(fit["fit"]["residuals"]) == 5
    assert set(report["readings"]) == {f"{r}_{p}" for r in ("test_loss", "fact_loss", "qa") for p in ("last", "best")}
    # the readable readings first, the most conservative (SynPro's smallest multiplier over repetition) leading
    readable = [n for n, r in report["readings"].items() if not r["problems"]]
    assert list(report["readings"])[: len(readable)] == readable
    values = [arms["synpro"]["readings"][n]["multiplier"]["repetition"]["value"] for n in readable]
    values = [math.inf if v is None else v for v in values]
    assert values == sorted(values) and report["conservative"] == (readable[0] if readable else None)
    m = arms["repetition"]["readings"]["test_loss_last"]["multiplier"]
    assert m["repetition"]["value"] == pytest.approx(1.0) and "round 0" in m
    # No test, validation or QA sentence is in any arm's or generator's training text, synthetic streams included.
    hygiene = report["test_hygiene"]
    assert [hygiene[k]["verbatim"] for k in ("test", "validation", "qa")] == [0, 0, 0]
    assert hygiene["test"]["sentences"] == 60 * 6
    assert {(d["generator"], d["synthetic"]["records"] > 0) for d in report["diversity"]} == {
        ("rephrase", True),
        ("reformat", True),
    }
    for op in ("rephrase", "reformat"):
        g = report["generators"][op]
        assert [r["step"] for r in g["rewards"]] == [1, 2] and {"total", "format"} <= set(g["rewards"][0])
        assert g["before_grpo"] is not None and g["after_grpo"]["records"] == 60  # every organic biography once
        assert g["after_grpo"]["generator_step"] == 2  # the GRPO step the synthesizing policy was exported at
    assert (out / "demo.png").stat().st_size > 10_000

    # A finished demo reruns nothing and reports the same table.
    first = (out / "demo.json").read_text()
    proc = start(out, log)
    assert proc.wait(timeout=300) == 0
    assert (out / "demo.json").read_text() == first
    last = log.read_text(errors="replace").split("[demo 1/4 |")[-1]
    assert last.count("done, skipping") == 19 and "starting" not in last  # 19 stages
