"""Training the deal models on the small sample: censoring, scores, reasons, point-in-time
scoring, the MLflow round trip and the commands (train --task stage_conversion, score --task stage_conversion, forecast,
funnel, backtest)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import Export
from features.deals import open_opportunities
from models.deals import DealScorer, score_open_deals
from training.deals import (
    DealTrainConfig,
    build_deal_model,
    censored,
    fit_and_calibration_rows,
    hazard_rows,
    next_stage_rows,
)

DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def deal_cfg() -> DealTrainConfig:
    return DealTrainConfig(snapshot_every_days=28, seed=7)


@pytest.fixture(scope="module")
def deal_result(sample_export, deal_cfg):
    return build_deal_model(sample_export, deal_cfg, sample_export.exported_at)


def test_labels_are_censored_at_the_cutoff(deal_result, deal_cfg):
    snaps = deal_result.snapshots
    cutoff = snaps["as_of"].sort_values().unique()[len(snaps["as_of"].unique()) // 2]
    cutoff = pd.Timestamp(cutoff)
    c = censored(snaps, cutoff)
    assert (c["as_of"] < cutoff).all()
    assert not (c["closed_at"] >= cutoff).any() and not (c["next_stage_at"] >= cutoff).any()
    hz = hazard_rows(snaps, cutoff, deal_cfg.period_days, deal_cfg.n_periods)
    ends = hz["as_of"] + pd.to_timedelta((hz["period"] + 1) * deal_cfg.period_days, unit="D")
    assert (ends <= cutoff).all()
    # deals still open at the cutoff are kept (censored), not dropped
    open_at_cut = c[c["closed_at"].isna()]["opportunity_id"]
    assert hz["opportunity_id"].isin(open_at_cut).any()
    ns = next_stage_rows(snaps, cutoff, deal_cfg.horizon_days)
    assert (ns["as_of"] + pd.Timedelta(days=deal_cfg.horizon_days) <= cutoff).all()
    # a deal that closes after the cutoff has no event in any hazard row
    later = snaps[(snaps["closed_at"] >= cutoff) & (snaps["as_of"] < cutoff)]["opportunity_id"].unique()
    assert hz[hz["opportunity_id"].isin(later)]["closed"].sum() == 0


def test_fit_rows_know_nothing_of_the_calibration_window(deal_result, deal_cfg, sample_export):
    """The timing model's fit rows end, and are censored, where its calibration window starts: a
    deal that closes inside the window is still open in every fit row (no memorised outcome)."""
    snaps = deal_result.snapshots
    cutoff = sample_export.exported_at
    rows = fit_and_calibration_rows(snaps, cutoff, deal_cfg)
    calib = pd.Timedelta(days=rows["calib_days"])
    start = cutoff - pd.Timedelta(days=deal_cfg.period_days) - calib
    fit, cal = rows["hazard"]
    assert len(fit) and len(cal) and cal["closed"].sum() > 0
    ends = fit["as_of"] + pd.to_timedelta((fit["period"] + 1) * deal_cfg.period_days, unit="D")
    assert (ends <= start).all() and (cal["as_of"] > start).all()
    inside = snaps[(snaps["closed_at"] >= start) & (snaps["closed_at"] < cutoff)]["opportunity_id"].unique()
    assert fit["opportunity_id"].isin(inside).any()
    assert fit[fit["opportunity_id"].isin(inside)]["closed"].sum() == 0
    assert cal[cal["opportunity_id"].isin(inside)]["closed"].sum() > 0
    # the next-stage fit rows likewise: their horizon ends, and their labels are censored, where
    # the next-stage calibration window starts
    ns_fit, ns_cal = rows["next_stage"]
    h = pd.Timedelta(days=deal_cfg.horizon_days)
    ns_start = cutoff - h - calib
    assert len(ns_fit) and (ns_fit["as_of"] + h <= ns_start).all()
    assert not (ns_fit["next_stage_at"] >= ns_start).any()
    assert (ns_cal["as_of"] > ns_start).all() and (ns_cal["as_of"] + h <= cutoff).all() and len(ns_cal)


def test_scores_are_coherent_and_reasons_add_up(deal_result, sample_export):
    scorer = deal_result.scorer
    as_of = sample_export.exported_at
    scored, opps = score_open_deals(sample_export, scorer, as_of)
    assert len(scored) == len(opps) > 10
    for c in ("p_win", "p_win_within_horizon", "p_next_stage"):
        assert scored[c].between(0, 1).all()
    assert (scored["p_win_within_horizon"] <= scored["p_win"] + 1e-12).all()
    assert (scored["expected_close_date"] >= as_of.floor("D")).all()
    assert np.allclose(scored["expected_value"], scored["p_win"] * scored["amount"])
    assert scored["amount"].notna().all()
    X, _ = scorer.features(opps, sample_export.stage_history, sample_export.activities, sample_export.leads,
                           sample_export.accounts, as_of)
    contrib = scorer.surrogate.contributions(X)
    from models.explain import log_odds_contributions, to_probability

    base = to_probability(log_odds_contributions(contrib, scorer.surrogate.feature_names_)).base
    reasons = scorer.reasons(X, scored["p_win"].to_numpy(), n_reasons=len(X.columns))
    total = np.array([sum(r["contribution"] for r in row) for row in reasons])
    assert np.allclose(base + total, scored["p_win"], atol=1e-9)
    assert all(isinstance(r[0]["text"], str) and "probability" in r[0]["text"] for r in reasons)
    # the metrics were measured against the stage win rate on the same rows
    assert deal_result.metrics["win_h_n"] == deal_result.baseline_metrics["win_h_n"] > 0


def test_scoring_ignores_rows_after_as_of(deal_result, sample_export):
    scorer = deal_result.scorer
    as_of = sample_export.exported_at
    base, _ = score_open_deals(sample_export, scorer, as_of, n_reasons=0)
    rng = np.random.default_rng(0)
    hist = sample_export.stage_history
    ids = base["opportunity_id"].to_numpy()
    junk = pd.DataFrame({"opportunity_id": rng.choice(ids, 50), "stage": "won",
                         "entered_at": as_of + pd.to_timedelta(rng.uniform(0, 30, 50), unit="D"),
                         "amount": 1e9, "expected_close_date": as_of})
    opps = sample_export.opportunities.assign(amount=1.0, stage="contract")
    changed = Export(accounts=sample_export.accounts, leads=sample_export.leads, opportunities=opps,
                     stage_history=pd.concat([hist, junk[hist.columns]], ignore_index=True),
                     activities=sample_export.activities, reps=sample_export.reps,
                     open_stages=sample_export.open_stages, exported_at=sample_export.exported_at)
    again, _ = score_open_deals(changed, scorer, as_of, n_reasons=0)
    pd.testing.assert_frame_equal(base.drop(columns="warnings"), again.drop(columns="warnings"))


def test_scoring_before_the_cutoff_is_refused(deal_result, sample_export):
    from features.errors import InvalidRecord

    early = sample_export.exported_at - 30 * DAY
    opps = open_opportunities(sample_export.opportunities, sample_export.stage_history, early)
    with pytest.raises(InvalidRecord, match="training cutoff"):
        deal_result.scorer.score(opps, sample_export.stage_history, sample_export.activities, sample_export.leads,
                                 sample_export.accounts, early)


def test_mlflow_round_trip_and_commands(deal_result, deal_cfg, sample_export, sample_dir, tmp_path, monkeypatch,
                                        capsys):
    from features.settings import get_settings
    from models.registry import configure, load_scorer
    from training.cli import main
    from training.pipeline import log_and_register

    home = tmp_path / "home"
    monkeypatch.setenv("FUNNELCAST_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FUNNELCAST_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        home.mkdir(parents=True)
        client = configure(settings.resolved_tracking_uri())
        result = log_and_register(deal_result, client, experiment="deals-test",
                                  artifact_location=settings.artifact_location(), cfg=deal_cfg,
                                  data_source="sample", force=True)  # the round trip, not the floor
        assert "champion" in result.aliases
        loaded = load_scorer(client, "stage_conversion")
        as_of = sample_export.exported_at
        a, _ = score_open_deals(sample_export, deal_result.scorer, as_of)
        b, _ = score_open_deals(sample_export, loaded.scorer, as_of)
        pd.testing.assert_frame_equal(a, b)

        data = str(sample_dir / "export")
        out = tmp_path / "deals.csv"
        assert main(["score", "--task", "stage_conversion", "--data", data, "--out", str(out)]) == 0
        scored = pd.read_csv(out)
        assert {"opportunity_id", "p_win", "p_win_within_horizon", "p_next_stage", "expected_close_date",
                "expected_value", "reason_1"} <= set(scored.columns)
        assert len(scored) == len(a)
        fc = tmp_path / "forecast.csv"
        assert main(["forecast", "--data", data, "--horizon", "91d", "--by", "owner_id", "--out", str(fc),
                     "--sims", "500"]) == 0
        table = pd.read_csv(fc)
        assert {"owner_id", "expected_bookings", "p10", "p50", "p90", "weighted_pipeline",
                "reps_close_dates"} <= set(table.columns)
        assert (table["p10"] <= table["p90"]).all()
        total = tmp_path / "total.csv"
        assert main(["forecast", "--data", data, "--by", "none", "--out", str(total), "--sims", "500"]) == 0
        t = pd.read_csv(total)
        assert len(t) == 1
        assert t["expected_open_pipeline"].iloc[0] == pytest.approx(table["expected_open_pipeline"].sum())
        assert t["weighted_pipeline"].iloc[0] == pytest.approx(table["weighted_pipeline"].sum())
        assert t["expected_bookings"].iloc[0] == pytest.approx(table["expected_bookings"].sum(), rel=0.05)
        plot = tmp_path / "funnel.png"
        assert main(["funnel", "--data", data, "--by", "team", "--plot", str(plot)]) == 0
        assert plot.stat().st_size > 1000
        assert "bottleneck" in capsys.readouterr().out
        # drift of the deals open at the export time against the training reference logged with the model
        rep = tmp_path / "drift.json"
        assert main(["drift", "--task", "stage_conversion", "--data", data, "--out", str(rep)]) == 0
        import json

        report = json.loads(rep.read_text())
        assert report["rows"] == len(a) and report["reference_rows"] > 0
        assert {f["feature"] for f in report["features"]} == set(deal_result.scorer.spec.feature_names)
        assert 0 <= report["score"]["psi"] < 10 and report["score"]["mean_recent"] == pytest.approx(a["p_win"].mean())
        assert "deals open at" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("argv", [["train"], ["score"], ["forecast"], ["funnel"], ["backtest"]])
def test_every_command_has_help(argv, capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_calibration_window_widens_until_it_holds_enough_outcomes(deal_result, deal_cfg, sample_export):
    """A window too short for the small sample is widened a snapshot step at a time, to the first
    length whose fit and calibration rows hold enough of both classes for every model."""
    from dataclasses import replace

    from training.deals import MIN_POSITIVES, _rows_at, calibration_windows, rows_suffice

    cfg = replace(deal_cfg, calib_days=1)
    rows = fit_and_calibration_rows(deal_result.snapshots, sample_export.exported_at, cfg)
    tried = calibration_windows(cfg)
    assert rows["calib_days"] in tried and rows["calib_days"] > 1
    ns_cal, hz_cal = rows["next_stage"][1], rows["hazard"][1]
    assert MIN_POSITIVES <= ns_cal["label"].sum() <= len(ns_cal) - MIN_POSITIVES
    assert hz_cal["won_label"].sum() >= MIN_POSITIVES and hz_cal["lost_label"].sum() >= MIN_POSITIVES
    # one step shorter was not enough for some model
    snaps, cutoff = deal_result.snapshots, sample_export.exported_at
    shorter = _rows_at(snaps, next_stage_rows(snaps, cutoff, cfg.horizon_days),
                       hazard_rows(snaps, cutoff, cfg.period_days, cfg.n_periods), cutoff, cfg,
                       tried[tried.index(rows["calib_days"]) - 1])
    assert rows_suffice(rows) and not rows_suffice(shorter)


def test_a_scorer_saved_before_competing_risks_still_scores_the_same(deal_result, sample_export):
    """A model saved with the earlier layout (P(closes in period j) and P(won | closes then))
    loads into the win / loss hazards as their products and scores exactly as its layout did."""
    import pickle

    from models.deals import period_frame, win_mass

    scorer = deal_result.scorer
    close, share = scorer.loss_hazard, scorer.win_hazard  # any two fitted classifiers will do
    old = {k: v for k, v in pickle.loads(pickle.dumps(scorer)).__dict__.items()
           if k not in ("win_hazard", "loss_hazard")}
    old.update(close_hazard=close, win_share=share)
    loaded = DealScorer.__new__(DealScorer)
    loaded.__setstate__(old)
    X = deal_result.snapshots[scorer.spec.feature_names].head(40)
    n, J = len(X), scorer.n_periods
    big = period_frame(X.loc[X.index.repeat(J)], np.tile(np.arange(J), n), scorer.period_days)
    h, s = close.predict_proba(big).reshape(n, J), share.predict_proba(big).reshape(n, J)
    survive = np.cumprod(np.c_[np.ones(n), 1 - h], axis=1)
    expected = (survive[:, :J] * h * s).sum(1) + survive[:, J] * s[:, -1]
    np.testing.assert_allclose(loaded.predict(X)["p_win"], expected, rtol=1e-9)
    np.testing.assert_allclose(win_mass(h * s, h * (1 - s)).sum(1), expected, rtol=1e-9)


def test_timing_layouts_and_their_settings(deal_result, deal_cfg, sample_export):
    """Competing risks (the default) uses TIMING_PARAMS with an intercept-only calibration; the
    close-share layout (the model before 29 Nov) its plain settings with Platt scaling, and its
    hazards are a close hazard times the win share or its complement; a typo is refused."""
    from dataclasses import replace

    from models.deals import SplitHazard, period_frame
    from training.deals import TIMING_PARAMS, fit_deal_scorer

    assert deal_cfg.timing_settings() == (TIMING_PARAMS, "intercept")
    assert deal_result.scorer.win_hazard.calibration == "intercept"
    assert deal_result.scorer.win_hazard.calib_slope_ == 1.0
    assert deal_result.scorer.win_hazard.params["linear_tree"] is True
    cs = replace(deal_cfg, timing_layout="close_share", timing_lgbm="current")  # the layout's own settings
    assert cs.timing_settings() == ({}, "platt")
    assert replace(cs, timing_params={"num_leaves": 3}, timing_calibration="intercept").timing_settings() == (
        {"num_leaves": 3}, "intercept")
    scorer = fit_deal_scorer(sample_export, deal_result.snapshots, deal_result.scorer.spec,
                             sample_export.exported_at, cs, surrogate=False)
    assert isinstance(scorer.win_hazard, SplitHazard) and scorer.metadata["timing_layout"] == "close_share"
    close, share = scorer.win_hazard.close_hazard, scorer.win_hazard.win_share
    assert scorer.loss_hazard.close_hazard is close and "linear_tree" not in close.params
    X = period_frame(deal_result.snapshots[scorer.spec.feature_names].head(30), np.ones(30), scorer.period_days)
    np.testing.assert_allclose(scorer.win_hazard.predict_proba(X) + scorer.loss_hazard.predict_proba(X),
                               close.predict_proba(X), rtol=1e-12)
    pred = scorer.predict(deal_result.snapshots[scorer.spec.feature_names].head(30))
    assert (pred["p_win_within_horizon"] <= pred["p_win"] + 1e-12).all() and pred["p_win"].between(0, 1).all()
    with pytest.raises(ValueError, match="timing_layout"):
        replace(deal_cfg, timing_layout="cox").timing_settings()


def test_fitting_on_precomputed_rows_gives_the_same_model(deal_result, deal_cfg, sample_export):
    """Tuning passes each fold's fit and calibration rows once for all its trials: the model is the
    one fitted without them."""
    from training.deals import fit_deal_scorer

    snaps, spec, cutoff = deal_result.snapshots, deal_result.scorer.spec, sample_export.exported_at
    rows = fit_and_calibration_rows(snaps, cutoff, deal_cfg)
    a = fit_deal_scorer(sample_export, snaps, spec, cutoff, deal_cfg, surrogate=False, rows=rows)
    b = fit_deal_scorer(sample_export, snaps, spec, cutoff, deal_cfg, surrogate=False)
    X = snaps[spec.feature_names].head(50)
    pd.testing.assert_frame_equal(a.predict(X), b.predict(X))


def test_the_summary_says_how_reliable_the_win_auc_is(deal_result):
    from training.deals import STAGE_CONVERSION, win_reliability

    note = win_reliability(deal_result.evaluation)
    decided = deal_result.evaluation[deal_result.evaluation["won"].notna()]
    # distinct deals, not snapshot rows: a deal open at several snapshot times counts once
    assert note.n == decided["opportunity_id"].nunique() < len(decided)
    assert note.positives == decided.loc[decided["won"] == 1, "opportunity_id"].nunique()
    assert 0 < note.se < 0.5
    text = STAGE_CONVERSION.summary(deal_result)
    assert f"won (decided deals): ROC AUC {note.auc:.3f} +/- {note.se:.3f}" in text
    assert ("small data" in text) == note.small
    assert any("small data" in w for w in deal_result.warnings) == note.small


def test_a_deal_field_that_gives_the_outcome_away_is_named_a_possible_leak(sample_export, deal_cfg, deal_result):
    """A field set because of the close (here the product of every won deal relabelled) makes P(won) near
    perfect on the evaluation window; train says so. The plain sample does not trigger it."""
    from dataclasses import replace

    assert not [w for w in deal_result.warnings if w.startswith("possible leak")]
    opps = sample_export.opportunities.copy()
    opps["product"] = np.where(opps["outcome"] == "won", "won-pack", opps["product"].astype(object))
    leaky = build_deal_model(replace(sample_export, opportunities=opps), deal_cfg, sample_export.exported_at)
    warned = [w for w in leaky.warnings if w.startswith("possible leak")]
    assert warned and "P(won) ranks the decided deals" in warned[0] and "--exclude" in warned[0], leaky.warnings
