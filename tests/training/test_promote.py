"""Champion / challenger: aliases on train, the promotion rule, both comparison modes, provenance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import ModelNotAvailable
from models.registry import configure
from models.tasks import Task
from training.pipeline import log_and_register
from training.deals import FORECAST_CHECK, owner_forecast_accuracy
from training.promote import Margins, decide, promote, task_comparison
from training.train import TrainConfig, build_lead_model


def _register(result, client, cfg, home, force=False):
    return log_and_register(result, client, experiment="promote-tests", artifact_location=(home / "a").as_uri(),
                            cfg=cfg, data_source="sample", force=force)


def _aliases(client, version):
    return sorted(client.get_model_version("lead_quality", version).aliases)


@pytest.fixture
def store(tmp_path):
    return configure(f"sqlite:///{tmp_path / 'mlflow.db'}"), tmp_path


BASE = {"roc_auc": 0.80, "brier": 0.100, "calibration_error": 0.010}


@pytest.mark.parametrize(
    ("challenger", "promote_it", "why"),
    [
        ({"roc_auc": 0.81, "brier": 0.099, "calibration_error": 0.011}, True, "better by the margin"),
        ({"roc_auc": 0.801, "brier": 0.0999, "calibration_error": 0.010}, False, "not better by the margin"),
        ({"roc_auc": 0.80, "brier": 0.095, "calibration_error": 0.010}, True, "better by the margin"),
        ({"roc_auc": 0.85, "brier": 0.090, "calibration_error": 0.030}, False, "worse calibrated"),
        ({"roc_auc": 0.85, "brier": 0.101, "calibration_error": 0.010}, False, "worse on AUC or Brier"),
        ({"roc_auc": 0.79, "brier": 0.090, "calibration_error": 0.010}, False, "worse on AUC or Brier"),
    ],
)
def test_promotion_rule(challenger, promote_it, why):
    ok, reason = decide(BASE, challenger, Margins(auc=0.002, brier=0.01, calibration=0.005))
    assert ok is promote_it and why in reason


@pytest.mark.parametrize(
    ("wape", "promote_it", "why"),
    [
        (0.30, True, "better by the margin"),  # better ranking and the same forecast
        (0.315, True, "better by the margin"),  # a worse forecast within the tolerance
        (0.33, False, "worse forecast WAPE by owner"),  # better ranking, but the owners' forecast gets worse
    ],
)
def test_timing_models_must_not_forecast_worse(wape, promote_it, why):
    champion = {**BASE, "wape": 0.30}
    challenger = {"roc_auc": 0.81, "brier": 0.099, "calibration_error": 0.010, "wape": wape}
    ok, reason = decide(champion, challenger, Margins(wape=0.02), task_comparison(Task.STAGE_CONVERSION).checks)
    assert ok is promote_it and why in reason and "WAPE" in reason
    assert decide(champion, challenger, Margins(wape=0.02))[0]  # the check is the task's: leads have none


def test_owner_wape_against_a_loop():
    rng = np.random.default_rng(3)
    n = 60
    export = type("E", (), {})()
    export.opportunities = pd.DataFrame({"opportunity_id": [f"o{i}" for i in range(n)],
                                         "owner_id": rng.choice(["a", "b", "c"], n)})
    ev = pd.DataFrame({"opportunity_id": [f"o{i}" for i in rng.integers(0, n, 200)],
                       "as_of": pd.to_datetime(rng.choice(["2025-01-01", "2025-01-15"], 200), utc=True),
                       "p_win_within_horizon": rng.uniform(0, 1, 200), "amount_filled": rng.uniform(1e3, 1e5, 200),
                       "won_within_horizon": rng.integers(0, 2, 200)})
    won_amount = np.where(ev["won_within_horizon"] == 1, rng.uniform(1e3, 1e5, 200), np.nan)
    got = owner_forecast_accuracy(export, ev, won_amount)
    owner = dict(zip(export.opportunities["opportunity_id"], export.opportunities["owner_id"], strict=True))
    cells: dict[tuple, list[float]] = {}
    for row, won in zip(ev.itertuples(), won_amount, strict=True):
        c = cells.setdefault((row.as_of, owner[row.opportunity_id]), [0.0, 0.0])
        c[0] += row.p_win_within_horizon * row.amount_filled
        c[1] += won if row.won_within_horizon == 1 else 0.0
    err = sum(abs(f - a) for f, a in cells.values())
    booked = sum(a for _, a in cells.values())
    assert got["wape"] == pytest.approx(err / booked)
    assert got["bias"] == pytest.approx(sum(f - a for f, a in cells.values()) / booked)


def test_a_worse_recipe_is_refitted_on_the_same_window_and_kept_out(store, sample_export, trained, train_config):
    client, home = store
    champ = _register(trained, client, train_config, home)
    assert sorted(champ.aliases) == ["challenger", "champion"]  # a first model is champion directly
    weak_cfg = TrainConfig(**{**train_config.__dict__, "params": {"num_leaves": 2, "min_child_samples": 2000,
                                                                  "learning_rate": 0.3}, "choose": False})
    champ_version = champ.version
    weak = _register(build_lead_model(sample_export, weak_cfg, sample_export.exported_at), client, weak_cfg, home)
    assert weak.aliases == ["challenger"]  # later ones wait for promotion
    assert _aliases(client, champ_version) == ["champion"]
    d = promote(sample_export, client, experiment="promote-tests")
    assert d.mode == "refit" and not d.promote
    assert d.champion["n"] == d.challenger["n"] > 0  # the same rows
    assert d.challenger["roc_auc"] < d.champion["roc_auc"]
    assert _aliases(client, champ_version) == ["champion"]
    assert _aliases(client, weak.version) == ["challenger"]
    run = client.get_run(d.run_id)
    assert run.data.tags["decision"] == "keep" and run.data.params["mode"] == "refit"
    assert run.data.metrics["challenger_roc_auc"] == pytest.approx(d.challenger["roc_auc"])
    assert client.get_model_version("lead_quality", weak.version).tags["promotion"] == "kept challenger"


def test_models_trained_before_the_window_are_compared_as_registered(store, sample_export, train_config):
    client, home = store
    start = task_comparison(Task.LEAD_QUALITY).window(sample_export, train_config, "91d").start
    older = start - pd.Timedelta(days=60)
    # the weak LightGBM itself (choice off: the ladder would pick a baseline over it)
    weak_cfg = TrainConfig(**{**train_config.__dict__, "params": {"num_leaves": 2, "learning_rate": 0.3,
                                                                  "min_child_samples": 2000}, "choose": False})
    champ = _register(build_lead_model(sample_export, weak_cfg, older), client, weak_cfg, home, force=True)
    good = _register(build_lead_model(sample_export, train_config, start), client, train_config, home)
    d = promote(sample_export, client, experiment="promote-tests")
    assert d.mode == "registered"
    assert d.promote, d.reason
    assert _aliases(client, good.version) == ["champion"]
    assert _aliases(client, champ.version) == ["previous_champion"]
    # nothing left to compare
    with pytest.raises(Exception, match="challenger"):
        promote(sample_export, client, experiment="promote-tests")


def test_same_data_and_seed_give_the_same_metrics_and_runs_record_provenance(
    mlflow_store, sample_export, trained, train_config
):
    again = build_lead_model(sample_export, train_config, sample_export.exported_at)
    assert again.metrics == trained.metrics
    assert again.scorer.metadata["data_fingerprint"] == trained.scorer.metadata["data_fingerprint"]
    client = mlflow_store["client"]
    run_id = client.get_model_version("lead_quality", mlflow_store["version"]).run_id
    tags = client.get_run(run_id).data.tags
    assert len(tags["data_fingerprint"]) == 64 and tags["seed"] == str(train_config.seed)
    assert tags["git_commit"] and "version.lightgbm" in tags and "version.mlflow" in tags


def test_high_value_registers_challengers_and_promotes_on_the_latest_customers(account_sample, tmp_path):
    """train-accounts registers @challenger (the first version also @champion); promote compares
    both recipes refitted before the latest customers and keeps a degenerate challenger out."""
    from dataclasses import asdict, replace

    from training.accounts import AccountConfig, _split, fit_high_value_classifier
    from training.pipeline import log_and_register as register_accounts

    _, export, cfg, result = account_sample
    client = configure(f"sqlite:///{tmp_path / 'hv.db'}")
    kw = dict(experiment="promote-hv", artifact_location=(tmp_path / "a").as_uri(), data_source="sample")
    first = register_accounts(result, client, cfg=cfg, **kw)
    assert sorted(first.aliases) == ["challenger", "champion"]
    champ_version = first.version
    # choice off: the degenerate LightGBM itself (with the ladder on, a refit would choose another candidate)
    weak_cfg = AccountConfig(**{**cfg.__dict__, "choose": False,
                                "params": {"num_leaves": 2, "min_child_samples": 100, "learning_rate": 0.3}})
    # the same customers and split as the champion's final fit, another recipe (cheaper than a full rebuild)
    fit, cal, ev = _split(result.snapshots)
    weak_clf = fit_high_value_classifier(pd.concat([fit, cal]), result.scorer.spec, weak_cfg, cal=ev)
    weak_scorer = replace(result.scorer, classifier=weak_clf,
                          metadata={**result.scorer.metadata, "train_config": asdict(weak_cfg)})
    weak = register_accounts(replace(result, scorer=weak_scorer), client, cfg=weak_cfg, **kw)
    assert weak.aliases == ["challenger"]
    assert sorted(client.get_model_version("high_value", champ_version).aliases) == ["champion"]

    d = promote(export, client, task="high_value", experiment="promote-hv")  # the latest 91 days of customers
    assert d.mode == "refit" and "customers" in d.window
    assert d.champion["n"] == d.challenger["n"] >= 20  # the same customers
    assert d.challenger["roc_auc"] < d.champion["roc_auc"] and not d.promote, d.reason
    assert (d.promote, d.reason) == decide(d.champion, d.challenger, Margins())
    assert str(client.get_model_version_by_alias("high_value", "champion").version) == champ_version
    run = client.get_run(d.run_id)
    assert run.data.tags["decision"] == "keep" and run.data.params["mode"] == "refit"
    assert run.data.metrics["challenger_brier"] == pytest.approx(d.challenger["brier"])
    with pytest.raises(Exception, match="too few"):  # a window without enough customers is refused, not guessed
        promote(export, client, task="high_value", experiment="promote-hv", evaluate="7d")
    # the other way round: the weak recipe as champion is replaced by the better one
    other = configure(f"sqlite:///{tmp_path / 'hv2.db'}")
    register_accounts(replace(result, scorer=weak_scorer), other, cfg=weak_cfg, **kw)
    better = register_accounts(replace(result), other, cfg=cfg, **kw)
    d = promote(export, other, task="high_value", experiment="promote-hv")
    assert d.mode == "refit" and d.promote and d.challenger["roc_auc"] > d.champion["roc_auc"], d.reason
    assert str(other.get_model_version_by_alias("high_value", "champion").version) == better.version


def test_stage_conversion_keeps_a_worse_challenger_and_promotes_a_better_one(sample_export, tmp_path):
    """Deal models: the same two recipes registered in both orders, each refitted before the latest
    window and compared there; the degenerate one (trees that cannot split) is kept out as challenger
    and replaced as champion, the alias moves exactly when the rule says so, and the WAPE check is part
    of the reason. The recipes are fixed (no per-fit choice of layout, history or calendar): promotion
    is under test here, not the choices, and each refit costs half as much."""
    from training.deals import DealTrainConfig, build_deal_model

    cutoff = sample_export.exported_at
    fixed = dict(snapshot_every_days=28, seed=7, timing_layout="competing_risks", timing_lgbm="current",
                 choose_history=False, timing_calendar=False)
    good_cfg = DealTrainConfig(**fixed)
    weak_cfg = DealTrainConfig(**fixed, params={"num_leaves": 2, "min_child_samples": 100_000, "learning_rate": 0.3})
    good = build_deal_model(sample_export, good_cfg, cutoff)
    weak = build_deal_model(sample_export, weak_cfg, cutoff, snaps=good.snapshots, spec=good.scorer.spec)
    for name, order, promoted in (("keep", [(good, good_cfg), (weak, weak_cfg)], False),
                                  ("replace", [(weak, weak_cfg), (good, good_cfg)], True)):
        client = configure(f"sqlite:///{tmp_path / name}.db")
        versions = [log_and_register(r, client, experiment="promote-deals", artifact_location=(tmp_path / name).as_uri(),
                                     cfg=cfg, data_source="sample", force=True).version for r, cfg in order]
        # the comparison, not the floor (the tiny sample's deal models are within noise of a plain baseline)
        d = promote(sample_export, client, task="stage_conversion", experiment="promote-deals", force=True)
        assert (d.champion_version, d.challenger_version) == (versions[0], versions[1])
        assert d.mode == "refit" and "snapshots" in d.window and d.promote is promoted, d.reason
        for m in (d.champion, d.challenger):  # the same rows, every deal model's figures, the owners' forecast
            assert 0.5 <= m["roc_auc"] <= 1 and 0 < m["brier"] < 0.25 and m["n"] > 50
            assert "next_roc_auc" in m and "win_roc_auc" in m
            assert 0 < m["wape"] < 5 and np.isfinite(m["bias"])
        assert d.champion["n"] == d.challenger["n"]
        ok, why = decide(d.champion, d.challenger, Margins(), (FORECAST_CHECK,))
        assert d.promote == ok and d.reason.startswith(why)  # forced past the floor: the rule alone decides
        assert "forecast WAPE by owner" in d.reason  # every decision on two timing models states the WAPE change
        better, worse = (d.challenger, d.champion) if promoted else (d.champion, d.challenger)
        assert better["roc_auc"] > worse["roc_auc"] + 0.05
        champion = str(client.get_model_version_by_alias("stage_conversion", "champion").version)
        assert champion == versions[1 if promoted else 0]
        run = client.get_run(d.run_id)
        assert run.data.metrics["challenger_wape"] == pytest.approx(d.challenger["wape"])
        assert run.data.tags["decision"] == ("promote" if promoted else "keep")
    with pytest.raises(ModelNotAvailable, match="challenger"):  # nothing registered for high_value here
        promote(sample_export, client, task="high_value")


WEAK = {"num_leaves": 2, "min_child_samples": 2000, "learning_rate": 0.3}


@pytest.mark.parametrize(
    ("model", "passed", "best"),
    [
        (0.70, True, "baseline_lr"),   # above every baseline
        (0.655, True, "baseline_lr"),  # below the best by less than one standard error: noise
        (0.60, False, "baseline_lr"),  # below by several standard errors
    ],
)
def test_the_floor_allows_noise_only(model, passed, best):
    from training.promote import auc_standard_error, floor

    metrics = {"roc_auc": model, "n": 1000.0, "positive_rate": 0.3}
    fl = floor(metrics, {"baseline_nb": {"roc_auc": 0.62}, "baseline_lr": {"roc_auc": 0.66}}, "roc_auc", "w")
    assert fl.best == best and fl.passed is passed
    assert fl.allowance == pytest.approx(auc_standard_error(model, 1000, 0.3)) and 0.01 < fl.allowance < 0.03
    assert ("not below" in fl.describe()) is passed and "baseline_lr 0.6600" in fl.describe()
    nothing = floor(metrics, {}, "roc_auc", "w")
    assert nothing.passed and nothing.best is None
    # the deal task's prefix: win_roc_auc reads win_n and win_positive_rate
    deal = floor({"win_roc_auc": 0.6, "win_n": 1000.0, "win_positive_rate": 0.3},
                 {"baseline_stage": {"win_roc_auc": 0.7}}, "win_roc_auc", "w")
    assert not deal.passed and deal.allowance > 0


def test_hanley_mcneil_error_matches_a_simulation():
    """The AUC's standard error of the floor against the spread of AUCs over seeded samples."""
    from sklearn.metrics import roc_auc_score

    from training.promote import auc_standard_error

    rng = np.random.default_rng(0)
    n1, n0 = 150, 350
    aucs = [roc_auc_score(np.r_[np.ones(n1), np.zeros(n0)], np.r_[rng.normal(1.0, 1, n1), rng.normal(0, 1, n0)])
            for _ in range(400)]
    se = auc_standard_error(float(np.mean(aucs)), n1 + n0, n1 / (n1 + n0))
    assert se == pytest.approx(np.std(aucs), rel=0.15)


def test_a_first_version_below_the_floor_is_not_champion(store, sample_export, train_config, capsys):
    """A model worse than naive Bayes on its evaluation window stays challenger, says why (tag,
    load error), promote keeps it out, and --force makes it champion."""
    client, home = store
    weak_cfg = TrainConfig(**{**train_config.__dict__, "params": WEAK, "choose": False})
    result = build_lead_model(sample_export, weak_cfg, sample_export.exported_at)
    from training.pipeline import result_floor

    fl = result_floor(result)
    assert not fl.passed and fl.best.startswith("baseline") and fl.model < fl.baselines[fl.best] - fl.allowance
    weak = _register(result, client, weak_cfg, home)
    assert weak.aliases == ["challenger"]
    mv = client.get_model_version("lead_quality", weak.version)
    assert mv.tags["floor"] == "refused" and "baseline_naive_bayes" in mv.tags["floor_reason"]
    run = client.get_run(weak.run_id)
    assert run.data.tags["floor"] == "refused" and run.data.metrics["floor_passed"] == 0.0
    from models.registry import load_scorer

    with pytest.raises(ModelNotAvailable, match="baseline floor.*--force"):
        load_scorer(client, "lead_quality", "champion")
    d = promote(sample_export, client, experiment="promote-tests")
    assert not d.promote and "below the baseline floor" in d.reason and "--force" in d.reason
    assert _aliases(client, weak.version) == ["challenger"]
    d = promote(sample_export, client, experiment="promote-tests", force=True)
    assert d.promote and "forced" in d.reason
    assert _aliases(client, weak.version) == ["champion"]
