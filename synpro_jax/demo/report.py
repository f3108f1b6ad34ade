"""The demo's result: a table (printed and ``demo.json``) and ``demo.png``, made only from the files the
experiment wrote, so a resumed demo reports exactly what an uninterrupted one does.

- **Arms.** Round 0 (shared), then repetition, SynPro and each oracle run after round 1: unique organic tokens,
  validation loss (held-out biographies of the same people), QA accuracy (4-way cloze about the people outside
  the reference task), effective tokens and the multiplier over repetition with their 90% bootstrap intervals
  (the loop's fit L(D) = E + B / D^beta over repetition and the oracle runs).
- **Generators.** The GRPO reward curves (every reward's mean per step), the exact fact score of rewrites before
  GRPO (the taught generator) and of the synthesized records after it, the generic lexical check against the
  exact one on those records, and sample rewrites.
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
from synpro_jax.eval.harness import LoglikelihoodScorer
from synpro_jax.generation import prompts
from synpro_jax.rl.rewards.faithfulness import support, words
from synpro_jax.train import params_io
from synpro_jax.train.metrics import read_records, save_png

__all__ = ["build", "write", "table"]


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
        "fact_score": _mean(exact),
        "recall": _mean(recall),
        "fact_score_before_people": _mean(same),
        "lexical_support": _mean(lexical),
        "exact_vs_lexical_pearson": agree,
        "perfect": _mean([s == 1.0 for s in exact]),
        "samples": shown,
    }


def heldout_nll(model_cfg, checkpoints: dict[str, Path], heldout: Path, vocab_path: Path) -> dict:
    """Per arm: each held-out biography's summed NLL and its token count under the arm's final parameters
    (every document scored whole, after an EOS, as `synpro eval --ppl` scores it)."""
    vocab = load_vocabulary(str(vocab_path))
    docs = [list(vocab.encode(r["text"])) for r in _records(heldout)]
    requests = [([int(vocab.eos_id)], d) for d in docs]
    tokens = np.array([len(d) for d in docs], np.float64)
    mesh = sharding.single_device_mesh()
    out = {}
    for arm, ckpt in checkpoints.items():
        params = params_io.load_params(model_cfg, mesh, ckpt)
        scorer = LoglikelihoodScorer(model_cfg, params, mesh, rows=64)
        out[arm] = {"nll": -scorer(requests), "tokens": tokens}
    return out


def _tokens_at(loss, e, b, beta):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(loss > e, (b / (loss - e)) ** (1.0 / beta), np.inf)


def effective_tokens_by_documents(
    nll: dict, oracle_tokens: dict[str, int], *, resamples: int = 1000, seed: int = 0, level: float = 0.9
) -> dict:
    """The oracle fit L(D) = E + B / D^beta through the oracle arms (``oracle_tokens``: arm -> D), each arm's
    effective tokens and its multiplier over repetition, with ``level`` intervals from resampling the held-out
    documents (the same resample for every arm, then a refit)."""
    arms = list(nll)
    n = len(next(iter(nll.values()))["tokens"])

    def losses(idx):
        return {a: float(nll[a]["nll"][idx].sum() / nll[a]["tokens"][idx].sum()) for a in arms}

    def solve(ls):
        fit = et.fit_oracle([oracle_tokens[a] for a in oracle_tokens], [ls[a] for a in oracle_tokens], bootstrap=0)
        eff = {a: float(_tokens_at(ls[a], fit.E, fit.B, fit.beta)) for a in arms}
        return fit, eff

    point = losses(np.arange(n))
    fit, eff = solve(point)
    rng = np.random.default_rng(seed)
    samples = {a: [] for a in arms}
    for _ in range(resamples):
        try:
            _, e = solve(losses(rng.integers(0, n, n)))
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            continue
        for a in arms:
            samples[a].append(e[a])
    tail = (1 - level) / 2 * 100
    out = {"level": level, "resamples": resamples, "fit": fit.to_json(), "loss": point, "arms": {}}
    rep = np.asarray(samples.get("repetition", []), np.float64)
    for a in arms:
        status = et.effective_tokens(fit, point[a]).status
        s = np.asarray(samples[a], np.float64)
        low, high = np.nanpercentile(s, [tail, 100 - tail]) if s.size else (math.nan, math.nan)
        entry = {"effective_tokens": {"value": eff[a], "low": float(low), "high": float(high), "status": status}}
        if "repetition" in eff and rep.size == s.size and s.size:
            ratio = s / rep
            mlow, mhigh = np.nanpercentile(ratio, [tail, 100 - tail])
            entry["multiplier"] = {
                "value": eff[a] / eff["repetition"],
                "low": float(mlow),
                "high": float(mhigh),
                "status": status,
            }
        out["arms"][a] = entry
    return out


def _mean(xs) -> float | None:
    return float(np.mean(xs)) if len(xs) else None


def build(
    cfg,
    files,
    taught: dict,
    loop_dir: Path,
    summary: dict,
    organic_tokens: int,
    oracle_multiples: dict[str, int],
    model_cfg,
) -> dict:
    world = files.world() if hasattr(files, "world") else None  # None: your own corpus
    runs = summary["runs"]
    checkpoints = {"round 0": loop_dir / "r0" / "pretrain"}
    checkpoints.update({run: loop_dir / run / f"r{rounds[-1]['round']}" / "pretrain" for run, rounds in runs.items()})
    unique = {
        "round 0": organic_tokens,
        **{
            run: organic_tokens if run in ("synpro", "repetition") else int(run.removeprefix("oracle_")) for run in runs
        },
    }
    nll = heldout_nll(model_cfg, checkpoints, files.heldout, files.tokenizer)
    oracle_arms = {a: unique[a] for a in runs if a == "repetition" or a.startswith("oracle_")}
    effective = effective_tokens_by_documents(nll, oracle_arms, seed=cfg.seed) if len(oracle_arms) >= 3 else None
    arms = []
    for arm in checkpoints:
        rounds = runs[next(iter(runs))][:1] if arm == "round 0" else runs[arm]
        last = rounds[-1]
        e = (effective or {}).get("arms", {}).get(arm, {})
        loss = float(nll[arm]["nll"].sum() / nll[arm]["tokens"].sum())
        arms.append(
            {
                "arm": arm,
                "biographies_per_person": oracle_multiples.get(arm, 1),
                "unique_tokens": unique[arm],
                "tokens": last["tokens"],
                "heldout_loss": loss,
                "trainer_val_loss": last["val_loss"],
                "qa_accuracy": last.get("eval", {}).get("tasks", {}).get("qa", {}).get("acc"),
                "effective_tokens": e.get("effective_tokens"),
                "multiplier": e.get("multiplier"),
            }
        )
    generators = {}
    synth = loop_dir / "synpro" / "r1"
    for op in prompts.OPERATIONS:
        grpo = loop_dir / "synpro" / "r1" / f"grpo_{op}"
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
    curves = {run: _loss_curve(loop_dir, run, rounds) for run, rounds in runs.items()}
    return {
        "seed": cfg.seed,
        "people": cfg.people if world is not None else None,
        "corpus": list(cfg.corpus),
        "before_people": cfg.teach.eval_people,
        "organic_tokens": organic_tokens,
        "arms": arms,
        "fit": (effective or {}).get("fit"),
        "interval": "90% over resampled held-out biographies" if effective else None,
        "generators": generators,
        "curves": curves,
        "out_dir": str(Path(cfg.out_dir)),
    }


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

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, pts in report["curves"].items():
        if pts:
            left.plot(*zip(*pts), "-", lw=1.4, label=run)
    left.set_xlabel("pretraining tokens")
    left.set_ylabel("validation loss (held-out biographies)")
    left.set_title("loss against tokens, every arm")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    fit = report.get("fit")
    arms = {a["arm"]: a for a in report["arms"]}
    if fit:
        d = np.asarray(fit["oracle_tokens"], np.float64)
        xs = np.geomspace(d.min() / 1.5, d.max() * 2, 100)
        right.plot(xs, fit["E"] + fit["B"] * xs ** -fit["beta"], "k-", lw=1, label="fitted oracle L(D)")
        right.plot(d, fit["oracle_losses"], "ko", ms=5, label="repetition and oracle runs")
        for run in ("synpro", "repetition"):
            a = arms.get(run)
            eff = (a or {}).get("effective_tokens") or {}
            if a and eff.get("value") and math.isfinite(eff["value"]):
                right.axhline(a["heldout_loss"], ls="--", lw=0.8, color="C1" if run == "synpro" else "C0")
                right.plot(
                    [eff["value"]],
                    [a["heldout_loss"]],
                    "s",
                    ms=7,
                    label=f"{run}: {eff['value']:,.0f} tokens",
                    color="C1" if run == "synpro" else "C0",
                )
        right.set_xscale("log")
    right.set_xlabel("unique organic tokens D")
    right.set_ylabel("held-out loss after the last round")
    right.set_title("effective tokens on the oracle fit")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _interval(e: dict | None, fmt: str) -> str:
    if not e or e.get("value") is None or not math.isfinite(e["value"]):
        return "-"
    low, high = e.get("low"), e.get("high")
    iv = (
        f" [{low:{fmt}}, {high:{fmt}}]"
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
        else ""
    )
    flag = "" if e.get("status", "ok") == "ok" else f" ({e['status']})"
    return f"{e['value']:{fmt}}{iv}{flag}"


def table(report: dict) -> str:
    lines = [
        f"synpro demo, seed {report['seed']}: "
        + (f"{report['people']} people, " if report.get("people") else "")
        + f"{report['organic_tokens']:,} organic tokens; every arm after round 0 trains the same steps",
        f"{'arm':<16}{'bios/person' if report.get('people') else 'x organic':>12}{'unique tok':>12}"
        f"{'tokens':>11}{'held-out':>10}{'QA acc':>8}"
        f"  {'effective tokens [90%]':<44}{'x repetition [90%]'}",
    ]
    for a in report["arms"]:
        qa = f"{a['qa_accuracy']:.3f}" if a.get("qa_accuracy") is not None else "-"
        loss = f"{a['heldout_loss']:.4f}"
        lines.append(
            f"{a['arm']:<16}{a['biographies_per_person']:>12}{a['unique_tokens']:>12,}{a['tokens']:>11,}"
            f"{loss:>10}{qa:>8}  {_interval(a.get('effective_tokens'), ',.0f'):<44}"
            f"{_interval(a.get('multiplier'), '.2f')}"
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
                f"    synthesized: fact score {after['fact_score']:.3f}, recall {after['recall']:.3f}, "
                f"perfect {after['perfect']:.2f} of {after['records']} records; lexical support "
                f"{after['lexical_support']:.3f}"
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
