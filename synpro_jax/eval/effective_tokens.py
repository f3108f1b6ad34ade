"""Effective tokens: the unique-data scaling fit of oracle runs, and what any run's loss is worth against it.

Following the data-constrained scaling convention (``../shared/docs/reference.md``): oracle runs train on D unique
tokens and reach validation loss L; fit L(D) = E + B / D^beta; the effective tokens of any run are the D at
which the fitted oracle reaches that run's loss, D_eff = (B / (L - E))^(1 / beta); a method's multiplier is its
effective tokens divided by repetition's.

The fit is robust (scipy ``least_squares`` with a soft-L1 loss on the residuals, so one bad run does not drag the
curve) and its uncertainty comes from a bootstrap over the oracle runs: each resample of the runs is refitted, and
every reported number gets the percentile interval of its value under those fits.

Nothing is extrapolated silently. Each effective-token number carries a ``status``:
``ok`` (inside the oracle runs' loss range), ``extrapolated_below`` (a loss above every oracle run's: fewer
tokens than the smallest run), ``extrapolated_above`` (a loss below every oracle run's but above E: more tokens
than the largest run) or ``below_floor`` (a loss at or under the fitted irreducible loss E: no finite D reaches
it, the value is inf). Fewer than 3 distinct oracle token counts cannot determine 3 parameters and raise; with
exactly 3 the curve passes through them and every resample refits the same curve, so there is no interval (NaN,
and a warning: give at least 4 runs). An oracle curve that does not fall as D grows is fitted anyway and flagged
in ``ScalingFit.warnings``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import logging
import math

import numpy as np
from scipy.optimize import least_squares

__all__ = ["ScalingFit", "Estimate", "fit_oracle", "effective_tokens", "multiplier", "STATUSES"]

log = logging.getLogger(__name__)
STATUSES = ("ok", "extrapolated_below", "extrapolated_above", "below_floor")


@dataclasses.dataclass(frozen=True)
class ScalingFit:
    """L(D) = E + B / D^beta fitted to oracle runs, with the bootstrap refits (rows of E, B, beta)."""

    E: float
    B: float
    beta: float
    tokens: np.ndarray
    losses: np.ndarray
    bootstrap: np.ndarray
    warnings: tuple[str, ...] = ()

    def loss(self, tokens) -> np.ndarray:
        return _curve(np.asarray(tokens, np.float64), self.E, self.B, self.beta)

    def to_json(self) -> dict:
        low, high = np.percentile(self.bootstrap, [5, 95], axis=0) if len(self.bootstrap) else (None, None)
        interval = (lambda i: [float(low[i]), float(high[i])]) if low is not None else (lambda i: None)
        return {
            "E": self.E,
            "B": self.B,
            "beta": self.beta,
            "E_90": interval(0),
            "B_90": interval(1),
            "beta_90": interval(2),
            "oracle_tokens": self.tokens.tolist(),
            "oracle_losses": self.losses.tolist(),
            "bootstrap_fits": len(self.bootstrap),
            "warnings": list(self.warnings),
        }


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A value with its bootstrap percentile interval, and a status from STATUSES (plus why, when not ok)."""

    value: float
    low: float
    high: float
    status: str = "ok"
    note: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _curve(tokens, E, B, beta):
    return E + B * np.exp(-beta * np.log(tokens))


def _fit_once(tokens: np.ndarray, losses: np.ndarray) -> tuple[float, float, float]:
    log_d = np.log(tokens)
    floor = float(np.min(losses))
    # Start from a log-linear fit of L - E0 with E0 just under the lowest loss.
    e0 = 0.9 * floor if floor > 0 else floor - 1.0
    slope, intercept = np.polyfit(log_d, np.log(np.maximum(losses - e0, 1e-12)), 1)
    beta0 = float(np.clip(-slope, 1e-3, 4.0))
    x0 = np.array([e0, intercept, beta0])
    scale = max(float(np.std(losses)), 1e-6)

    def residuals(x):
        e, log_b, beta = x
        return (e + np.exp(log_b - beta * log_d) - losses) / scale

    result = least_squares(
        residuals, x0, loss="soft_l1", f_scale=0.1, bounds=([-np.inf, -np.inf, 1e-4], [floor, np.inf, 10.0])
    )
    e, log_b, beta = result.x
    return float(e), float(math.exp(min(log_b, 700.0))), float(beta)


def fit_oracle(tokens: Sequence[float], losses: Sequence[float], *, bootstrap: int = 500, seed: int = 0) -> ScalingFit:
    """Fit L(D) = E + B / D^beta to oracle runs (D unique tokens, final validation loss), with ``bootstrap``
    refits on resampled runs for the intervals."""
    d = np.asarray(tokens, np.float64).reshape(-1)
    loss = np.asarray(losses, np.float64).reshape(-1)
    if d.shape != loss.shape:
        raise ValueError(f"fit_oracle: {d.size} token counts but {loss.size} losses")
    if not (np.all(np.isfinite(d)) and np.all(d > 0) and np.all(np.isfinite(loss))):
        raise ValueError("fit_oracle: token counts must be positive and finite, losses finite")
    distinct = np.unique(d).size
    if distinct < 3:
        raise ValueError(
            f"fit_oracle: {distinct} distinct oracle token count(s); L(D) = E + B / D^beta has 3 "
            "parameters, so at least 3 oracle runs at different D are needed"
        )
    order = np.argsort(d, kind="stable")
    d, loss = d[order], loss[order]
    warnings = []
    rises = [(float(d[i]), float(d[i + 1])) for i in range(d.size - 1) if d[i + 1] > d[i] and loss[i + 1] >= loss[i]]
    if rises:
        warnings.append(
            f"the oracle loss does not fall as D grows between D={rises[0][0]:.4g} and "
            f"D={rises[0][1]:.4g} ({len(rises)} such step(s)): the fit is robust, but check those runs"
        )
        log.warning("effective tokens: %s", warnings[-1])
    e, b, beta = _fit_once(d, loss)
    if distinct < 4 and bootstrap:
        warnings.append(
            f"{distinct} distinct oracle token counts: the fit passes through them and every "
            "bootstrap resample refits the same curve, so no interval is reported (give at least 4)"
        )
        log.warning("effective tokens: %s", warnings[-1])
        bootstrap = 0
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(bootstrap):
        pick = rng.integers(0, d.size, d.size)
        if np.unique(d[pick]).size < 3:
            continue
        try:
            fits.append(_fit_once(d[pick], loss[pick]))
        except (ValueError, np.linalg.LinAlgError):
            continue
    return ScalingFit(e, b, beta, d, loss, np.asarray(fits, np.float64).reshape(-1, 3), tuple(warnings))


def _tokens_at(loss: float, e, b, beta):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gap = loss - np.asarray(e, np.float64)
        out = np.exp((np.log(np.asarray(b, np.float64)) - np.log(gap)) / np.asarray(beta, np.float64))
    return np.where(gap > 0, out, np.inf)


def _status(fit: ScalingFit, loss: float) -> tuple[str, str]:
    if loss <= fit.E:
        return "below_floor", (
            f"loss {loss:.4g} is at or below the fitted irreducible loss E={fit.E:.4g}: no "
            "number of unique tokens reaches it on this fit"
        )
    if loss > fit.losses.max():
        return "extrapolated_below", (
            f"loss {loss:.4g} is above every oracle run's (max {fit.losses.max():.4g}): "
            f"extrapolated below the smallest oracle run (D={fit.tokens.min():.4g})"
        )
    if loss < fit.losses.min():
        return "extrapolated_above", (
            f"loss {loss:.4g} is below every oracle run's (min {fit.losses.min():.4g}): "
            f"extrapolated beyond the largest oracle run (D={fit.tokens.max():.4g})"
        )
    return "ok", ""


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[~np.isnan(samples)]
    if not samples.size:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"):  # inf samples (a loss under some refit's E) interpolate to inf or nan
        low, high = np.percentile(samples, [tail, 100 - tail], method="nearest")
    return float(low), float(high)


def effective_tokens(fit: ScalingFit, loss: float, *, level: float = 0.9) -> Estimate:
    """The D at which the fitted oracle reaches ``loss``, with a ``level`` bootstrap interval and a status."""
    status, note = _status(fit, float(loss))
    if note:
        log.warning("effective tokens: %s", note)
    value = float(_tokens_at(float(loss), fit.E, fit.B, fit.beta))
    boot = _tokens_at(float(loss), *fit.bootstrap.T) if len(fit.bootstrap) else np.array([math.nan])
    low, high = _interval(boot, level)
    return Estimate(value, low, high, status, note)


def multiplier(fit: ScalingFit, loss: float, repetition_loss: float, *, level: float = 0.9) -> Estimate:
    """A run's effective tokens over repetition's (same fit), with a ``level`` bootstrap interval. The status is
    the worse of the two runs' (a ratio involving an extrapolated or unreachable loss says so)."""
    a, b = effective_tokens(fit, loss, level=level), effective_tokens(fit, repetition_loss, level=level)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = a.value / b.value if np.isfinite(b.value) else math.nan
        if len(fit.bootstrap):
            run = _tokens_at(float(loss), *fit.bootstrap.T)
            rep = _tokens_at(float(repetition_loss), *fit.bootstrap.T)
            # a refit where either loss is out of reach has no ratio (0 and inf alike are dropped)
            ratios = np.where(np.isfinite(run) & np.isfinite(rep), run / rep, np.nan)
        else:
            ratios = np.array([math.nan])
    low, high = _interval(ratios, level)
    worst = max((a, b), key=lambda x: STATUSES.index(x.status))
    note = "; ".join(n for n in (a.note and f"run: {a.note}", b.note and f"repetition: {b.note}") if n)
    return Estimate(float(value), low, high, worst.status, note)


# --- the oracle ladder: one reading of every arm, with intervals, as the loop and the demo report it -------------
FIT_STATUSES = ("fitted", "interpolated", "implausible")


def _plain_fit(d: np.ndarray, loss: np.ndarray, start=None) -> tuple[float, float, float]:
    """Least squares of L(D) = E + B / D^beta (no robust loss: the residuals are reported and read as noise),
    from ``start`` (E, B, beta) when given (a bootstrap refit starts from the point fit)."""
    log_d = np.log(d)
    floor = float(np.min(loss))
    if start is None:
        e0 = 0.9 * floor if floor > 0 else floor - 1.0
        slope, intercept = np.polyfit(log_d, np.log(np.maximum(loss - e0, 1e-12)), 1)
        x0 = np.array([e0, intercept, float(np.clip(-slope, 1e-3, 4.0))])
    else:
        e0, b0, beta0 = start
        x0 = np.array([min(e0, floor - 1e-6), math.log(b0), float(np.clip(beta0, 1e-3, 9.0))])
    scale = max(float(np.std(loss)), 1e-6)

    def residuals(x):
        return (x[0] + np.exp(x[1] - x[2] * log_d) - loss) / scale

    def jacobian(x):
        p = np.exp(x[1] - x[2] * log_d)
        return np.stack([np.ones_like(p), p, -p * log_d], axis=1) / scale

    result = least_squares(residuals, x0, jac=jacobian, bounds=([-np.inf, -np.inf, 1e-4], [floor, np.inf, 10.0]))
    e, log_b, beta = result.x
    return float(e), float(math.exp(min(log_b, 700.0))), float(beta)


def _isotonic(y: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in squared error (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def _tokens_on_ladder(d: np.ndarray, score: np.ndarray, value: float) -> tuple[float, str]:
    """The D at which the ladder (``d`` ascending, ``score`` made non-decreasing) reaches ``value``, linear in
    log D between rungs; ("inf"/0, a status) off the ladder's range."""
    mono = _isotonic(score)
    if value > mono[-1]:
        return math.inf, "above_ladder"
    if value < mono[0]:
        return 0.0, "below_ladder"
    i = int(np.searchsorted(mono, value, side="left"))
    if mono[i] == value or i == 0:  # on a rung (the first rung reaching it: a flat run takes its start)
        return float(d[i]), "ok"
    lo, hi = mono[i - 1], mono[i]
    t = (value - lo) / (hi - lo)
    return float(math.exp(math.log(d[i - 1]) + t * (math.log(d[i]) - math.log(d[i - 1])))), "ok"


def ladder_reading(
    oracle_tokens: dict[str, float],
    metric: Callable[[np.ndarray | None, np.random.Generator | None], dict[str, float]] | dict[str, float],
    *,
    kind: str = "loss",
    references: Sequence[str] = ("repetition",),
    resamples: int = 1000,
    level: float = 0.9,
    seed: int = 0,
    items: int | None = None,
) -> dict:
    """Every arm's effective tokens on the oracle ladder, and its multiplier over each of ``references``.

    ``oracle_tokens`` maps the ladder's arms (repetition is the rung at the organic tokens) to the unique organic
    tokens D each read. ``metric`` gives every arm's value (ladder arms included): a dict, or a function of an
    index array over ``items`` evaluation items (None: all of them) that the bootstrap resamples.

    - ``kind="loss"``: the fit L(D) = E + B / D^beta through the ladder, by least squares. Its ``status`` is
      ``fitted`` only with at least 4 distinct D (a degree of freedom) and E >= 0; ``interpolated`` for exactly 3
      points (the curve passes through them: no residuals, no scatter); ``implausible`` for E < 0. Residuals are
      reported. Intervals: each resample draws the items again and adds, to every arm's loss, normal noise for
      the run-to-run scatter the items cannot show: the fit's residual variance beyond what the items explain,
      its scale drawn per resample from its posterior over the fit's few degrees of freedom (a scaled inverse
      chi-square, so 2 degrees of freedom give the wide interval they should), then refits.
    - ``kind="accuracy"``: monotone interpolation in log D between the ladder's rungs (their accuracies made
      non-decreasing); an arm above the top rung or below the first is flagged, not extrapolated. Intervals:
      items resampled.
    """
    if kind not in ("loss", "accuracy"):
        raise ValueError(f"ladder_reading kind={kind!r}: 'loss' or 'accuracy'")
    ladder = sorted(oracle_tokens, key=lambda a: oracle_tokens[a])
    d = np.asarray([oracle_tokens[a] for a in ladder], np.float64)
    if np.unique(d).size < 3:
        raise ValueError(
            f"ladder_reading: {np.unique(d).size} distinct D on the ladder ({ladder}); at least 3, and 4 for a fit "
            "with a degree of freedom"
        )
    point = dict(metric(None, None)) if callable(metric) else dict(metric)
    arms = list(point)
    missing = [a for a in ladder + list(references) if a not in point]
    if missing:
        raise ValueError(f"ladder_reading: no value for {missing}")

    def read(values: dict[str, float], start=None) -> tuple[dict, dict[str, float], dict[str, str]]:
        y = np.asarray([values[a] for a in ladder], np.float64)
        if kind == "loss":
            e, b, beta = _plain_fit(d, y, start)
            tokens = {a: float(_tokens_at(values[a], e, b, beta)) for a in arms}
            fit = {"E": e, "B": b, "beta": beta}
            status = {}
            for a in arms:
                if values[a] <= e:
                    status[a] = "below_floor"
                elif values[a] > y.max():
                    status[a] = "extrapolated_below"
                elif values[a] < y.min():
                    status[a] = "extrapolated_above"
                else:
                    status[a] = "ok"
            return fit, tokens, status
        out = {a: _tokens_on_ladder(d, y, values[a]) for a in arms}
        return {}, {a: v for a, (v, _) in out.items()}, {a: s for a, (_, s) in out.items()}

    fit, tokens, status = read(point)
    y = np.asarray([point[a] for a in ladder], np.float64)
    dof = int(np.unique(d).size - 3)
    result: dict = {"kind": kind, "ladder": {a: float(oracle_tokens[a]) for a in ladder}, "dof": dof}
    noise = 0.0
    if kind == "loss":
        residuals = y - _curve(d, fit["E"], fit["B"], fit["beta"])
        scatter = math.sqrt(float(np.sum(residuals**2)) / dof) if dof else None
        fit_status = "implausible" if fit["E"] < 0 else "fitted" if dof else "interpolated"
        result["fit"] = {
            **fit,
            "status": fit_status,
            "residuals": {a: float(r) for a, r in zip(ladder, residuals)},
            "residual_scatter": scatter,
            "oracle_tokens": d.tolist(),
            "oracle_losses": y.tolist(),
        }
        if scatter is not None and callable(metric) and items:
            # the part of the scatter the items' own resampling does not explain: run-to-run noise
            rng = np.random.default_rng([seed, 1])
            spread = [metric(rng.integers(0, items, items), rng) for _ in range(50)]
            # items shared by every arm shift them together, which the fit's E absorbs: only the spread of each
            # rung around the ladder's mean is item noise in the residuals
            centred = np.asarray([[s[a] for a in ladder] for s in spread])
            centred -= centred.mean(axis=1, keepdims=True)
            item_var = float(np.mean(np.var(centred, axis=0)))
            noise = math.sqrt(max(scatter**2 - item_var, 0.0))
        elif scatter is not None:
            noise = scatter
        result["fit"]["run_noise"] = noise
    start = (fit["E"], fit["B"], fit["beta"]) if kind == "loss" else None
    samples: dict[str, list[float]] = {a: [] for a in arms}
    rng = np.random.default_rng(seed)
    for _ in range(resamples if (callable(metric) and items) or noise else 0):
        values = dict(metric(rng.integers(0, items, items), rng)) if callable(metric) and items else dict(point)
        if noise:
            sigma = noise * math.sqrt(dof / rng.chisquare(dof))
            values = {a: v + float(rng.normal(0.0, sigma)) for a, v in values.items()}
        try:
            _, t, _ = read(values, start)
        except (ValueError, RuntimeError, np.linalg.LinAlgError):
            continue
        for a in arms:
            samples[a].append(t[a])
    parts = []
    if callable(metric) and items:
        parts.append("resampled evaluation items")
    if noise:
        parts.append("the fit's residual scatter as run noise")
    result["interval"] = f"{level:.0%} over " + " and ".join(parts) if parts else None
    result["arms"] = {}
    for a in arms:
        s = np.asarray(samples[a], np.float64)
        low, high = _interval(s, level) if s.size else (math.nan, math.nan)
        entry = {"value": point[a], "effective_tokens": {"value": tokens[a], "low": low, "high": high}}
        entry["status"] = status[a]
        entry["multiplier"] = {}
        for ref in references:
            r = np.asarray(samples[ref], np.float64)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                value = tokens[a] / tokens[ref] if 0 < tokens[ref] < math.inf else math.nan
                ratio = np.where(np.isfinite(s) & np.isfinite(r) & (r > 0), s / r, np.nan) if s.size else s
            mlow, mhigh = _interval(ratio, level) if s.size else (math.nan, math.nan)
            worst = max((status[a], status[ref]), key=lambda x: (x != "ok", x))
            entry["multiplier"][ref] = {"value": value, "low": mlow, "high": mhigh, "status": worst}
        result["arms"][a] = entry
    return result
