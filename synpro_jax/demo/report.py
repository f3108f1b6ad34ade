"""The demo's result: a table (printed and ``demo.json``) and ``demo.png``, made only from the files the
experiment wrote, so a resumed demo reports exactly what an uninterrupted one does.

- **Readings.** Every arm is scored at its last step and at its best validation checkpoint (the lowest loss on
  the validation frames) on the test set: the test biographies (wording no training text used) and QA (4-way
  cloze about the people outside the reference task, in its own reserved frames). Each reading places every arm
  on the oracle ladder (repetition and the oracle runs, D = the unique organic tokens each read): the loss
  readings by the fit L(D) = E + B / D^beta, the QA readings by monotone interpolation in log D. Multipliers are
  given over repetition and over round 0 (early-stopped repetition), with intervals over resampled test items
  (and, for the fit, its residual scatter as run noise); the readings are listed with the most conservative
  first.
- **Arms.** Round 0 (shared), then repetition, SynPro, each oracle run ("oracle x2": two biographies per person)
  and, with ``--full``, the ablations (demo/ablations.py).
- **Test hygiene.** How many test sentences appear, as a sentence, in any arm's training text (the organic and
  oracle corpus, the reference task, the teaching pairs, every synthetic stream): zero by construction.
- **No collapse.** Each synthetic stream's diversity against the organic text it rewrote (eval/diversity.py).
- **Generators.** The GRPO reward curves, the exact fact score of rewrites before GRPO (the taught generator)
  and of the synthesized records after it, the lexical check beside the exact one, and sample rewrites.
"""

from __future__ import annotations

import json
import math

from etils.epath import Path
import numpy as np

from synpro_jax import atomic, sharding
from synpro_jax.data.vocab import load_vocabulary
from synpro_jax.demo import world as W
from synpro_jax.eval import effective_tokens as et
from synpro_jax.eval.harness import LoglikelihoodScorer, mc_requests
from synpro_jax.eval.tasks import MCItem, continuation
from synpro_jax.generation import prompts
from synpro_jax.loop.report import unique_read
from synpro_jax.rl.rewards.faithfulness import support, words
from synpro_jax.train import params_io
from synpro_jax.train.metrics import read_records, save_png

__all__ = ["build", "write", "table", "READINGS", "score_checkpoints", "readings", "arm_label"]

# name -> (what it reads, ladder kind, which checkpoint, the score it reads)
READINGS = {
    "test_loss_last": ("test loss, last step", "loss", "last", "test_nll"),
    "test_loss_best": ("test loss, best validation checkpoint", "loss", "best", "test_nll"),
    "fact_loss_last": ("test loss on the facts, last step", "loss", "last", "fact_nll"),
    "fact_loss_best": ("test loss on the facts, best validation checkpoint", "loss", "best", "fact_nll"),
    "qa_last": ("QA accuracy, last step", "accuracy", "last", "qa_correct"),
    "qa_best": ("QA accuracy, best validation checkpoint", "accuracy", "best", "qa_correct"),
}
REFERENCES = ("repetition", "round 0")


def _records(path: Path) -> list[dict]:
    """A JSONL file's records (a torn last line dropped, as the metrics log drops it); none if it is absent."""
    return read_records(path) if path.exists() else []


def _reward_curve(grpo_dir: Path) -> list[dict]:
    out = []
    for r in _records(grpo_dir / "metrics.jsonl"):
        rewards = {
            k[len("reward/") : -len("_mean")]: round(v, 4)
            for k, v in r.items()
            if k.startswith("reward/") and k.endswith("_mean")
        }
        if rewards:
            out.append({"step": r["step"], **rewards})
    return out


def _synthesized_text(corpus: Path, synth_dir: Path, samples: int) -> dict:
    """Without a world (your own corpus): the lexical support of the synthesized records, and samples."""
    records = [r for f in sorted(synth_dir.glob("*.jsonl")) for r in _records(f)]
    sources = {
        f"{corpus.name}:{i + 1}": json.loads(line)["text"]
        for i, line in enumerate(corpus.read_text(encoding="utf-8").splitlines())
        if line.strip()
    }
    lexical, shown, statuses = [], [], {}
    for r in records:
        statuses[r.get("status")] = statuses.get(r.get("status"), 0) + 1
        source = sources.get(str(r.get("source_id", "")))
        text = r.get("text") or r.get("output") or ""
        if source is None or not text:
            continue
        lexical.append(support(text, set(words(source))))
        if len(shown) < samples:
            shown.append({"source": source[:700], "rewrite": text})
    return {"records": len(records), "statuses": statuses, "lexical_support": _mean(lexical), "samples": shown}


def _synthesized(world: W.World, corpus: Path, synth_dir: Path, samples: int, before_people: int) -> dict:
    """Exact fact scores of the synthesized records (all, and those of the ``before_people`` people whose
    rewrites were scored before GRPO), the lexical heuristic beside them, and samples."""
    records = [r for f in sorted(synth_dir.glob("*.jsonl")) for r in _records(f)]
    # Records name their source as "corpus.jsonl:<line>"; the organic biographies are the first lines.
    organic = {f"{corpus.name}:{i + 1}": (i, p) for i, p in enumerate(world.people)}
    exact, recall, lexical, shown, same = [], [], [], [], []
    for r in records:
        i, person = organic.get(str(r.get("source_id", "")), (None, None))
        if person is None:
            continue
        # A record without a parsed answer (no heading) scores 0, as the faithfulness reward scores it.
        check = W.fact_check(person, r["text"] if r.get("status") == "ok" else "")
        if i < before_people:
            same.append(check.score)
        if r.get("status") != "ok":
            continue
        exact.append(check.score)
        recall.append(check.recall)
        # The generic local check: the share of the rewrite's content words found in the source.
        lexical.append(support(r["text"], set(words(W.organic_biography(person)))))
        if len(shown) < samples:
            shown.append({"source": W.organic_biography(person), "rewrite": r["text"], "fact_score": check.score})
    statuses = {}
    for r in records:
        statuses[r.get("status")] = statuses.get(r.get("status"), 0) + 1
    agree = (
        float(np.corrcoef(exact, lexical)[0, 1])
        if len(exact) > 2 and np.std(exact) > 0 and np.std(lexical) > 0
        else None
    )
    return {
        "records": len(records),
        "statuses": statuses,
        "generator_step": records[0].get("generator_step") if records else None,
        "fact_score": _mean(exact),
        "recall": _mean(recall),
        "fact_score_before_people": _mean(same),
        "lexical_support": _mean(lexical),
        "exact_vs_lexical_pearson": agree,
        "perfect": _mean([s == 1.0 for s in exact]),
        "samples": shown,
    }


# --- scoring every arm's checkpoints on the test set ----------------------------------------------------------
def _fact_requests(world: W.World, test: list[dict], vocab, eos: int) -> tuple[list, np.ndarray]:
    """Each test biography's facts as requests (the text before a value, the value), and the biography each
    belongs to: the loss on the facts alone, whatever the frame around them."""
    requests, owner = [], []
    for i, r in enumerate(test):
        person, text = world.person_of(r["id"]), r["text"]
        for attribute in W.ATTRIBUTES:
            value = person.facts[attribute]
            context = text[: text.index(value)].rstrip()
            requests.append(([eos, *vocab.encode(context)], list(vocab.encode(continuation(context, value)))))
            owner.append(i)
    return requests, np.asarray(owner)


def score_checkpoints(
    model_cfg, checkpoints: dict[str, dict[str, Path]], test: Path, qa: Path | None, vocab_path, world=None
):
    """Per arm and checkpoint ("last", "best"): each test biography's summed NLL (scored whole after an EOS);
    with ``world``, the summed NLL of each biography's fact values given the text before them; with ``qa``, each
    QA item's correctness (the choice of largest log-likelihood, as the harness's ``acc``). Returns (scores,
    {score: the token count behind each entry})."""
    vocab = load_vocabulary(str(vocab_path))
    eos = int(vocab.eos_id)
    records = _records(test)
    docs = [list(vocab.encode(r["text"])) for r in records]
    requests = [([eos], d) for d in docs]
    tokens = {"test_nll": np.array([len(d) for d in docs], np.float64)}
    facts, owner = _fact_requests(world, records, vocab, eos) if world is not None else ([], np.zeros(0, int))
    if facts:
        tokens["fact_nll"] = np.bincount(owner, [len(c) for _, c in facts], len(docs)).astype(np.float64)
    items = [MCItem(r["context"], tuple(r["choices"]), int(r["label"])) for r in _records(qa)] if qa else []
    choices = mc_requests(items, vocab, eos) if items else []
    mesh = sharding.single_device_mesh()
    out: dict = {}
    scorer = None
    for arm, points in checkpoints.items():
        out[arm] = {}
        for point, ckpt in points.items():
            params = params_io.load_params(model_cfg, mesh, ckpt)
            if scorer is None:
                scorer = LoglikelihoodScorer(model_cfg, params, mesh, rows=64)
            else:
                scorer.set_params(params)  # one compiled scorer for every checkpoint
            ll = scorer(requests + facts + choices)
            entry = {"test_nll": -ll[: len(requests)]}
            if facts:
                entry["fact_nll"] = np.bincount(owner, -ll[len(requests) : len(requests) + len(facts)], len(docs))
            if items:
                per = ll[len(requests) + len(facts) :].reshape(len(items), -1)
                entry["qa_correct"] = (np.argmax(per, axis=1) == np.array([it.label for it in items])).astype(float)
            out[arm][point] = entry
    return out, tokens


def readings(
    scores: dict, tokens: dict[str, np.ndarray], ladder: dict[str, float], *, seed: int = 0, resamples: int = 1000
) -> dict:
    """Each of :data:`READINGS` (those the scores hold) as :func:`et.ladder_reading` over every arm, the test
    items resampled (the same draw for every arm)."""
    out = {}
    for name, (label, kind, point, field) in READINGS.items():
        if any(field not in scores[a].get(point, {}) for a in scores):
            continue
        values = {a: scores[a][point][field] for a in scores}
        n = len(next(iter(values.values())))
        weight = tokens.get(field)

        def metric(idx, rng, values=values, kind=kind, weight=weight):
            idx = np.arange(n) if idx is None else idx
            if kind == "loss":
                return {a: float(v[idx].sum() / weight[idx].sum()) for a, v in values.items()}
            return {a: float(v[idx].mean()) for a, v in values.items()}

        refs = [r for r in REFERENCES if r in values]
        reading = et.ladder_reading(ladder, metric, kind=kind, references=refs, resamples=resamples, seed=seed, items=n)
        out[name] = {"label": label, "checkpoint": point, **reading, "problems": _problems(reading, ladder)}
    return out


def _problems(reading: dict, ladder: dict[str, float]) -> list[str]:
    """Why a reading's ladder cannot be read: a fit that is not ``fitted``, or rungs that do not improve with D
    (rank correlation below 0.8: an arm's place on such a ladder depends on which rungs happen to be noisy)."""
    problems = []
    if reading["kind"] == "loss" and reading["fit"]["status"] != "fitted":
        problems.append(f"fit {reading['fit']['status']}")
    order = sorted(ladder, key=ladder.get)
    values = np.asarray([reading["arms"][a]["value"] for a in order], np.float64)
    sign = 1 if reading["kind"] == "accuracy" else -1
    # Spearman's rank correlation of the rungs with D: one swapped pair of neighbours (noise) still reads
    ranks = np.argsort(np.argsort(sign * values, kind="stable"), kind="stable")
    rho = float(np.corrcoef(ranks, np.arange(len(values)))[0, 1]) if np.ptp(values) > 0 else 0.0
    if rho < 0.8:
        problems.append(f"the ladder does not improve with D (rank correlation {rho:.2f})")
    return problems


def arm_label(run: str, multiples: dict[str, float]) -> str:
    return f"oracle x{multiples[run]:g}" if run in multiples else run


def _score_stages(model_cfg, files, world, loop_dir: Path, stage_dirs: dict[str, str]):
    """Every arm's last and best checkpoints scored on the test set (the best once, as the last, where they are
    the same step; no best readings unless every arm kept one). Returns (scores, tokens, each stage's summary)."""
    summaries = {a: _stage_summary(loop_dir, rel) for a, rel in stage_dirs.items()}
    with_best = all((loop_dir / rel / "best").exists() for rel in stage_dirs.values())
    scored, same = {}, []
    for a, rel in stage_dirs.items():
        scored[a] = {"last": loop_dir / rel}
        if with_best and (summaries[a].get("best") or {}).get("step") == summaries[a].get("step"):
            same.append(a)
        elif with_best:
            scored[a]["best"] = loop_dir / rel / "best"
    qa = files.qa if world is not None else None
    scores, tokens = score_checkpoints(model_cfg, scored, files.test, qa, files.tokenizer, world)
    for a in same:
        scores[a]["best"] = scores[a]["last"]
    return scores, tokens, summaries


def _stage_summary(loop_dir: Path, rel: str) -> dict:
    path = loop_dir / rel / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _training_sentences(files, world: W.World, synthetic_dirs: list[Path]) -> set[str]:
    """Every sentence any arm or generator trains on: the corpus (organic and oracle), the reference task, the
    teaching pairs and every synthetic stream."""
    texts = [r["text"] for r in _records(files.corpus)]
    texts += [f"{q['prompt']} {q['completion']}" for q in _records(files.reference)]
    for op in prompts.OPERATIONS:
        texts += [f"{p['document']}\n{p['answer']}" for p in world.sft_pairs(op, per_person=1)]
    for d in synthetic_dirs:
        texts += [r.get("text") or "" for f in sorted(d.glob("*.jsonl")) for r in _records(f)]
    return {s for t in texts for s in W.split_sentences(t)}


def evaluation_hygiene(files, world: W.World, synthetic_dirs: list[Path]) -> dict:
    """How many test sentences (test biographies', validation's and QA's right answers) any training text states as
    a sentence."""
    seen = _training_sentences(files, world, synthetic_dirs)
    test = [s for r in _records(files.test) for s in W.split_sentences(r["text"])]
    validation = [s for r in _records(files.validation) for s in W.split_sentences(r["text"])]
    qa = world.qa_sentences()
    return {
        "training_sentences": len(seen),
        **{
            name: {"sentences": len(group), "verbatim": sum(s in seen for s in group)}
            for name, group in (("test", test), ("validation", validation), ("qa", qa))
        },
    }


def _mean(xs) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def build(
    cfg,
    files,
    taught: dict,
    loop_dir: Path,
    summary: dict,
    organic_tokens: int,
    oracle_multiples: dict[str, float],
    model_cfg,
    extra_arms: dict[str, dict] | None = None,
    second_round: dict | None = None,
) -> dict:
    """The report. ``oracle_multiples``: oracle run -> biographies per person; ``extra_arms``: more arms (the
    ablations) as {name: {"label", "dir": its pretraining stage relative to ``loop_dir``, "rounds": like a run's,
    "diversity": its synthetic streams'}}; ``second_round``: demo/ablations.py's second-round arms, compared
    with each other."""
    world = files.world() if hasattr(files, "world") else None  # None: your own corpus
    runs = dict(summary["runs"])
    stage_dirs = {"round 0": "r0/pretrain"}
    stage_dirs.update({run: f"{run}/r{rounds[-1]['round']}/pretrain" for run, rounds in runs.items()})
    for name, extra in (extra_arms or {}).items():
        stage_dirs[name] = extra["dir"]
        runs[name] = extra["rounds"]
    scores, tokens, summaries = _score_stages(model_cfg, files, world, loop_dir, stage_dirs)

    reads = {"round 0": unique_read(runs[next(iter(summary["runs"]))][:1])}
    reads.update({run: unique_read(rounds) for run, rounds in runs.items()})
    for r in reads.values():
        r["tokens"] = r["tokens"] or organic_tokens
    ladder = {a: float(reads[a]["tokens"]) for a in runs if a == "repetition" or a in oracle_multiples}
    flags = {}
    for a in ladder:
        if reads[a].get("complete") is False:
            flags[a] = f"read {reads[a]['low']:,} of its {reads[a]['budget']:,} organic tokens: D is a lower bound"
    best_steps = {}
    for a, rel in stage_dirs.items():
        best = summaries[a].get("best")
        # the directory relative to the experiment, so a moved or copied demo reports the same
        best_steps[a] = None if best is None else {**best, "dir": f"{rel}/best"}
    per_step = {a: rounds[-1]["tokens"] / max(rounds[-1]["train_step"], 1) for a, rounds in runs.items() if rounds[-1]}
    for a in ladder:
        best = best_steps.get(a)
        if best and a in oracle_multiples and best["step"] * per_step[a] < ladder[a] - organic_tokens:
            flags[a + " (best)"] = (
                f"its best checkpoint (step {best['step']}) came before one pass over its new data: at the best "
                "checkpoint D overstates what it had read"
            )
    result = readings(scores, tokens, ladder, seed=cfg.seed) if len(set(ladder.values())) >= 3 else {}
    # the most conservative readable reading first; readings whose ladder cannot be read after them
    order = sorted(result, key=lambda r: (bool(result[r]["problems"]), _multiplier(result[r], "synpro", "repetition")))
    arms = []
    for arm in stage_dirs:
        rounds = runs[arm] if arm != "round 0" else runs[next(iter(summary["runs"]))][:1]
        last = rounds[-1]
        entry = {
            "arm": (extra_arms or {}).get(arm, {}).get("label") or arm_label(arm, oracle_multiples),
            "run": arm,
            "biographies_per_person": oracle_multiples.get(arm, 1),
            "unique_organic_tokens": reads[arm]["tokens"],
            "unique_read": reads[arm],
            "tokens": last["tokens"],
            "validation_loss": last["val_loss"],
            "best": best_steps.get(arm),
        }
        entry.update(_values(scores[arm], tokens))
        entry["readings"] = {
            name: {
                "effective_tokens": r["arms"][arm]["effective_tokens"],
                "status": r["arms"][arm]["status"],
                "multiplier": r["arms"][arm]["multiplier"],
            }
            for name, r in result.items()
        }
        arms.append(entry)
    generators, diversity = {}, []
    synth = loop_dir / "synpro" / "r1"
    for op in prompts.OPERATIONS:
        grpo = synth / f"grpo_{op}"
        generators[op] = {
            "rewards": _reward_curve(grpo),
            "before_grpo": taught.get("rewrites", {}).get(op),
            "before_sample": taught.get("samples", {}).get(op),
            "after_grpo": _synthesized(
                world, files.corpus, synth / f"synthesize_{op}", cfg.samples, cfg.teach.eval_people
            )
            if world is not None
            else _synthesized_text(files.corpus, synth / f"synthesize_{op}", cfg.samples),
        }
    diversity = list(summary.get("diversity", []))
    for name, extra in (extra_arms or {}).items():
        diversity += [{**d, "stage": f"{name}: {d['stage']}"} for d in extra.get("diversity", [])]
    synthetic_dirs = sorted(loop_dir.glob("*/r*/synthesize_*"))  # every run's and ablation's streams
    hygiene = evaluation_hygiene(files, world, synthetic_dirs) if world is not None else None
    curves = {run: _loss_curve(loop_dir, run, rounds) for run, rounds in summary["runs"].items()}
    return _finite(
        {
            "seed": cfg.seed,
            "people": cfg.people if world is not None else None,
            "corpus": list(cfg.corpus),
            "before_people": cfg.teach.eval_people,
            "organic_tokens": organic_tokens,
            "arms": arms,
            "readings": {name: _compact(result[name]) for name in order},
            "conservative": next((r for r in order if not result[r]["problems"]), None),
            "ladder_flags": flags,
            "test_hygiene": hygiene,
            "diversity": diversity,
            "second_round": _second_round(model_cfg, files, world, loop_dir, second_round),
            "generators": generators,
            "curves": curves,
            "out_dir": str(Path(cfg.out_dir)),
        }
    )


def _finite(obj):
    """The report with NaN and infinite numbers as None (strict JSON; an arm off the ladder says so in its
    status), tuples as lists and NumPy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _values(scores: dict, tokens: dict) -> dict:
    """An arm's readings as numbers: ``test_loss_<point>``, ``fact_loss_<point>``, ``qa_<point>``."""
    out = {}
    for point, sc in scores.items():
        out[f"test_loss_{point}"] = float(sc["test_nll"].sum() / tokens["test_nll"].sum())
        if "fact_nll" in sc:
            out[f"fact_loss_{point}"] = float(sc["fact_nll"].sum() / tokens["fact_nll"].sum())
        if "qa_correct" in sc:
            out[f"qa_{point}"] = float(sc["qa_correct"].mean())
    return out


def _second_round(model_cfg, files, world, loop_dir: Path, second: dict | None) -> dict | None:
    """The second round against SynPro continued on round 1's mixture for the same steps, by every reading."""
    if second is None:
        return None
    if not second["arms"]:
        return {"triggered": None, "arms": {}}
    stage_dirs = {arm: e["dir"] for arm, e in second["arms"].items()}
    scores, tokens, _ = _score_stages(model_cfg, files, world, loop_dir, stage_dirs)
    arms = {}
    for arm, e in second["arms"].items():
        entry = {"tokens": e["rounds"][-1]["tokens"], "validation_loss": e["rounds"][-1]["val_loss"]}
        entry.update(_values(scores[arm], tokens))
        arms[arm] = entry
    return {"triggered": second["triggered"], "arms": arms}


def _multiplier(reading: dict, arm: str, ref: str) -> float:
    value = (reading["arms"].get(arm) or {}).get("multiplier", {}).get(ref, {}).get("value")
    return math.inf if value is None or not math.isfinite(value) else value


def _compact(reading: dict) -> dict:
    """A reading without its per-arm entries (they are on the arms)."""
    return {k: v for k, v in reading.items() if k != "arms"}


def _loss_curve(loop_dir: Path, run: str, rounds: list[dict]) -> list[list[float]]:
    """(tokens, validation loss) through round 0 and the run's later rounds."""
    points = []
    start = 0
    for r in rounds:
        rel = "r0/pretrain" if r["round"] == 0 else f"{run}/r{r['round']}/pretrain"
        per_step = r["tokens"] / r["train_step"] if r["train_step"] else 0
        for rec in _records(loop_dir / rel / "metrics.jsonl"):
            if "val_loss" in rec:
                points.append([(start + rec["step"]) * per_step, rec["val_loss"]])
        start = r["train_step"]
    return points


def write(report: dict, root: Path) -> None:
    atomic.write_json(root / "demo.json", report)
    _plot(report, root / "demo.png")


def _plot(report: dict, path: Path) -> None:
    import matplotlib  # heavy, and the backend choice below is global: only when the figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy, as matplotlib above (and after its backend is chosen)

    arms = {a["run"]: a for a in report["arms"]}
    palette = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    colour = {run: palette(i % palette.N) for i, run in enumerate(arms)}  # one colour per arm in both panels
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, pts in report["curves"].items():
        if pts:
            left.plot(*zip(*pts), "-", lw=1.4, label=arms[run]["arm"], color=colour[run])
    left.set_xlabel("pretraining tokens")
    left.set_ylabel("validation loss (validation wording)")
    left.set_title("validation loss against tokens, every arm")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    reading = report["readings"].get("test_loss_last")
    if reading:
        fit = reading["fit"]
        d = np.asarray(fit["oracle_tokens"], np.float64)
        xs = np.geomspace(d.min() / 1.5, d.max() * 2, 100)
        right.plot(xs, fit["E"] + fit["B"] * xs ** -fit["beta"], "k-", lw=1, label=f"oracle fit ({fit['status']})")
        for run, a in arms.items():
            loss = a["test_loss_last"]
            if run in reading["ladder"]:
                right.plot([reading["ladder"][run]], [loss], "o", ms=6, color=colour[run], label=a["arm"])
                continue
            eff = a["readings"]["test_loss_last"]["effective_tokens"]["value"]
            right.axhline(loss, ls="--", lw=0.8, color=colour[run])
            if eff and math.isfinite(eff):
                right.plot([eff], [loss], "s", ms=7, color=colour[run], label=f"{a['arm']}: {eff:,.0f} tokens")
            else:
                right.plot([], [], "s", color=colour[run], label=f"{a['arm']}: off the fit")
        right.set_xscale("log")
    right.set_xlabel("unique organic tokens D")
    right.set_ylabel("test loss at the last step (test wording)")
    right.set_title("effective tokens on the oracle ladder")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def _interval(e: dict | None, fmt: str) -> str:
    if not e or e.get("value") is None or not math.isfinite(e["value"]):
        return "-" if not e or e.get("status", "ok") == "ok" else f"- ({e['status']})"
    low, high = e.get("low"), e.get("high")
    iv = (
        f" [{low:{fmt}}, {high:{fmt}}]"
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
        else ""
    )
    flag = "" if e.get("status", "ok") == "ok" else f" ({e['status']})"
    return f"{e['value']:{fmt}}{iv}{flag}"


def _num(value, fmt: str) -> str:
    return "-" if value is None else f"{value:{fmt}}"


def table(report: dict) -> str:
    arms = {a["run"]: a for a in report["arms"]}
    lines = [
        f"synpro demo, seed {report['seed']}: "
        + (f"{report['people']} people, " if report.get("people") else "")
        + f"{report['organic_tokens']:,} organic tokens; every arm after round 0 trains the same steps",
        "",
    ]
    syn = arms.get("synpro")
    if report["readings"] and syn:
        lines.append("SynPro's effective-token multiplier, every reading, the most conservative readable one first")
        lines.append(f"  {'reading':<52}{'x repetition [90%]':<42}{'x round 0 [90%]'}")
        for name, r in report["readings"].items():
            m = syn["readings"][name]["multiplier"]
            lines.append(
                f"  {r['label']:<52}{_interval(m.get('repetition'), '.2f'):<42}{_interval(m.get('round 0'), '.2f')}"
                + (f"  unreadable: {', '.join(r['problems'])}" if r.get("problems") else "")
            )
        kinds = {r["kind"]: r.get("interval") or "none" for r in report["readings"].values()}
        lines.append("  intervals: " + "; ".join(f"{k}: {v}" for k, v in kinds.items()))
        fit = report["readings"].get("test_loss_last", {}).get("fit")
        if fit:
            res = ", ".join(f"{arms[a]['arm']} {v:+.4f}" for a, v in fit["residuals"].items())
            lines.append(
                f"  oracle fit ({fit['status']}, {report['readings']['test_loss_last']['dof']} degrees of freedom): "
                f"L(D) = {fit['E']:.3f} + {fit['B']:.4g} / D^{fit['beta']:.3f}; residuals {res}"
            )
        for flag in report.get("ladder_flags", {}).items():
            lines.append(f"  note: {flag[0]}: {flag[1]}")
        lines.append("")
    has_best = any("test_loss_best" in a for a in report["arms"])
    has_facts = any("fact_loss_last" in a for a in report["arms"])
    header = f"{'arm':<18}{'unique organic tok':>19}{'tokens':>10}{'test loss':>10}"
    if has_best:
        header += f"{'@best':>8}{'(step)':>7}"
    if has_facts:
        header += f"{'facts':>8}" + (f"{'@best':>8}" if has_best else "")
    header += f"{'QA':>7}" + (f"{'@best':>7}" if has_best else "")
    lines.append(header)
    for a in report["arms"]:
        row = f"{a['arm']:<18}{a['unique_organic_tokens']:>19,}{a['tokens']:>10,}{a['test_loss_last']:>10.4f}"
        if has_best:
            step = (a.get("best") or {}).get("step")
            row += f"{_num(a.get('test_loss_best'), '.4f'):>8}{_num(step, 'd'):>7}"
        if has_facts:
            row += f"{_num(a.get('fact_loss_last'), '.4f'):>8}"
            row += f"{_num(a.get('fact_loss_best'), '.4f'):>8}" if has_best else ""
        row += f"{_num(a.get('qa_last'), '.3f'):>7}" + (f"{_num(a.get('qa_best'), '.3f'):>7}" if has_best else "")
        lines.append(row)
    lines.append(
        "  test loss: nats/token over the test biographies; facts: over their fact values alone, given the text "
        "before them; QA: 4-way cloze accuracy (chance 0.25); @best: at the arm's lowest validation loss (step)"
    )
    lines.append("")
    if report["readings"]:
        lines.append("effective tokens per reading (x repetition)")
        for name, r in report["readings"].items():
            parts = []
            for a in report["arms"]:
                if a["run"] in r["ladder"]:
                    continue
                rd = a["readings"][name]
                parts.append(f"{a['arm']} {_interval(rd['multiplier'].get('repetition'), '.2f')}")
            lines.append(f"  {r['label']}: " + "; ".join(parts))
        lines.append("")
    second = report.get("second_round")
    if second is not None:
        if not second["arms"]:
            lines.append("second round: not run (the plateau detector did not fire in SynPro's round 1)")
        else:
            lines.append(
                f"second round (SynPro's round 1 plateaued at step {second['triggered']}), against SynPro continued "
                "on round 1's mixture for the same steps:"
            )
            for arm, e in second["arms"].items():
                lines.append(
                    f"  {arm:<18} test loss {_num(e.get('test_loss_last'), '.4f')} (best "
                    f"{_num(e.get('test_loss_best'), '.4f')}), facts {_num(e.get('fact_loss_last'), '.4f')} (best "
                    f"{_num(e.get('fact_loss_best'), '.4f')}), QA {_num(e.get('qa_last'), '.3f')} (best "
                    f"{_num(e.get('qa_best'), '.3f')})"
                )
        lines.append("")
    hygiene = report.get("test_hygiene")
    if hygiene:
        lines.append(
            "test hygiene: sentences stated word for word in any training text (corpus, reference, teaching, "
            "synthetic): "
            + ", ".join(f"{k} {v['verbatim']} of {v['sentences']}" for k, v in hygiene.items() if isinstance(v, dict))
        )
    for d in report.get("diversity", []):
        syn_d, org = d.get("synthetic") or {}, d.get("organic") or {}
        if not syn_d.get("records"):
            continue
        lines.append(
            f"diversity {d['stage']}: distinct 2-grams {_num(syn_d['distinct'].get('2'), '.3f')} (organic "
            f"{_num(org.get('distinct', {}).get('2'), '.3f')}), compression ratio "
            f"{_num(syn_d['compression_ratio'], '.3f')} (organic {_num(org.get('compression_ratio'), '.3f')}), "
            f"near-duplicates {syn_d['near_duplicate_share']:.1%} (organic "
            f"{_num(org.get('near_duplicate_share'), '.1%')})"
        )
    lines.append("")
    lines.append(
        "generators"
        + (
            " (exact fact score: facts stated minus the share of wrong ones; 1 is perfect)"
            if report.get("people")
            else ""
        )
    )
    for op, g in report["generators"].items():
        curve = g["rewards"]
        if curve:
            k = max(1, len(curve) // 4)
            parts = []
            for name in ["total"] + [n for n in curve[0] if n not in ("step", "total")]:
                first = np.mean([c[name] for c in curve[:k] if name in c])
                last = np.mean([c[name] for c in curve[-k:] if name in c])
                parts.append(f"{name} {first:.3f} -> {last:.3f}")
            lines.append(
                f"  {op}: GRPO rewards, mean of the first {k} steps -> the last {k} ({len(curve)} steps): "
                + ", ".join(parts)
            )
        before, after = g.get("before_grpo") or {}, g["after_grpo"]
        if before:
            lines.append(
                f"    before GRPO (the taught generator): fact score {before['fact_score']:.3f}, recall "
                f"{before['recall']:.3f}, format {before['format']:.2f} on the first "
                f"{report.get('before_people')} people"
                + (
                    f"; after GRPO, the same people's synthesized records: fact score "
                    f"{after['fact_score_before_people']:.3f}"
                    if after.get("fact_score_before_people") is not None
                    else ""
                )
            )
        if after.get("fact_score") is None and after.get("lexical_support") is not None:
            lines.append(
                f"    synthesized: {after['records']} records {after['statuses']}; lexical support "
                f"{after['lexical_support']:.3f}"
            )
        if after.get("fact_score") is not None:
            pearson = after["exact_vs_lexical_pearson"]
            lines.append(
                f"    synthesized (generator step {after.get('generator_step')}): fact score "
                f"{after['fact_score']:.3f}, recall {after['recall']:.3f}, perfect {after['perfect']:.2f} of "
                f"{after['records']} records; lexical support {after['lexical_support']:.3f}"
                + (f", r(exact, lexical) {pearson:.2f}" if pearson is not None else "")
            )
        shown = after.get("samples", [])[:1]
        if shown:
            lines.append(f"    source:        {shown[0]['source']}")
        b = g.get("before_sample")
        if b and shown and b["source"] == shown[0]["source"]:
            text = prompts.parse_answer(b["rewrite"], op).text
            lines.append(f"    before GRPO:   {text[:700]!r} (fact score {b['fact_score']:.2f})")
        for s in shown:
            score = f" (fact score {s['fact_score']:.2f})" if "fact_score" in s else ""
            lines.append(f"    after GRPO:    {s['rewrite'][:700]!r}{score}")
    return "\n".join(lines)
