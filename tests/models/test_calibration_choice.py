"""The calibration map and window chosen on the validation window: the spline where Platt's line cannot
follow the shape, Platt where it can; reasons that still add up to the calibrated score; nothing read
after the validation window."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.contract import Export
from models.candidates import (
    BlendClassifier,
    Calibration,
    LogisticClassifier,
    calibrate,
    calibration_rows,
    choose_calibration,
    fit_candidate,
    ladder,
)
from models.estimators import calibrated_contributions, fit_log_odds_map, ramps
from models.metrics import expected_calibration_error
from training.train import LEAD_QUALITY, build_lead_model

COLS = ["x", "source"]


def _rows(n: int, seed: int, shape: str, start: str = "2025-01-01") -> pd.DataFrame:
    """``x`` drives the outcome through ``shape``: ``tanh`` (log-odds flatten at both ends: no sigmoid of a
    line in ``x`` follows it) or ``line`` (a logistic model in ``x``, which Platt scaling fits exactly)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.5, n)
    source = rng.choice(["web", "referral"], n)
    z = -0.5 + (3.0 * np.tanh(1.5 * x) if shape == "tanh" else 1.2 * x) + 0.3 * (source == "referral")
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    as_of = pd.Timestamp(start, tz="UTC") + pd.to_timedelta(rng.integers(0, 8, n) * 7, unit="D")
    return pd.DataFrame({"x": x, "source": pd.array(source, dtype="str"), "label": y, "as_of": as_of})


def _fitted(shape: str, seed: int):
    fit, cal = _rows(3000, seed, shape), _rows(3000, seed + 100, shape, "2025-03-01")
    val, test = _rows(3000, seed + 200, shape, "2025-06-01"), _rows(3000, seed + 300, shape, "2025-09-01")
    model = LogisticClassifier(["source"], C=1.0).fit(fit[COLS], fit["label"].to_numpy(), cal[COLS],
                                                     cal["label"].to_numpy())
    return model, cal, val, test


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_shape_platt_cannot_bend_picks_the_spline_and_calibrates_better(seed):
    model, cal, val, test = _fitted("tanh", seed)
    y = test["label"].to_numpy()
    platt_error = expected_calibration_error(y, model.predict_proba(test[COLS]))
    chosen = choose_calibration(model, cal, val, COLS)
    assert chosen.method == "spline"
    assert set(chosen.grid["method"]) == {"platt", "spline"} and chosen.grid["chosen"].sum() == 1
    calibrate(model, cal, COLS, chosen)
    assert model.calibration_method_ == "spline" and len(model.calib_knots_) >= 2
    spline_error = expected_calibration_error(y, model.predict_proba(test[COLS]))
    assert spline_error < platt_error - 0.01, (spline_error, platt_error)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_where_platt_is_right_it_is_kept(seed):
    model, cal, val, _ = _fitted("line", seed)
    slope, intercept = model.calib_slope_, model.calib_intercept_
    chosen = choose_calibration(model, cal, val, COLS)
    assert (chosen.method, chosen.share) == ("platt", 1.0)
    calibrate(model, cal, COLS, chosen)  # Platt on the whole window: as fitted
    assert (model.calib_slope_, model.calib_intercept_, model.calibration_method_) == (slope, intercept, "platt")


def test_the_spline_map_is_monotone_and_has_platt_as_its_start():
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-3 * np.tanh(raw)))).astype(int)
    intercept, knots, slopes = fit_log_odds_map(raw, y, "spline")
    assert len(knots) == 4 and (slopes >= 0).all()
    grid = np.linspace(-8, 8, 200)
    assert (np.diff(intercept + ramps(grid, knots) @ slopes) >= -1e-12).all()
    # too few rows of a class for a knot: Platt scaling
    few = np.zeros(4000, dtype=int)
    few[:30] = 1
    assert len(fit_log_odds_map(raw, few, "spline")[1]) == 0
    with pytest.raises(ValueError, match="isotonic"):
        fit_log_odds_map(raw, y, "isotonic")


@pytest.mark.parametrize("name", ["naive_bayes", "logistic", "lgbm_conservative", "blend"])
def test_reasons_sum_to_the_spline_calibrated_log_odds_and_keep_their_signs(name):
    fit, cal, val = _rows(3000, 5, "tanh"), _rows(2000, 6, "tanh", "2025-03-01"), _rows(500, 7, "tanh", "2025-06-01")
    rungs = {r.name: r for r in ladder(["source"], {"min_child_samples": 20}, seed=0,
                                       conservative={"min_child_samples": 20})}
    models = {n: fit_candidate(rungs[n], fit[COLS], fit["label"].to_numpy(), cal[COLS], cal["label"].to_numpy())
              for n in ("naive_bayes", "logistic", "lgbm_conservative")}
    spline = Calibration("spline", 1.0)
    for m in models.values():
        calibrate(m, cal, COLS, spline)
    if name == "blend":
        models["blend"] = calibrate(BlendClassifier([models["logistic"], models["lgbm_conservative"]]).fit(
            X_cal=cal[COLS], y_cal=cal["label"].to_numpy()), cal, COLS, spline)
    model = models[name]
    assert model.calibration_method_ == "spline"
    raw = model.contributions(val[COLS])
    out = calibrated_contributions(model, raw)
    z = model.calibrated_log_odds(model.raw_score(val[COLS]))
    np.testing.assert_allclose(out.sum(axis=1), z, atol=1e-8)  # base + reasons = the calibrated log-odds
    np.testing.assert_allclose(1 / (1 + np.exp(-z)), model.predict_proba(val[COLS]), atol=1e-12)
    # the local-slope rule: one non-negative factor per row, so signs and order within a row are kept
    assert (np.sign(out[:, :-1]) * np.sign(raw[:, :-1]) >= 0).all()


def test_the_calibration_window_is_the_most_recent_share_of_the_calibration_rows():
    cal = _rows(800, 0, "line", "2025-03-01")
    half = calibration_rows(cal, 0.5)
    times = sorted(set(cal["as_of"]))
    assert sorted(set(half["as_of"])) == times[4:]
    assert calibration_rows(cal, 1.0) is cal


def _scramble_from(export: Export, t: pd.Timestamp) -> Export:
    """The conversions at or after ``t`` of leads created before it dealt out again among those leads (the
    evaluation window's labels change, about as many convert)."""
    leads = export.leads.copy()
    late = (leads["converted_at"] >= t) & (leads["created_at"] < t)
    times = leads.loc[late, "converted_at"].to_numpy()
    leads.loc[late, "converted_at"] = np.random.default_rng(0).permutation(times)
    return dataclasses.replace(export, leads=leads)


def test_the_calibration_is_chosen_and_logged_without_reading_the_evaluation_window(trained, sample_export,
                                                                                   train_config):
    chosen = trained.chosen
    assert chosen["calibration_method"] in ("platt", "spline")
    assert chosen["calibration_window"] in ("all", "most recent 50%")
    assert trained.scorer.classifier.calibration_method_ == chosen["calibration_method"]
    assert f"calibration {chosen['calibration_method']} on the" in LEAD_QUALITY.summary(trained)
    # the evaluation window's outcomes rewritten: the same candidate and calibration are chosen
    other = build_lead_model(_scramble_from(sample_export, trained.plan.cutoff), train_config,
                             sample_export.exported_at)
    keys = ("candidate", "history_days", "half_life_days", "calibration_method", "calibration_window")
    assert {k: other.chosen[k] for k in keys} == {k: chosen[k] for k in keys}
    assert not other.evaluation["label"].equals(trained.evaluation["label"])  # the scramble did reach the labels
    assert other.candidates["validation_log_loss"].equals(trained.candidates["validation_log_loss"])


def test_a_spline_calibrated_scorer_explains_its_own_probability(lead_scorer, trained):
    scorer = copy.deepcopy(lead_scorer)
    snaps = trained.snapshots
    # every snapshot (the calibration window alone holds too few conversions for a knot on the test sample)
    calibrate(scorer.classifier, snaps, scorer.spec.feature_names, Calibration("spline", 1.0))
    assert scorer.classifier.calibration_method_ == "spline"
    X = snaps[scorer.spec.feature_names].head(300)
    c = scorer.explain(X)
    np.testing.assert_allclose(1 / (1 + np.exp(-(c.base + c.values.sum(axis=1)))), scorer.predict_proba(X),
                               atol=1e-9)
    scored = scorer.score_frame(X)
    np.testing.assert_allclose(scored["probability"], scorer.predict_proba(X), atol=1e-9)
