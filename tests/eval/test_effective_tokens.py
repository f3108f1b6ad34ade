"""The effective-token fit: known parameters recovered from noisy synthetic oracle curves, and each edge case
(a loss under E, a loss outside the oracle runs, too few runs, a non-monotone curve) said out loud."""

import logging
import math

import numpy as np
import pytest

from synpro_jax.eval import effective_tokens as et
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


# --- the ladder reading (what the loop and the demo report) ------------------------------------------------------
TRUE = (1.0, 30.0, 0.45)  # E, B, beta
D0 = 13_500.0


def _experiment(rungs, seed, method_multiple=2.5, docs=300, run_noise=0.015):
    """Per-document losses of a ladder (repetition at D0, oracles at D0 x rung) and a method worth
    ``method_multiple`` x D0: a shared document effect, per-document noise and each run's own noise."""
    rng = np.random.default_rng(seed)
    arms = {"repetition": D0, **{f"oracle_x{r}": D0 * r for r in rungs if r != 1}, "method": D0 * method_multiple}
    doc = rng.normal(0, 0.3, docs)
    per_doc = {
        a: TRUE[0] + TRUE[1] * d ** -TRUE[2] + rng.normal(0, run_noise) + doc + rng.normal(0, 0.1, docs)
        for a, d in arms.items()
    }
    ladder = {a: d for a, d in arms.items() if a != "method"}
    return ladder, (
        lambda idx, _rng: {a: float(v[idx].mean()) if idx is not None else float(v.mean()) for a, v in per_doc.items()}
    )


@pytest.mark.slow  # 20 experiments x 300 refits: about 30 s
def test_the_ladder_interval_covers_the_true_multiplier_at_five_points():
    """20 synthetic experiments with 5 rungs (repetition and 4 oracles): the 90% interval of the method's
    multiplier over repetition holds the true 2.5 in at least 17 (the issue's bar; 3 rungs covered far fewer)."""
    covered = 0
    for seed in range(20):
        ladder, metric = _experiment([1, 1.5, 2, 3, 6], seed)
        out = et.ladder_reading(ladder, metric, items=300, resamples=300, seed=seed)
        m = out["arms"]["method"]["multiplier"]["repetition"]
        covered += m["low"] <= 2.5 <= m["high"]
        # run noise can pull the floor below 0: labelled implausible (4 of these 20), its interval still given
        assert out["fit"]["status"] in ("fitted", "implausible") and out["dof"] == 2
        assert (out["fit"]["status"] == "implausible") == (out["fit"]["E"] < 0)
        assert set(out["fit"]["residuals"]) == set(ladder)
    assert covered >= 17, covered


def test_three_points_are_an_interpolation_and_a_negative_floor_is_implausible():
    ladder, metric = _experiment([1, 2, 4], 0)
    out = et.ladder_reading(ladder, metric, items=300, resamples=50)
    assert out["fit"]["status"] == "interpolated" and out["fit"]["residual_scatter"] is None
    assert max(abs(r) for r in out["fit"]["residuals"].values()) < 1e-6
    assert out["interval"] == "90% over resampled evaluation items"
    # losses that fall faster than any positive floor allows: the fit's E goes below 0
    d = {"repetition": 1000.0, "b": 2000.0, "c": 4000.0, "e": 8000.0}
    losses = {"repetition": 3.0, "b": 1.6, "c": 0.75, "e": 0.3}
    out = et.ladder_reading(d, losses)
    assert out["fit"]["E"] < 0 and out["fit"]["status"] == "implausible"


def test_accuracy_is_read_by_monotone_interpolation_in_log_d_and_flagged_off_the_ladder():
    d = {"repetition": 100.0, "x2": 200.0, "x4": 400.0, "x8": 800.0}
    acc = {"repetition": 0.3, "x2": 0.5, "x4": 0.45, "x8": 0.7, "mid": 0.4, "top": 0.9, "low": 0.1}
    out = et.ladder_reading(d, acc, kind="accuracy")
    # x2 and x4 pool to 0.475: 0.4 lies between 0.3 (D=100) and 0.475 (D=200) at 4/7 of the way in log D
    np.testing.assert_allclose(out["arms"]["mid"]["effective_tokens"]["value"], 100 * 2 ** (0.1 / 0.175), rtol=1e-9)
    assert out["arms"]["top"]["status"] == "above_ladder" and out["arms"]["low"]["status"] == "below_ladder"
    assert out["arms"]["x8"]["multiplier"]["repetition"]["value"] == pytest.approx(8.0)
    assert out["arms"]["mid"]["multiplier"]["repetition"]["status"] == "ok"
    with pytest.raises(ValueError, match="distinct D"):
        et.ladder_reading({"repetition": 1.0, "x2": 2.0}, {"repetition": 1.0, "x2": 0.5})
