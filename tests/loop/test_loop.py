"""`synpro loop` end to end on tiny presets: two SynPro rounds killed with SIGKILL inside GRPO and inside
synthesis, resumed, and compared with an uninterrupted run (test_loop_baselines.py has the baselines)."""

import json
from pathlib import Path
import signal
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import loop_job  # noqa: E402
from stream_walk import distinct_tokens_by_hand  # noqa: E402

pytestmark = pytest.mark.slow


def run_to_end(gin_file: Path, out: Path, *extra: str, timeout: float = 600) -> str:
    log = out.parent / f"{out.name}.log"
    proc = loop_job.start_loop(gin_file, out, log, *extra)
    rc = proc.wait(timeout=timeout)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-4000:]
    return text


def run_until_killed(gin_file: Path, out: Path, condition, timeout: float = 600) -> None:
    """Start the loop and SIGKILL it as soon as ``condition()`` holds; fail if it finishes first."""
    log = out.parent / f"{out.name}.log"
    proc = loop_job.start_loop(gin_file, out, log)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail(
        f"the loop ended (rc {proc.returncode}) before the kill point:\n{log.read_text(errors='replace')[-3000:]}"
    )


def stages(out: Path) -> dict:
    return {f"r{s['round']}/{s['name']}": s for s in json.loads((out / "loop.json").read_text())["stages"]}


def final_params(out: Path, run: str = "synpro") -> dict:
    import jax

    from synpro_jax import models, sharding
    from synpro_jax.train import params_io

    cfg = models.get_preset("tiny").replace(vocab_size=480, max_seq_len=1024)
    loaded = params_io.load(cfg, sharding.single_device_mesh(), out / run / "r2" / "pretrain")
    return {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(jax.device_get(loaded.params))[0]
    }


def records(directory: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(directory.glob("*.jsonl")) for line in f.read_text().splitlines()]


def organic_stream(workspace: Path, out: Path):
    """The packed organic training stream of the workspace's loop (its tokenized corpus from the run's cache)."""
    from synpro_jax.data.config import DataConfig
    from synpro_jax.data.packing import PackedStream
    from synpro_jax.data.streams import organic_split

    ws = workspace.parent
    cfg = DataConfig(
        corpus="toy",
        organic=(str(ws / "organic.jsonl"),),
        vocabulary=str(ws / "sp.model"),
        validation_docs=8,
        cache_dir=str(out.parent / f"{out.name}_cache"),
    )
    vocab, train, _, _ = organic_split(cfg, progress=False)
    return PackedStream(train, 33, vocab.eos_id, seed=0)


def assert_data_goes_on(workspace: Path, out: Path, got: dict) -> None:
    """Each round's pretraining reads every stream on from the rows the previous round read (a synthetic set
    new in the round from row 0), all the rows of its steps, and loop.json counts the organic rows and distinct
    organic tokens it read as a walk through the organic documents does."""
    organic = organic_stream(workspace, out)
    name, previous = "synpro_toy_organic", None
    for r, steps in enumerate((4, 2, 2)):
        stage = got["r0/pretrain" if r == 0 else f"r{r}/synpro/pretrain"]
        data, outputs = stage["outputs"]["data"], stage["outputs"]
        assert sum(d["rows"] for d in data.values()) == steps * 8  # global batch 8
        for task, d in data.items():
            before = (previous or {}).get(task)
            assert d["start_row"] == (before["end_row"] if before else 0), (r, task)
            assert d["from"] == ("continued" if before else "new"), (r, task)
            assert d["end_row"] == d["start_row"] + d["rows"] and d["tokens"] == d["rows"] * 33
        if previous is not None:
            assert stage["inputs"]["data_start"] == {
                task: {"tokens": d["end_row"] * 33, "stream": d["stream"]} for task, d in previous.items()
            }
        assert set(data) == {name} | {f"synpro_toy_{g}_r{k}" for g in ("rephrase", "reformat") for k in range(1, r + 1)}
        org = data[name]
        assert outputs["organic_rows"] == org["rows"] > 0
        assert (
            outputs["organic_unique_tokens"]
            == org["unique_tokens"]
            == distinct_tokens_by_hand(organic, org["start_row"], org["end_row"])
            <= outputs["organic_tokens"]
            == organic.corpus.num_tokens
        )
        assert org["epochs"] == [
            org["start_row"] * 33 // organic.epoch_tokens,
            (org["end_row"] * 33 - 1) // organic.epoch_tokens,
        ]
        previous = data
    assert got["r1/synpro/pretrain"]["outputs"]["data"][name]["start_row"] == 32  # not row 0 again


def test_killed_in_grpo_and_in_synthesis_the_loop_resumes_to_the_uninterrupted_result(workspace, tmp_path):
    killed = tmp_path / "killed"
    grpo_ckpts = killed / "synpro" / "r1" / "grpo_rephrase" / "checkpoints"
    run_until_killed(
        workspace, killed, lambda: grpo_ckpts.is_dir() and any(p.name.isdigit() for p in grpo_ckpts.iterdir())
    )
    assert stages(killed)["r1/synpro/grpo_rephrase"]["status"] == "running"

    partial = killed / "synpro" / "r1" / "synthesize_rephrase" / "organic.jsonl.partial"
    run_until_killed(workspace, killed, lambda: partial.exists() and partial.read_text().count("\n") >= 2)
    got = stages(killed)
    assert got["r1/synpro/grpo_rephrase"]["status"] == "done" and got["r1/synpro/grpo_rephrase"]["runs"] == 2
    assert got["r1/synpro/synthesize_rephrase"]["status"] == "running"
    text = run_to_end(workspace, killed)
    assert "r0/pretrain: done, skipping" in text and "r1/synpro/synthesize_rephrase: resuming" in text

    clean = tmp_path / "clean"
    run_to_end(workspace, clean)

    # The same manifest: every stage done once with the same inputs and outputs (only the kills' starts differ).
    a, b = stages(killed), stages(clean)
    assert list(a) == list(b) and len(a) == 15
    for key in a:
        assert a[key]["status"] == b[key]["status"] == "done", key
        assert (a[key]["inputs"], a[key]["outputs"]) == (b[key]["inputs"], b[key]["outputs"]), key
        assert b[key]["runs"] == 1 and a[key]["runs"] == (
            2 if key in ("r1/synpro/grpo_rephrase", "r1/synpro/synthesize_rephrase") else 1
        )

    # The same final parameters.
    pa, pb = final_params(killed), final_params(clean)
    assert pa.keys() == pb.keys()
    for name in pa:
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)

    # Every training document synthesized exactly once per round and operation, the same records in both runs.
    training = (killed / "r0" / "training_documents.txt").read_text().split()
    organic = (workspace.parent / "organic.jsonl").read_text().splitlines()
    assert len(training) == 32 and len(organic) == 40  # the 8 validation documents are never synthesized
    for r in (1, 2):
        for op in ("rephrase", "reformat"):
            stage = Path("synpro") / f"r{r}" / f"synthesize_{op}"
            got = records(killed / stage)
            ids = [rec["source_id"] for rec in got]
            assert sorted(ids) == sorted(training) and len(ids) == len(set(ids)), stage
            assert {rec["operation"] for rec in got} == {op} and {rec["round"] for rec in got} == {r}

            def same(recs):
                return sorted(
                    ({k: v for k, v in rec.items() if k != "generator"} for rec in recs),
                    key=lambda rec: rec["source_id"],
                )

            assert same(got) == same(records(clean / stage)), stage  # "generator" is each run's own path

    # The policies: rephrase trained in round 1 only (round 2 reuses it), reformat continued from round 1.
    assert "r2/synpro/grpo_rephrase" not in a
    assert a["r2/synpro/synthesize_rephrase"]["inputs"]["policy"] == "synpro/r1/grpo_rephrase/export"
    assert a["r2/synpro/grpo_reformat"]["inputs"]["policy"] == "synpro/r1/grpo_reformat/export"
    assert a["r2/synpro/grpo_reformat"]["outputs"]["steps"] == 2  # GeneratorSpec.grpo_steps (3, 2)
    # Round 2 trains on the organic data and all four synthetic sets, continuing round 1's step count.
    pre = a["r2/synpro/pretrain"]
    assert [(s["generator"], s["round"]) for s in pre["inputs"]["synthetic"]] == [
        ("rephrase", 1),
        ("reformat", 1),
        ("rephrase", 2),
        ("reformat", 2),
    ]
    assert pre["inputs"]["init_from"] == {"dir": "synpro/r1/pretrain", "step": 6}
    assert pre["outputs"]["train_step"] == 8
    assert_data_goes_on(workspace, killed, a)

    summary = json.loads((killed / "loop_summary.json").read_text())
    assert summary["complete"] and [r["train_step"] for r in summary["runs"]["synpro"]] == [4, 6, 8]
    assert [r["organic_rows"] for r in summary["runs"]["synpro"]] == [
        a[k]["outputs"]["organic_rows"] for k in ("r0/pretrain", "r1/synpro/pretrain", "r2/synpro/pretrain")
    ]
    assert summary["runs"]["synpro"][2]["eval"]["tasks"]["toy"]["items"] == 6
    # The "no collapse" check: each synthesize stage's records with text beside the organic documents they rewrote.
    assert [d["stage"] for d in summary["diversity"]] == [key for key in a if "/synthesize_" in key]
    for d in summary["diversity"]:
        out = a[d["stage"]]["outputs"]
        assert (d["round"], d["generator"]) == (out["round"], out["generator"])
        with_text = out["statuses"].get("ok", 0) + out["statuses"].get("unparsed", 0)
        assert d["synthetic"]["records"] == d["organic"]["records"] == out["diversity"]["sample"]["of"] == with_text > 0
        assert d["organic"]["tokens"] > 0 and d["organic"]["compression_ratio"] is not None
    assert (killed / "loop_summary.png").stat().st_size > 0
    events = list((killed / "tensorboard" / "synpro").glob("events.out.tfevents.*"))
    assert len(events) == 1  # rebuilt on every start: each step is logged once
