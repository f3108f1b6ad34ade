"""loop.json: done stages are skipped, an interrupted stage runs again, changed inputs or config are refused
naming the difference, and the file is only ever replaced whole."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from synpro_jax.loop.manifest import Manifest, ManifestError, fingerprint, first_difference


def test_a_done_stage_is_skipped_and_returns_its_recorded_outputs(tmp_path):
    calls = []

    def stage():
        calls.append(1)
        return {"checkpoint": str(tmp_path / "ckpt"), "steps": 10}

    m = Manifest(tmp_path, {"seed": 0}, is_writer=True)
    out = m.run(1, "pretrain", {"steps": 10, "data": ["a", "b"]}, stage)
    assert out == {"checkpoint": str(tmp_path / "ckpt"), "steps": 10} and calls == [1]
    again = Manifest(tmp_path, {"seed": 0}, is_writer=True)  # a restart reads the file
    assert again.run(1, "pretrain", {"data": ["a", "b"], "steps": 10}, stage) == out and calls == [1]
    record = again.record(1, "pretrain")
    assert record.status == "done" and record.runs == 1 and record.finished >= record.started
    # Outputs that no longer check out make the stage run again.
    assert again.run(1, "pretrain", {"steps": 10, "data": ["a", "b"]}, stage, outputs_ok=lambda o: False) == out
    assert calls == [1, 1] and again.record(1, "pretrain").runs == 2
    assert [s["stage"] for s in again.summary()] == ["r1/pretrain"]


def test_an_interrupted_stage_runs_again_with_the_same_inputs(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.getcwd())!r})
        from synpro_jax.loop.manifest import Manifest
        m = Manifest({str(tmp_path)!r}, {{"seed": 0}}, is_writer=True)
        m.run(0, "probe", {{"k": 1}}, lambda: {{"ok": True}})
        def killed():
            os.kill(os.getpid(), signal.SIGKILL)
        m.run(0, "grpo_rephrase", {{"k": 2}}, killed)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == -signal.SIGKILL
    raw = json.loads((tmp_path / "loop.json").read_text())  # whole and parseable after the kill
    assert [(s["name"], s["status"]) for s in raw["stages"]] == [("probe", "done"), ("grpo_rephrase", "running")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".loop.json.")]  # no temp file left behind
    m = Manifest(tmp_path, {"seed": 0}, is_writer=True)
    ran = []
    assert m.run(0, "probe", {"k": 1}, lambda: ran.append("probe")) == {"ok": True}
    assert m.run(0, "grpo_rephrase", {"k": 2}, lambda: ran.append("grpo") or {"policy": "p"}) == {"policy": "p"}
    assert ran == ["grpo"] and m.record(0, "grpo_rephrase").runs == 2


def test_changed_inputs_or_config_are_refused_naming_the_difference(tmp_path):
    m = Manifest(tmp_path, {"model": "tiny", "rounds": 2}, is_writer=True)
    m.run(1, "synthesize_rephrase", {"generator": "g1", "shards": ["s0", "s1"]}, lambda: {"files": 2})
    with pytest.raises(
        ManifestError,
        match=r"stage r1/synthesize_rephrase was recorded with other inputs: "
        r'shards\[1\]: "s1" then, "s2" now',
    ):
        m.run(1, "synthesize_rephrase", {"generator": "g1", "shards": ["s0", "s2"]}, lambda: {})
    with pytest.raises(ManifestError, match=r"another configuration: rounds: 2 then, 3 now"):
        Manifest(tmp_path, {"model": "tiny", "rounds": 3}, is_writer=True)
    (tmp_path / "loop.json").write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        Manifest(tmp_path, {}, is_writer=True)


def test_a_manifest_opens_as_it_is_for_inspection(tmp_path):
    Manifest(tmp_path, {"model": "tiny"}, is_writer=True).run(0, "eval", {"k": 1}, lambda: {"acc": 0.25})
    seen = Manifest(tmp_path, None, is_writer=False)
    assert seen.config == {"model": "tiny"} and seen.record(0, "eval").outputs == {"acc": 0.25}


def test_only_the_writer_process_writes(tmp_path):
    reader = Manifest(tmp_path / "run", {"a": 1}, is_writer=False)
    reader.run(0, "eval", {}, lambda: {"acc": 0.5})
    assert not (tmp_path / "run" / "loop.json").exists()


def test_fingerprints_and_differences_are_canonical():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert first_difference({"a": {"b": 1}}, {"a": {"b": 1}}) is None
    assert first_difference({"a": {"b": 1}}, {"a": {"c": 1}}) == "a.b: 1 then, absent now"
    assert first_difference([1, 2], [1, 2, 3]) == "value: [1, 2] then, [1, 2, 3] now"
