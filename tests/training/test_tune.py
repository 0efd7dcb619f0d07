"""Tuning: expanding-window folds, pruning, a resumable study in SQLite, nested MLflow runs, tuned params for train."""

from __future__ import annotations

import pandas as pd
import pytest

from features.errors import FunnelcastError
from models.estimators import DEFAULT_PARAMS
from models.registry import configure
from training.train import TrainConfig
from training.tune import SEARCHED, cv_folds, load_tuned_params, tune, write_tuned_params


def test_folds_are_an_expanding_window_over_time():
    times = list(pd.date_range("2023-01-01", "2025-12-31", freq="14D", tz="UTC"))
    plans = cv_folds(times, TrainConfig(), n_folds=3)
    assert len(plans) == 3
    for a, b in zip(plans, plans[1:], strict=False):
        assert len(b.fit) > len(a.fit)  # expanding
        assert max(a.evaluate) < min(b.evaluate)  # validation windows move forward, no overlap
    for p in plans:
        assert max(p.calibrate) + pd.Timedelta(days=91) < min(p.evaluate)
    assert plans[-1].evaluate[-1] == times[-1]


def test_too_short_a_history_is_refused():
    with pytest.raises(FunnelcastError, match="not enough history"):
        cv_folds(list(pd.date_range("2025-01-01", periods=8, freq="14D", tz="UTC")), TrainConfig(), 3)


def test_study_resumes_logs_nested_runs_and_feeds_train(tmp_path, sample_export, train_config):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    client = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = TrainConfig(**{**train_config.__dict__})
    kw = dict(storage=storage, client=client, experiment="tune-tests", n_folds=2)
    first = tune(sample_export, cfg, sample_export.exported_at, n_trials=2, **kw)
    assert first.trials == 2 and first.complete + first.pruned == 2
    assert first.default_value is not None and first.best_value <= first.default_value  # trial 0 is the defaults
    assert set(first.best_params) == set(SEARCHED)

    again = tune(sample_export, cfg, sample_export.exported_at, n_trials=1, **kw)  # resumed, not restarted
    assert again.trials == 3 and again.best_value <= first.best_value

    exp = client.get_experiment_by_name("tune-tests")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "tuning"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 2 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    assert "data_fingerprint" in parents[0].data.tags

    path = write_tuned_params(tmp_path, again)
    record = load_tuned_params(tmp_path)
    assert path.exists() and record["params"] == again.best_params and record["study"] == "lead_quality"

    with pytest.raises(FunnelcastError, match="other data"):
        tune(sample_export, cfg, sample_export.exported_at - pd.Timedelta(days=30), n_trials=1, **kw)


def test_defaults_are_inside_the_search_space():
    # so that enqueuing them as trial 0 is a valid trial of the space
    assert 0.01 <= DEFAULT_PARAMS["learning_rate"] <= 0.2 and 3 <= DEFAULT_PARAMS["num_leaves"] <= 63
    assert 10 <= DEFAULT_PARAMS["min_child_samples"] <= 1000 and 1 <= DEFAULT_PARAMS["cat_smooth"] <= 100


def test_deal_folds_validate_later_than_their_censored_fits(sample_export, deal_snapshot_frame, deal_config):
    from training.tune import deal_cv_folds

    _, snaps = deal_snapshot_frame
    cutoff = sample_export.exported_at
    folds = deal_cv_folds(snaps, cutoff, deal_config, n_folds=3)
    assert len(folds) >= 2
    h = pd.Timedelta(days=deal_config.horizon_days)
    for a, b in zip(folds, folds[1:], strict=False):
        assert a.last < b.cutoff  # validation windows move forward and do not overlap
        assert a.cutoff < b.cutoff  # expanding: a later fold learns from more history
    for f in folds:
        assert f.cutoff <= f.last and f.last + h <= cutoff  # validated on labels known at the tuning cutoff
    assert folds[-1].last == snaps.loc[snaps["as_of"] + h <= cutoff, "as_of"].max()
    # asking for more folds than the history holds leaves the oldest out instead of fitting on nothing
    assert len(deal_cv_folds(snaps, cutoff, deal_config, n_folds=50)) < 50


def test_account_folds_are_consecutive_blocks_of_later_customers(account_sample):
    from training.tune import account_cv_folds

    snaps = account_sample[3].snapshots
    folds = account_cv_folds(snaps, n_folds=3)
    assert len(folds) == 3 and folds[-1][1] == len(snaps)
    for (a, b), (c, _) in zip(folds, folds[1:], strict=False):
        assert b == c  # consecutive
    for a, b in folds:
        assert snaps["as_of"].iloc[a - 1] < snaps["as_of"].iloc[a]  # an as_of never straddles fit and validation
    with pytest.raises(FunnelcastError, match="too few"):
        account_cv_folds(snaps.head(40), n_folds=3)


def test_stage_conversion_study_resumes_with_nested_runs(tmp_path, sample_export, deal_config):
    from training.tune import default_params, tune_deals

    client = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kw = dict(storage=f"sqlite:///{tmp_path / 'optuna.db'}", client=client, experiment="tune-deals", n_folds=2)
    first = tune_deals(sample_export, deal_config, sample_export.exported_at, n_trials=2, **kw)
    assert first.task == "stage_conversion" and first.trials == 2 and len(first.folds) == 2
    assert first.default_value is not None and first.best_value <= first.default_value
    assert default_params("stage_conversion")["learning_rate"] == 0.05  # trial 0 is what train-deals uses untuned
    again = tune_deals(sample_export, deal_config, sample_export.exported_at, n_trials=1, **kw)
    assert again.trials == 3 and again.best_value <= first.best_value
    runs = client.search_runs([client.get_experiment_by_name("tune-deals").experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "tuning"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 2 and len(children) == 3 and parents[0].data.tags["task"] == "stage_conversion"
    complete = [c for c in children if c.data.tags.get("state") == "complete"]
    assert complete and all("cv_next_log_loss" in c.data.metrics for c in complete)
    write_tuned_params(tmp_path, again)
    assert load_tuned_params(tmp_path, "stage_conversion")["params"] == again.best_params
    assert load_tuned_params(tmp_path) is None  # lead_quality's record is another file
    with pytest.raises(FunnelcastError, match="another task"):  # one study name, two tasks: refused
        tune(sample_export, TrainConfig(snapshot_every_days=28), sample_export.exported_at, n_trials=1,
             study_name="stage_conversion", **kw)


def test_high_value_study_and_train_accounts_uses_the_best_params(tmp_path, account_sample, capsys):
    from features.settings import Settings
    from models.tasks import Task
    from training.cli_train import task_config
    from training.tune import tune_accounts

    _, export, cfg, _ = account_sample
    result = tune_accounts(export, cfg, export.exported_at, n_trials=2, n_folds=2,
                           storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert result.task == "high_value" and result.trials == 2 and len(result.folds) == 2
    assert result.default_value is not None and result.best_value <= result.default_value
    assert set(result.best_params) == set(SEARCHED)
    home = tmp_path / "home"
    write_tuned_params(home, result)
    # what `train --task high_value` builds its config from: <home>/tuned/high_value.json, unless --default-params
    kw = dict(horizon_days=None, snapshot_every_days=None, seed=7, exclude=(), overrides={})
    tuned_cfg, source = task_config(Task.HIGH_VALUE, Settings(home=home), **kw, default_params=False)
    assert tuned_cfg.params == result.best_params and source == f"tuned:high_value#{result.best_trial}"
    assert f"trial {result.best_trial}" in capsys.readouterr().out
    plain_cfg, source = task_config(Task.HIGH_VALUE, Settings(home=home), **kw, default_params=True)
    assert plain_cfg.params == {} and source == "default"
    # the recipe a registered model carries (promotion refits it) holds the parameters
    from training.accounts import fit_high_value_classifier

    snaps = account_sample[3].snapshots
    clf = fit_high_value_classifier(snaps.head(150), account_sample[3].scorer.spec, tuned_cfg)
    assert clf.params["num_leaves"] == result.best_params["num_leaves"]


@pytest.mark.parametrize("argv", [["tune"], ["promote"], ["train"]])
def test_model_operations_commands_have_help(argv, capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage" in text
    if argv == ["tune"]:
        assert "stage_conversion" in text and "high_value" in text
    if argv == ["promote"]:
        assert "--wape-tolerance" in text
    if argv[0].startswith("train-"):
        assert "--default-params" in text
