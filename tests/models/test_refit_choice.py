"""Refitting on the calibration window: every rung learns again with its settings and keeps its map, and the
validation window decides whether it is done (a drift the fit window does not show makes it win)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest

from models.candidates import BlendClassifier, CALIBRATION_STATE, choose_on_validation, fit_candidate, fit_every, ladder

CATS = ["source"]
COLS = ["source", "visits", "size"]
CUTOFF = pd.Timestamp("2026-01-01", tz="UTC")


def _rows(n: int, seed: int, start_days: int, end_days: int, referral: float) -> pd.DataFrame:
    """Rows whose ``as_of`` lies between ``start_days`` and ``end_days`` before the cutoff; ``referral``: the
    log-odds effect of the referral source (what drifts)."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["web", "referral", "event"], n)
    visits = rng.poisson(2, n).astype(float)
    size = rng.lognormal(3, 1.0, n)
    z = -1.5 + referral * (source == "referral") + 0.3 * visits + 0.1 * np.log(size)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    as_of = CUTOFF - pd.to_timedelta(rng.integers(end_days, start_days, n), unit="D")
    return pd.DataFrame({"source": pd.array(source, dtype="str"), "visits": visits, "size": size,
                         "label": y, "as_of": as_of, "lead_id": [f"L{seed}-{i}" for i in range(n)]})


def _rungs():
    return ladder(CATS, {"min_child_samples": 20}, seed=0, conservative={"min_child_samples": 20})


@pytest.mark.parametrize("name", ["naive_bayes", "logistic", "lgbm_conservative", "lgbm", "blend"])
def test_a_refit_learns_from_the_new_rows_and_keeps_the_calibration_map(name):
    fit, cal = _rows(2000, 0, 400, 120, 0.0), _rows(1500, 1, 120, 30, 1.5)
    rungs = {r.name: r for r in _rungs()}
    fitted = {n: fit_candidate(r, fit[COLS], fit["label"].to_numpy(), cal[COLS], cal["label"].to_numpy())
              for n, r in rungs.items() if n in ("logistic", "lgbm", name)}
    model = fitted[name] if name != "blend" else BlendClassifier([fitted["logistic"], fitted["lgbm"]]).fit(
        X_cal=cal[COLS], y_cal=cal["label"].to_numpy())
    before = {k: copy.deepcopy(getattr(model, k)) for k in CALIBRATION_STATE if hasattr(model, k)}
    both = pd.concat([fit, cal])
    referral = cal[COLS].assign(source="referral").head(50)
    r0 = model.raw_score(referral)
    again = copy.deepcopy(model).refit(both[COLS], both["label"].to_numpy())
    for k, v in before.items():
        np.testing.assert_array_equal(np.asarray(getattr(again, k)), np.asarray(v), err_msg=k)
    # the calibration rows, where referral raises the odds, pull the referral leads' raw scores up
    assert again.raw_score(referral).mean() > r0.mean() + 0.05
    c = again.contributions(referral)
    np.testing.assert_allclose(c.sum(axis=1), again.raw_score(referral), atol=1e-8)
    if name == "logistic":
        assert again.C_ == model.C_  # the strength the calibration window chose, not chosen again


def test_a_drift_only_the_calibration_window_shows_makes_the_refit_win_and_fit_every_applies_it():
    # referrals started to convert: the fit window is the old world, calibration and validation the new one, so
    # the map (a slope and a level) cannot make up for an effect the fitted model never saw
    fit, cal, val = (_rows(3000, 10, 500, 150, 0.0), _rows(1500, 11, 150, 60, 1.5), _rows(1500, 12, 60, 1, 1.5))
    rungs = [r for r in _rungs() if r.name == "logistic"]
    choice = choose_on_validation(rungs, fit, cal, val, COLS, CUTOFF, groups="lead_id", histories=(None,),
                                  half_lives=(None,), refit=True)  # all the history, unweighted: the refit alone
    assert choice.refit and "refitted (gain" in choice.refit_note
    assert choice.params()["refit_on_calibration"] == "yes"
    refitted = fit_every(rungs, choice, fit, cal, COLS, CUTOFF)["logistic"]
    plain = fit_every(rungs, dataclasses.replace(choice, refit=False), fit, cal, COLS, CUTOFF)["logistic"]
    y = val["label"].to_numpy()
    loss = {k: -np.mean(y * np.log(m.predict_proba(val[COLS])) + (1 - y) * np.log(1 - m.predict_proba(val[COLS])))
            for k, m in (("refit", refitted), ("plain", plain))}
    assert loss["refit"] < loss["plain"]
    off = choose_on_validation(rungs, fit, cal, val, COLS, CUTOFF, groups="lead_id", refit=False)
    assert not off.refit and off.params()["refit_on_calibration"] == "no"
    from training.train import TrainConfig

    assert TrainConfig().choose_refit is False  # off by default (docs/benchmarks.md says why)
    # with the default grid the same drift makes a recency weighting win first; the refit, which leans on the
    # recent rows too and was not chosen beside it, is then not tried
    weighted = choose_on_validation(rungs, fit, cal, val, COLS, CUTOFF, groups="lead_id", refit=True)
    assert weighted.half_life_days is not None and not weighted.refit and "not tried" in weighted.refit_note


@pytest.mark.parametrize("seed", range(3))
def test_a_stationary_history_is_not_refitted_for_a_noise_level_gain(seed):
    fit = _rows(4000, 20 + seed, 700, 150, 1.0)
    cal, val = _rows(600, 30 + seed, 150, 60, 1.0), _rows(1500, 40 + seed, 60, 1, 1.0)
    rungs = [r for r in _rungs() if r.name == "logistic"]
    choice = choose_on_validation(rungs, fit, cal, val, COLS, CUTOFF, groups="lead_id", histories=(None,),
                                  half_lives=(None,), refit=True)
    assert not choice.refit and "gain" in choice.refit_note, choice.refit_note
