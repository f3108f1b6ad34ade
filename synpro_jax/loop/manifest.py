"""``loop.json``: the manifest of a SynPro run's rounds and stages, and the rule that makes the loop resumable.

Each stage of each round (pretrain, probe, grpo_<generator>, synthesize_<operation>, eval, ...) is recorded with
its inputs, their fingerprint, its outputs and its status:

- a stage recorded ``done`` with the same input fingerprint, whose outputs still check out, is skipped: its
  recorded outputs are returned without running it;
- a stage recorded ``running`` (the loop was killed inside it) runs again with the same inputs: every stage is
  itself resumable (checkpoints, shard manifests), so it continues where it stopped;
- a stage recorded with *different* inputs is refused, naming the first input that differs, so a changed config
  never silently mixes two runs in one directory (start a new run directory, or delete the stage's outputs and
  its manifest entry on purpose).

The manifest is rewritten atomically (temp file, then rename) after every change, and only by process 0; other
processes read it. Stages run in a fixed order, so a restart re-derives every stage's inputs from the config and
the earlier stages' recorded outputs and lands on the first stage that is not done.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

from etils.epath import Path
import jax

from synpro_jax import atomic
from synpro_jax.errors import ConfigError
from synpro_jax.resume_guard import describe_one, differences

log = logging.getLogger(__name__)

__all__ = ["Manifest", "StageRecord", "ManifestError", "fingerprint", "first_difference"]

VERSION = 1
DONE, RUNNING = "done", "running"


class ManifestError(ConfigError):
    """A manifest that does not match this run's configuration, or one that cannot be read."""


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def fingerprint(inputs: dict) -> str:
    """sha256 of the inputs' canonical JSON (keys sorted; non-JSON values by their str)."""
    return hashlib.sha256(json.dumps(_canonical(inputs), sort_keys=True).encode()).hexdigest()[:16]


def first_difference(old: Any, new: Any) -> str | None:
    """The first difference between two JSON-like values (resume_guard's rule), or None if equal."""
    found = differences(old, new)
    return describe_one(found[0]) if found else None


@dataclasses.dataclass
class StageRecord:
    round: int
    name: str
    inputs: dict
    fingerprint: str
    status: str = RUNNING
    outputs: dict = dataclasses.field(default_factory=dict)
    started: float = 0.0
    finished: float | None = None
    runs: int = 0  # how many times the stage was started (1 unless the loop was interrupted inside it)

    @property
    def key(self) -> str:
        return f"r{self.round}/{self.name}"


class Manifest:
    """The stages of one run directory's loop, kept in ``<run_dir>/loop.json``."""

    def __init__(self, run_dir: str | os.PathLike, config: dict | None = None, *, is_writer: bool | None = None):
        """Open (or create) the manifest. ``config`` is the run-wide configuration: a manifest made under a
        different one is refused, naming the first difference. ``config=None`` opens an existing manifest as it
        is (to inspect it)."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "loop.json"
        if is_writer is None:
            is_writer = jax.process_index() == 0
        self.is_writer = is_writer
        self.config = None if config is None else _canonical(config)
        self.stages: dict[str, StageRecord] = {}
        if self.path.exists():
            self._load()
        else:
            self.config = self.config or {}
            self._save()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(
                f"{self.path}: unreadable ({e}); it is written atomically, so this file was "
                "changed by hand or by another program"
            ) from None
        if data.get("version") != VERSION:
            raise ManifestError(
                f"{self.path}: manifest version {data.get('version')!r}, this synpro_jax writes {VERSION}"
            )
        if self.config is None:
            self.config = data.get("config", {})
        found = first_difference(data.get("config", {}), self.config)
        if found:
            raise ManifestError(
                f"{self.path} was made by a run with another configuration: {found}. Use a new "
                "run directory (or restore the old setting)"
            )
        for item in data.get("stages", []):
            record = StageRecord(**item)
            self.stages[record.key] = record

    def _save(self) -> None:
        if not self.is_writer:
            return
        atomic.write_json(
            self.path,
            {
                "version": VERSION,
                "config": self.config,
                "stages": [dataclasses.asdict(s) for s in self.stages.values()],
            },
        )

    def record(self, round_: int, name: str) -> StageRecord | None:
        return self.stages.get(f"r{round_}/{name}")

    def run(
        self,
        round_: int,
        name: str,
        inputs: dict,
        fn: Callable[[], dict],
        outputs_ok: Callable[[dict], bool] = lambda outputs: True,
    ) -> dict:
        """Run stage ``name`` of round ``round_`` unless it is already done with these inputs.

        ``fn()`` does the stage's work (resuming whatever it finds) and returns its outputs (JSON-able: paths,
        counts, metrics). ``outputs_ok(outputs)`` says whether a done stage's recorded outputs still exist; if
        not, the stage runs again.
        """
        inputs = _canonical(inputs)
        fp = fingerprint(inputs)
        key = f"r{round_}/{name}"
        old = self.stages.get(key)
        if old is not None and old.fingerprint != fp:
            found = first_difference(old.inputs, inputs)
            raise ManifestError(
                f"{self.path}: stage {key} was recorded with other inputs: {found}. Use a new run "
                "directory, or remove that stage's outputs and manifest entry on purpose"
            )
        if old is not None and old.status == DONE:
            if outputs_ok(old.outputs):
                log.info("loop: %s is done (fingerprint %s): skipped", key, fp)
                return old.outputs
            log.warning("loop: %s was done but its outputs are gone or incomplete: running it again", key)
        record = old or StageRecord(round_, name, inputs, fp)
        record.status, record.started, record.finished = RUNNING, time.time(), None
        record.runs += 1
        self.stages[key] = record
        self._save()
        if record.runs > 1:
            log.info("loop: %s resumes (start %d)", key, record.runs)
        outputs = _canonical(fn() or {})
        record.outputs, record.status, record.finished = outputs, DONE, time.time()
        self._save()
        return outputs

    def summary(self) -> list[dict]:
        """One line per stage, in order: key, status, how many starts, seconds."""
        return [
            {
                "stage": s.key,
                "status": s.status,
                "runs": s.runs,
                "seconds": round((s.finished or time.time()) - s.started, 1),
            }
            for s in self.stages.values()
        ]
