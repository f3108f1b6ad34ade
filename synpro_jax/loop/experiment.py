"""The experiment directory of a SynPro loop and what every stage shares: where a stage's files go, the
documents the generators rewrite, the policy a generator stage starts from, the mixture of a round, and the
:class:`StageCall` each stage is described by (the inputs recorded in ``loop.json``, with paths relative to the
experiment so the directory can move; the work; the check that its outputs still exist).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import json
from typing import Any

from etils.epath import Path
import jax

from synpro_jax import atomic
from synpro_jax.data.streams import organic_split
from synpro_jax.data.vocab import PassthroughVocabulary, TrainedSentencePiece
from synpro_jax.errors import ConfigError
from synpro_jax.loop.config import LoopConfig
from synpro_jax.loop.plan import GeneratorSpec, StagePlan
from synpro_jax.loop.settings import StageSettings

__all__ = ["StagePreempted", "StageCall", "Experiment", "ROUND0_START", "stage_name", "tally_records"]

ROUND0_START = "r0/pretrain"  # GeneratorSpec.start naming round 0's LM instead of an HF directory


class StagePreempted(RuntimeError):
    """A stage stopped on SIGTERM after saving its progress: the loop stops, and a rerun resumes the stage."""


@dataclasses.dataclass
class StageCall:
    name: str  # the stage's name in loop.json within its round ("pretrain", "synpro/grpo_reformat", ...)
    inputs: dict
    work: Callable[[], dict]
    outputs_ok: Callable[[dict], bool]


def stage_name(run: str, plan: StagePlan) -> str:
    """A stage's name in loop.json within its round: round 0's are shared ("pretrain"), later ones belong to a
    run ("synpro/grpo_reformat")."""
    return plan.name if plan.round == 0 else f"{run}/{plan.name}"


class Experiment:
    """One experiment directory and the templates its stages are made from. ``record``, the configuration text,
    is written as each stage's config.gin."""

    def __init__(self, cfg: LoopConfig, stages: StageSettings, progress: bool = True, record: str | None = None):
        stages.check()
        self.cfg, self.stages, self.progress, self.record = cfg, stages, progress, record
        self.model, self.data = stages.pretrain.model, stages.pretrain.data
        self.root = Path(cfg.out_dir)
        self._documents: list[str] | None = None

    # --- paths ---------------------------------------------------------------------------------------------------
    def stage_dir(self, run: str, plan: StagePlan) -> str:
        """A stage's directory relative to the experiment: r0/<stage> (shared by every run) or <run>/r<k>/<stage>."""
        return f"r0/{plan.name}" if plan.round == 0 else f"{run}/r{plan.round}/{plan.name}"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def vocabulary_path(self) -> str:
        """The pretraining vocabulary as a file (probe, influence reward and evaluation tokenize with it)."""
        spec = self.data.vocabulary
        if isinstance(spec, TrainedSentencePiece):
            return str(Path(self.data.cache_dir) / f"{self.data.corpus}_sp{spec.size}.model")
        if isinstance(spec, PassthroughVocabulary):
            raise ConfigError(
                "synpro.DataConfig.vocabulary is a PassthroughVocabulary (token ids, no text): the "
                "probe, generators and evaluation need a text vocabulary"
            )
        return str(spec)

    def training_documents(self) -> list[str]:
        """Ids of the organic documents round 0 trains on (validation documents held out, budget applied): the
        documents the generators rewrite, written to r0/training_documents.txt for reference."""
        if self._documents is None:
            _, train, _, _ = organic_split(self.data, progress=False)
            self._documents = list(train.doc_ids)
            path = self.root / "r0" / "training_documents.txt"
            text = "".join(f"{d}\n" for d in self._documents)
            if jax.process_index() == 0 and (not path.exists() or path.read_text(encoding="utf-8") != text):
                atomic.write_text(path, text)
        return self._documents

    def check_generators(self) -> None:
        """The generators' starting points and stage templates, and the text vocabulary they and the probe need."""
        self.vocabulary_path()
        for spec in self.cfg.generators:
            if spec.name not in self.stages.generators:
                raise ConfigError(f"GeneratorSpec({spec.name}): the loop's StageSettings has no templates for it")
            if spec.start != ROUND0_START and not (Path(spec.start) / "config.json").exists():
                raise ConfigError(
                    f"GeneratorSpec({spec.name}).start={spec.start}: not an HF OLMo-2 directory (no "
                    f"config.json); give one, or {ROUND0_START!r} to start from round 0's LM"
                )

    # --- the policy a generator stage starts from ---------------------------------------------------------------
    def policy(self, spec: GeneratorSpec, plan: StagePlan, outputs: dict[str, dict], resolve) -> tuple[str, bool]:
        """(the policy's directory as recorded, whether it is a synpro run rather than an HF directory)."""
        if plan.policy_from == "start":
            if spec.start == ROUND0_START:
                return str(self.path(outputs[ROUND0_START]["dir"])), True
            return spec.start, False
        return str(self.path(outputs[resolve(plan.policy_from)]["export"])), False

    def generator_args(self, policy: str, is_run: bool) -> dict:
        """model/vocabulary of a generator: read from an HF directory, or the LM's own for a synpro run."""
        if is_run:
            return {"model": self.model, "vocabulary": self.vocabulary_path()}
        return {"model": None, "vocabulary": None}


def relative(exp: Experiment, path: str | Path) -> str:
    """A path inside the experiment as recorded (relative to it); others as given."""
    try:
        return str(Path(path).relative_to(exp.root))
    except ValueError:
        return str(path)


def scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool)) or v is None}


def mixing_rates(exp: Experiment, synthetic: list[tuple[str, int]]) -> Any:
    """DataConfig.mixing for a SynPro round: LoopConfig.mixing with generator names spread over their rounds."""
    mixing = exp.cfg.mixing
    if mixing is None or mixing == "tokens":
        return exp.data.mixing if mixing is None else "tokens"
    names = {f"{g}_r{r}" for g, r in synthetic}
    known = {"organic", *names, *(g for g, _ in synthetic)}
    unknown = sorted(set(mixing) - known)
    if unknown:
        raise ConfigError(
            f"LoopConfig.mixing names {unknown}; this round's mixture has organic and {sorted(names)} "
            "(a generator's name splits its rate over its rounds)"
        )
    rates = {"organic": mixing["organic"]} if "organic" in mixing else {}
    for g, r in synthetic:
        short = f"{g}_r{r}"
        if short in mixing:
            rates[short] = mixing[short]
        elif g in mixing:
            rates[short] = mixing[g] / sum(1 for h, _ in synthetic if h == g)
    return rates


def tally_records(directory: Path) -> dict:
    """Counts over the finished shards' records (what was made, however many starts it took)."""
    records, tokens, statuses = 0, 0, {}
    for f in sorted(directory.glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    records += 1
                    tokens += int(r.get("completion_tokens", 0))
                    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"records": records, "completion_tokens": tokens, "statuses": dict(sorted(statuses.items()))}
