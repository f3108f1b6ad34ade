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

from collections.abc import Sequence
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
