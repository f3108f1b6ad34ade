"""The effective-token fit: known parameters recovered from noisy synthetic oracle curves, and each edge case
(a loss under E, a loss outside the oracle runs, too few runs, a non-monotone curve) said out loud."""

import logging
import math

import numpy as np
import pytest

from synpro_jax.eval.effective_tokens import effective_tokens, fit_oracle, multiplier

E, B, BETA = 2.0, 400.0, 0.35
D = np.logspace(6, 9, 8)


def oracle_losses(noise=0.004, seed=0, outlier=False):
    rng = np.random.default_rng(seed)
    loss = E + B / D**BETA + noise * rng.standard_normal(D.size)
    if outlier:
        loss[6] += 0.3  # one broken run
    return loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_recovers_known_parameters_from_noisy_curves(seed):
    fit = fit_oracle(D, oracle_losses(seed=seed), bootstrap=100, seed=seed)
    assert fit.E == pytest.approx(E, abs=0.08)
    assert fit.beta == pytest.approx(BETA, abs=0.05)
    assert fit.warnings == ()
    assert len(fit.bootstrap) >= 80
    # Effective tokens of a run at the true curve's loss for 30M tokens: near 30M, inside its interval.
    target = 3e7
    est = effective_tokens(fit, E + B / target**BETA)
    assert est.status == "ok" and est.note == ""
    assert est.value == pytest.approx(target, rel=0.25)
    assert est.low <= target <= est.high or est.low <= est.value <= est.high
    # Multiplier: a run worth 4x repetition's tokens reads as ~4x.
    rep, syn = 2e7, 8e7
    m = multiplier(fit, E + B / syn**BETA, E + B / rep**BETA)
    assert m.status == "ok" and m.value == pytest.approx(4.0, rel=0.15) and m.low <= m.value <= m.high


def test_one_broken_run_does_not_drag_the_robust_fit():
    fit = fit_oracle(D, oracle_losses(seed=3, outlier=True), bootstrap=0)
    assert fit.E == pytest.approx(E, abs=0.1) and fit.beta == pytest.approx(BETA, abs=0.06)
    assert fit.warnings  # the broken run makes the curve rise between two runs, and that is flagged
    assert "does not fall as D grows" in fit.warnings[0]


def test_losses_outside_the_oracle_runs_are_flagged_not_silently_extrapolated(caplog):
    fit = fit_oracle(D, oracle_losses(seed=4), bootstrap=50)
    with caplog.at_level(logging.WARNING):
        below = effective_tokens(fit, fit.E - 0.01)
        high = effective_tokens(fit, fit.losses.max() + 0.5)
        low = effective_tokens(fit, (fit.losses.min() + fit.E) / 2)
    assert below.status == "below_floor" and math.isinf(below.value) and "irreducible loss E" in below.note
    assert high.status == "extrapolated_below" and high.value < D.min() and "above every oracle run" in high.note
    assert low.status == "extrapolated_above" and low.value > D.max() and "below every oracle run" in low.note
    assert sum("effective tokens:" in r.message for r in caplog.records) == 3
    m = multiplier(fit, fit.E - 0.01, fit.losses.mean())
    assert m.status == "below_floor" and "run: loss" in m.note
    m = multiplier(fit, fit.losses.mean(), fit.losses.max() + 0.5)
    assert m.status == "extrapolated_below" and "repetition: loss" in m.note


def test_too_few_or_bad_oracle_runs_are_refused():
    with pytest.raises(ValueError, match="at least 3 oracle runs"):
        fit_oracle(D[:2], oracle_losses()[:2])
    with pytest.raises(ValueError, match="at least 3 oracle runs"):
        fit_oracle([1e6, 1e6, 1e7, 1e7], [3.0, 3.1, 2.9, 2.8])  # 4 runs, 2 distinct D
    with pytest.raises(ValueError, match="positive and finite"):
        fit_oracle([0, 1e6, 1e7], [3.0, 2.9, 2.8])
    with pytest.raises(ValueError, match="3 token counts but 2 losses"):
        fit_oracle([1e6, 1e7, 1e8], [3.0, 2.9])


def test_three_oracle_runs_fit_exactly_and_give_no_interval():
    fit = fit_oracle(D[[0, 3, 7]], (E + B / D**BETA)[[0, 3, 7]], bootstrap=50)
    assert len(fit.bootstrap) == 0 and "no interval is reported" in fit.warnings[0]
    est = effective_tokens(fit, E + B / 3e7**BETA)
    assert est.status == "ok" and est.value == pytest.approx(3e7, rel=0.05)
    assert math.isnan(est.low) and math.isnan(est.high)
    assert math.isnan(multiplier(fit, fit.losses.mean(), fit.losses.max()).low)


def test_a_non_monotone_oracle_curve_is_fitted_and_flagged():
    loss = E + B / D**BETA
    loss[5], loss[6] = loss[6], loss[5]  # two runs swapped: the curve rises once
    fit = fit_oracle(D, loss, bootstrap=20)
    assert len(fit.warnings) == 1 and f"D={D[5]:.4g}" in fit.warnings[0]
    assert np.isfinite([fit.E, fit.B, fit.beta]).all()
    assert fit.to_json()["warnings"] == list(fit.warnings)
