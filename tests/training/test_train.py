"""Training: the time split, leakage through --as-of, the MLflow round trip, batch scoring, the CLI."""

from __future__ import annotations

import dataclasses
import numpy as np
import pandas as pd
import pytest

from features.contract import Export
from features.pit import open_leads
from training.score import score_open_leads
from training.train import build_lead_model


def test_every_candidate_is_shown_on_the_evaluation_window_and_one_is_chosen(trained):
    table = trained.candidates
    assert {"naive_bayes", "logistic", "lgbm_conservative", "lgbm", "blend"} <= set(table.index)
    assert table["chosen"].sum() == 1 and table.loc[["naive_bayes", "logistic"], "role"].eq("baseline").all()
    chosen = table.index[table["chosen"]][0]
    assert chosen == trained.chosen["candidate"] == trained.scorer.metadata["candidate"]
    assert trained.metrics["roc_auc"] == pytest.approx(table.loc[chosen, "roc_auc"])
    baselines = table[table["role"] == "baseline"]
    assert trained.chosen["baseline_name"] == baselines["log_loss"].idxmin()
    assert trained.baseline_metrics["log_loss"] == pytest.approx(baselines["log_loss"].min())
    # chosen on validation: the chosen model's validation loss is within reach of the best one's
    assert table.loc[chosen, "validation_log_loss"] <= table["validation_log_loss"].min() + 0.01
    assert 0.6 < trained.metrics["roc_auc"] and trained.metrics["calibration_error"] < 0.08


def _scramble_after(export: Export, t: pd.Timestamp) -> Export:
    """Rewrite every outcome and activity at or after ``t`` (what --as-of t must never read)."""
    leads = export.leads.copy()
    late = leads["converted_at"] >= t
    leads.loc[late, "converted_at"] = pd.NaT
    leads.loc[leads["disqualified_at"] >= t, "disqualified_at"] = t + pd.Timedelta(days=3)
    opps = export.opportunities.copy()
    opps.loc[opps["closed_at"] >= t, "outcome"] = "lost"
    acts = export.activities[export.activities["occurred_at"] < t]
    return dataclasses.replace(export, leads=leads, opportunities=opps, activities=acts)


def test_training_as_of_t_reads_nothing_after_t(sample_export, train_config):
    t = sample_export.exported_at - pd.Timedelta(days=120)
    a = build_lead_model(sample_export, train_config, t)
    b = build_lead_model(_scramble_after(sample_export, t), train_config, t)
    leads = open_leads(sample_export.leads, t)
    Xa = a.scorer.features(leads, sample_export.accounts, sample_export.activities, t)
    Xb = b.scorer.features(leads, sample_export.accounts, sample_export.activities, t)
    pd.testing.assert_frame_equal(Xa, Xb)
    np.testing.assert_allclose(a.scorer.predict_proba(Xa), b.scorer.predict_proba(Xb), atol=1e-12)
    assert a.metrics == b.metrics


def test_scoring_before_the_training_cutoff_is_refused(sample_export, lead_scorer):
    from features.errors import InvalidRecord

    with pytest.raises(InvalidRecord, match="would leak"):
        score_open_leads(sample_export, lead_scorer, sample_export.exported_at - pd.Timedelta(days=30))


def test_batch_scores_every_open_lead_best_first(sample_export, lead_scorer):
    as_of = sample_export.exported_at
    out = score_open_leads(sample_export, lead_scorer, as_of)
    assert set(out["lead_id"]) == set(open_leads(sample_export.leads, as_of)["lead_id"])
    assert out["probability"].is_monotonic_decreasing
    assert out["score"].between(0, 100).all() and set(out["grade"]) <= set("ABCD")
    assert (out["expected_value"] >= 0).all()
    assert out["reason_1"].str.contains("the probability by").all()
    top_a = out[out["grade"] == "A"]["probability"].min()
    assert top_a >= out[out["grade"] == "D"]["probability"].max()


def test_mlflow_round_trip_gives_identical_scores(mlflow_store, sample_export, lead_scorer):
    from models.registry import describe_versions, load_scorer

    loaded = load_scorer(mlflow_store["client"], "lead_quality", "champion")
    assert loaded.version == mlflow_store["version"]
    as_of = sample_export.exported_at
    a = score_open_leads(sample_export, lead_scorer, as_of)
    b = score_open_leads(sample_export, loaded.scorer, as_of)
    pd.testing.assert_frame_equal(a, b)
    versions = describe_versions(mlflow_store["client"], "lead_quality")
    assert "champion" in versions[0]["aliases"]
    assert versions[0]["metrics"]["eval_roc_auc"] > 0.6
    assert versions[0]["trained_until"] is not None


def test_pyfunc_predicts_from_the_feature_frame(mlflow_store, trained):
    import mlflow

    from models.registry import configure

    configure(mlflow_store["uri"])  # other tests may have pointed MLflow elsewhere
    model = mlflow.pyfunc.load_model("models:/lead_quality@champion")
    X = trained.snapshots[trained.scorer.spec.feature_names].head(20)
    out = model.predict(X)
    np.testing.assert_allclose(out["probability"].to_numpy(), trained.scorer.predict_proba(X))


@pytest.mark.parametrize("argv", [[], ["generate"], ["train"], ["score"], ["serve"], ["run"], ["forecast"], ["funnel"],
                                  ["traits"], ["allocate"]])
def test_every_command_has_help(argv, capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: funnelcast" in capsys.readouterr().out


@pytest.mark.parametrize("verb", ["train", "score"])
def test_train_and_score_offer_every_task(verb, capsys):
    from models.tasks import Task
    from training.cli import main

    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = capsys.readouterr().out
    assert all(t.value in text for t in Task)
    with pytest.raises(SystemExit) as exc:
        main([verb, "--task", "churn", "--out", "x.csv"])
    assert exc.value.code == 2 and "invalid choice: 'churn'" in capsys.readouterr().err


def test_the_old_per_task_commands_are_gone(capsys):
    from training.cli import build_parser

    for old in (["train-deals"], ["train-accounts"], ["score", "leads", "--out", "x.csv"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(old)
    assert "invalid choice" in capsys.readouterr().err


def test_cli_generate_train_score_end_to_end(tmp_path, monkeypatch, capsys):
    from features.settings import get_settings
    from training.cli import main

    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FUNNELCAST_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["generate", "--out", str(tmp_path / "s"), "--seed", "3", "--scale", "0.05"]) == 0
        data = str(tmp_path / "s" / "export")
        assert main(["train", "--task", "lead_quality", "--data", data]) == 0
        assert "lead_quality trained on history before" in capsys.readouterr().out
        out = tmp_path / "scores.csv"
        assert main(["score", "--task", "lead_quality", "--data", data, "--out", str(out)]) == 0
        scored = pd.read_csv(out)
        assert {"lead_id", "probability", "score", "grade", "expected_value", "reason_1"} <= set(scored.columns)
        assert (tmp_path / "home" / "mlflow.db").exists()
        assert main(["train", "--task", "lead_quality", "--data", str(tmp_path / "nowhere")]) == 2
        assert "error:" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_training_refuses_a_fit_window_without_conversions(sample_export, train_config):
    from features.contract import Export

    leads = sample_export.leads.copy()
    early = leads["created_at"] < sample_export.exported_at - pd.Timedelta(days=300)
    leads.loc[early, "converted_at"] = pd.NaT  # as if outcomes were only recorded recently
    export = Export(**{**sample_export.__dict__, "leads": leads})
    from models.folds import NotEnoughHistory

    with pytest.raises(NotEnoughHistory) as err:
        build_lead_model(export, train_config, sample_export.exported_at)
    text = str(err.value)
    # what was found (months of history), what was tried (the windows, shrunk) and what is missing (per class)
    assert "months of labelled snapshots" in text and "91d/91d" in text and "56d/56d" in text
    assert "converted and" in text and "at least 10 of each" in text


def test_a_fit_window_shorter_than_the_calibration_window_is_refused_so_the_windows_shrink():
    """Maven CRM's fold fitted on one snapshot time (LightGBM a constant): the fit window must hold at
    least as many snapshot times as the calibration window, else the split is refused and the fold shrinks."""
    from models.folds import Split, TimeFold
    from training.train import _enough

    times = list(pd.date_range("2024-01-06", periods=20, freq="14D", tz="UTC"))
    rng = np.random.default_rng(0)
    snaps = pd.DataFrame({"as_of": np.repeat(times, 40), "label": rng.integers(0, 2, 40 * len(times))})
    t = times

    def split(n_fit: int, n_cal: int) -> Split:
        return Split(fit=t[:n_fit], calibrate=t[n_fit:n_fit + n_cal], evaluate=t[-3:], cutoff=t[-3],
                     calibrate_start=t[n_fit - 1])

    assert "fewer snapshot times" in _enough(snaps)(split(1, 6))
    assert _enough(snaps)(split(6, 6)) is None
    # through the fold: the 91-day windows leave one fit time, so they shrink until the fit window is long enough
    fold = TimeFold(horizon="91d", evaluate="91d", calibrate="91d", min_evaluate="28d", min_calibrate="28d")
    loose = fold.split(times)  # without the rule: a fit window shorter than the calibration window
    assert len(loose.fit) < len(loose.calibrate)
    s = fold.split(times, None, _enough(snaps))
    assert len(s.fit) >= len(s.calibrate) and s.evaluate_days < loose.evaluate_days


def test_with_no_validation_window_the_better_baseline_on_the_calibration_window_is_used():
    from training.train import _fallback

    rng = np.random.default_rng(1)
    cal = pd.DataFrame({"x": rng.normal(size=400)})
    cal["label"] = (rng.random(400) < 1 / (1 + np.exp(-2 * cal["x"]))).astype(int)

    class Fixed:
        def __init__(self, f):
            self.f = f

        def predict_proba(self, X):
            return self.f(X["x"].to_numpy())

    models = {"naive_bayes": Fixed(lambda x: np.full(len(x), 0.5)),
              "logistic": Fixed(lambda x: 1 / (1 + np.exp(-2 * x))),
              "lgbm": Fixed(lambda x: 1 / (1 + np.exp(-2.2 * x)))}  # best, but stopped early on this window
    roles = {"naive_bayes": "baseline", "logistic": "baseline", "lgbm": "model"}
    assert _fallback(models, cal, ["x"], roles) == "logistic"
    models["naive_bayes"], models["logistic"] = models["logistic"], models["naive_bayes"]
    assert _fallback(models, cal, ["x"], roles) == "naive_bayes"


def test_the_reliability_of_an_evaluation_counts_entities_and_warns_on_small_data():
    from training.promote import SMALL_SE, auc_standard_error, reliability

    big = reliability({"roc_auc": 0.8, "n": 50_000.0, "positive_rate": 0.1}, "lead snapshots", n=5000, positives=500)
    assert big.se == auc_standard_error(0.8, 5000, 0.1) and not big.small
    assert "+/- " in big.describe() and "5,000 lead snapshots, 500 positive" in big.describe()
    # the same rows as 89 customers, 17 positive: the error is several times larger and says so
    small = reliability({"roc_auc": 0.8, "n": 89.0, "positive_rate": 17 / 89}, "customers")
    assert small.positives == 17 and small.se > SMALL_SE and small.small
    assert "small data" in small.warning() and f"{2 * small.se:.2f}" in small.warning()


def test_the_recent_rate_counts_conversions_decided_by_the_cutoff_like_a_naive_loop(trained, sample_export):
    """The leads of the last horizon before a fold's cutoff: a snapshot counts as decided when its lead
    converted within its horizon and before the cutoff (a per-row loop says the same), and nothing after
    the cutoff changes the estimate (issue 15: calibration under a drifting base rate)."""
    from training.train import recent_leads

    snaps, plan, spec = trained.snapshots, trained.plan, trained.scorer.spec
    cutoff, h = plan.cutoff, pd.Timedelta(days=spec.horizon_days)
    recent = snaps[(snaps["as_of"] > plan.calibrate[-1]) & (snaps["as_of"] <= cutoff)]
    cal = snaps[snaps["as_of"].isin(plan.calibrate)]
    assert len(recent) and recent["as_of"].max() + h > cutoff  # their labels are not all known at the cutoff
    got = recent_leads(sample_export, recent, cal, cutoff, spec.horizon_days, spec.feature_names)
    assert got is not None
    conv = sample_export.leads.set_index("lead_id")["converted_at"]
    naive, share = [], []
    delays = sorted((conv[lead] - t) / pd.Timedelta(days=1) for lead, t in zip(cal.loc[cal["label"] == 1, "lead_id"],
                                                                               cal.loc[cal["label"] == 1, "as_of"]))
    for lead, t in zip(recent["lead_id"], recent["as_of"]):
        c, follow = conv[lead], min(h, cutoff - t) / pd.Timedelta(days=1)
        s = sum(d <= follow for d in delays) / len(delays)
        if s >= 0.2:
            share.append(s)
            naive.append(bool(pd.notna(c) and t <= c < min(t + h, cutoff)))
    np.testing.assert_allclose(got.share, share)
    assert got.decided.tolist() == naive and 0 < got.rate < 1
    later = recent_leads(_scramble_after(sample_export, cutoff), recent, cal, cutoff, spec.horizon_days,
                         spec.feature_names)
    np.testing.assert_array_equal(later.decided, got.decided)
    np.testing.assert_allclose(later.share, got.share)
    # what training decided about it is logged with the model
    assert trained.chosen["recent_rate"].split(":")[0] in ("on", "off")


def test_a_move_to_the_recent_rate_beyond_the_limit_is_refused_not_applied(monkeypatch):
    """A recent rate that would move a model by 6.6 log-odds (Maven with its leaking close_value: open leads
    all score near 0) says the recent leads do not look like calibration's; the model stays as calibrated."""
    from types import SimpleNamespace

    import training.train as tt

    calls = iter([0.4, 6.6])
    monkeypatch.setattr(tt, "recent_rate_shift", lambda model, recent: next(calls))
    models = {"lgbm": SimpleNamespace(calib_intercept_=0.1), "logistic": SimpleNamespace(calib_intercept_=-0.2)}
    shifts = tt._move_to_recent(models, recent=object())  # type: ignore[arg-type]
    assert shifts == {"lgbm": 0.4, "logistic refused": 6.6}
    assert models["lgbm"].calib_intercept_ == pytest.approx(0.5) and models["logistic"].calib_intercept_ == -0.2
    assert tt.MAX_RATE_SHIFT == 3.0


def test_leads_older_than_the_model_saw_are_scored_by_the_conversion_curve(sample_export, train_config, trained):
    """The registered model's age correction (models.lifetime) is estimated at the cutoff from the sample's leads,
    applied to its probability and its reasons alike, and said in what training logs."""
    from models.lifetime import age_limit

    model = trained.scorer.classifier
    limits = [m.lifetime_ for m in [model, *getattr(model, "members", [])] if m.lifetime_ is not None]
    assert limits  # the sample's history has leads older than any in the registered model's fit window
    limit = limits[0]
    assert trained.chosen["age_limit"] == limit.describe()
    again = age_limit(sample_export.leads, trained.plan.cutoff, train_config.horizon_days, pd.Series([0.0]))
    assert again is not None  # the curve is read from the export's leads
    as_of = sample_export.exported_at
    leads = open_leads(sample_export.leads, as_of)
    X = trained.scorer.features(leads, sample_export.accounts, sample_export.activities, as_of)
    contrib = trained.scorer.explain(X)
    p = trained.scorer.predict_proba(X)
    np.testing.assert_allclose(1 / (1 + np.exp(-(contrib.base + contrib.values.sum(axis=1)))), p, atol=1e-9)
