"""Drift for the deal models: the timing models' history and recency weighting chosen on the
validation window, and the base-rate shift of "won within the horizon" detected and corrected."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from training.deals import (
    DealTrainConfig,
    choose_timing,
    fit_and_calibration_rows,
    fit_deal_scorer,
    latest_decided,
    shift_win_rate,
    timing_models,
    win_outcomes,
    win_rate_shift,
)

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def cfg() -> DealTrainConfig:
    return DealTrainConfig(snapshot_every_days=28, seed=3, timing_layout="competing_risks", timing_lgbm="current")


@pytest.fixture(scope="module")
def hazard(deal_snapshot_frame, cfg, sample_export):
    _, snaps = deal_snapshot_frame
    return fit_and_calibration_rows(snaps, sample_export.exported_at, cfg)["hazard"]


def test_history_keeps_only_the_latest_fit_rows(deal_snapshot_frame, cfg, hazard):
    """history_days cuts the timing models' fit rows to the last days before their latest snapshot:
    the same model as one fitted on those rows alone; a half-life weights rows and changes the model."""
    spec, _ = deal_snapshot_frame
    fit, cal = hazard
    cols = [*spec.feature_names, "period"]
    days = 365
    latest = fit["as_of"].max()
    assert fit["as_of"].min() < latest - days * DAY  # the cut removes rows
    cut = timing_models(spec, replace(cfg, history_days=days), fit, cal, cols)
    alone = timing_models(spec, cfg, fit[fit["as_of"] >= latest - days * DAY], cal, cols)
    X = cal[cols].head(200)
    np.testing.assert_allclose(cut[0].predict_proba(X), alone[0].predict_proba(X))
    weighted = timing_models(spec, replace(cfg, half_life_days=60), fit, cal, cols)
    plain = timing_models(spec, cfg, fit, cal, cols)
    assert not np.allclose(weighted[0].predict_proba(X), plain[0].predict_proba(X))


def test_history_is_chosen_on_the_validation_window_and_kept_in_the_scorer(deal_snapshot_frame, cfg,
                                                                          sample_export):
    """choose_timing tries every history and weighting point beside the base one on the validation
    window and keeps one only if it lowers the criterion by more than one
    paired standard error; the fitted scorer records what it used."""
    spec, snaps = deal_snapshot_frame
    cutoff = sample_export.exported_at
    fixed, choice = choose_timing(snaps, spec, cutoff, cfg)
    grid = pd.DataFrame(choice["history"])
    assert grid.iloc[0][["history_days", "half_life_days"]].tolist() == ["all", "none"]
    assert len(grid) >= 2 and grid["validation_log_loss"].notna().all()
    if fixed.history_days is not None or fixed.half_life_days is not None:  # a point kept lowers the criterion
        point = grid[(grid["history_days"] == (fixed.history_days or "all"))
                     & (grid["half_life_days"] == (fixed.half_life_days or "none"))]
        assert len(point) == 1 and point["validation_log_loss"].iloc[0] < grid["validation_log_loss"].iloc[0] - 1e-4
    assert not fixed.choose_history
    scorer = fit_deal_scorer(sample_export, snaps, spec, cutoff, cfg, surrogate=False)
    assert (scorer.metadata["history_days"], scorer.metadata["half_life_days"]) == (fixed.history_days,
                                                                                   fixed.half_life_days)
    off = fit_deal_scorer(sample_export, snaps, spec, cutoff, replace(cfg, choose_history=False, timing_calendar=True),
                          surrogate=False)  # nothing left to choose
    assert off.metadata["history_days"] is None and off.metadata["timing_choice"] is None


def test_base_rate_shift_is_detected_only_when_sharp(deal_snapshot_frame, cfg, sample_export):
    """The rate of won within the horizon in training against the evaluation window: no warning on
    the sample as it is; a sharp one when only one snapshot in twenty of the window is said to be won."""
    from models.folds import Split

    _, snaps = deal_snapshot_frame
    fold = cfg.fold
    split: Split = fold.split(snaps["as_of"], sample_export.exported_at)
    rows = snaps[snaps["as_of"].isin(split.evaluate)]
    ev = rows[["opportunity_id", "as_of"]].assign(
        won_within_horizon=win_outcomes(rows, sample_export.exported_at, cfg.horizon_days)["won_within_horizon"])
    assert win_rate_shift(snaps, split.cutoff, ev, cfg.horizon_days) is None
    rare = (np.arange(len(ev)) % 20 == 0).astype(int)  # a 5% rate of won within the horizon
    message = win_rate_shift(snaps, split.cutoff, ev.assign(won_within_horizon=rare), cfg.horizon_days)
    assert message is not None
    assert float(re.search(r"to ([0-9.]+)%", message).group(1)) == pytest.approx(5.0, abs=1.0)  # rounded to whole deals


def test_shift_moves_the_mean_p_won_within_the_horizon_to_the_rate(deal_snapshot_frame, cfg, sample_export):
    spec, snaps = deal_snapshot_frame
    cutoff = sample_export.exported_at
    scorer = fit_deal_scorer(sample_export, snaps, spec, cutoff, replace(cfg, choose_history=False),
                             surrogate=False)
    latest = latest_decided(snaps, cutoff, cfg)
    assert len(latest) and (latest["as_of"] + cfg.horizon_days * DAY <= cutoff).all()
    X = latest[spec.feature_names]
    before = scorer.predict(X)
    target = float(np.clip(before["p_win_within_horizon"].mean() * 0.7, 0.01, 0.99))
    b = shift_win_rate(scorer, X, target)
    after = scorer.predict(X)
    assert b < 0
    assert after["p_win_within_horizon"].mean() == pytest.approx(target, abs=2e-3)
    assert (after["p_win"] <= before["p_win"] + 1e-12).all()


def test_a_sharp_shift_in_the_latest_decided_window_moves_the_fit(deal_snapshot_frame, cfg, sample_export):
    """correct_base_rate at a fit: nothing on the sample as it is; when the latest decided window's
    deals are said to be lost but one in four, the win model moves to that rate, and says so."""
    from training.deals import correct_base_rate

    spec, snaps = deal_snapshot_frame
    cutoff = sample_export.exported_at
    c = replace(cfg, choose_history=False)
    scorer = fit_deal_scorer(sample_export, snaps, spec, cutoff, c, surrogate=False)
    correct_base_rate(scorer, snaps, cutoff, c)
    assert "base_rate_shift" not in scorer.metadata
    latest = latest_decided(snaps, cutoff, c)
    lost = snaps.copy()
    m = lost.index.isin(latest.index) & (np.arange(len(lost)) % 4 != 0)
    lost.loc[m, "won"] = 0.0  # decided as lost in the latest window
    correct_base_rate(scorer, lost, cutoff, c)
    assert scorer.metadata["base_rate_shift"] < 0 and "positive rate moved" in scorer.metadata["base_rate_note"]
    rate = win_outcomes(latest_decided(lost, cutoff, c), cutoff, c.horizon_days)["won_within_horizon"].mean()
    p = scorer.predict(latest[spec.feature_names])["p_win_within_horizon"].mean()
    assert p == pytest.approx(rate, abs=3e-3)


def test_the_validation_window_shortens_until_the_candidates_can_be_fitted_before_it(deal_snapshot_frame, cfg):
    """A young export whose first deals closed recently: the longest validation window leaves no close
    to fit on before it, so it shortens a snapshot step at a time (never below two steps)."""
    from training.deals import _validation_rows, validation_lengths

    weekly = replace(cfg, snapshot_every_days=7, eval_days=42)
    assert validation_lengths(weekly) == [42, 35, 28, 21, 14]
    assert validation_lengths(replace(cfg, snapshot_every_days=28, eval_days=91)) == [91, 63]
    _, snaps = deal_snapshot_frame
    cutoff = pd.Timestamp(snaps["as_of"].max())
    full = _validation_rows(snaps, cutoff, cfg)
    assert full["hazard"] is not None and len(full["window"]) >= 2
    # hide every close more than 120 days before the full window: it leaves too few before it, a shorter one enough
    closes = pd.to_datetime(snaps["closed_at"])
    young = snaps.copy()
    young.loc[closes < full["window"][0] - 120 * DAY, ["closed_at", "won", "won_amount"]] = [pd.NaT, np.nan, np.nan]
    val = _validation_rows(young, cutoff, cfg)
    assert val["hazard"] is not None and val["note"] is None
    assert len(val["window"]) < len(full["window"]) and val["window"][-1] == full["window"][-1]
    for part in val["hazard"]:  # what the candidates are fitted on holds enough wins and losses, before the window
        assert part["won_label"].sum() >= 10 and part["lost_label"].sum() >= 10
        assert (part["as_of"] < val["window"][0]).all()
    # with no close left before the shortest window either, the choice says so and keeps the default
    young.loc[closes < full["window"][-1], ["closed_at", "won", "won_amount"]] = [pd.NaT, np.nan, np.nan]
    assert _validation_rows(young, cutoff, cfg)["hazard"] is None


def test_candidates_within_a_tie_are_told_apart_by_their_validation_auc():
    from training.deals import _best

    table = {"a": {"validation_log_loss": 0.62130, "validation_roc_auc": 0.70},
             "b": {"validation_log_loss": 0.62125, "validation_roc_auc": 0.69},
             "c": {"validation_log_loss": 0.70, "validation_roc_auc": 0.90}, "d": {"error": "too few"}}
    assert _best(table) == "a"  # b is lower by less than TIE: a tie, and a ranks better
    table["b"]["validation_log_loss"] = 0.6200
    assert _best(table) == "b"
    assert _best({"d": {"error": "too few"}}) is None


def test_choices_are_made_on_a_seeded_subset_of_whole_deals(deal_snapshot_frame, cfg):
    from training.deals import choice_sample

    _, snaps = deal_snapshot_frame
    n = snaps["opportunity_id"].nunique()
    assert choice_sample(snaps, cfg) is snaps  # the default cap is above the sample's deals: every row
    small = replace(cfg, choice_max_deals=n // 3)
    sub = choice_sample(snaps, small)
    assert sub["opportunity_id"].nunique() == n // 3
    kept = snaps[snaps["opportunity_id"].isin(sub["opportunity_id"].unique())]
    pd.testing.assert_frame_equal(sub, kept)  # every row of each kept deal, in order
    assert sub.equals(choice_sample(snaps, small))  # seeded
    assert not sub["opportunity_id"].unique().tolist() == choice_sample(snaps, replace(small, seed=4))[
        "opportunity_id"].unique().tolist()
