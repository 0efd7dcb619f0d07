"""Tuning: one search over every task's time-fold splits, pruning, a resumable study in SQLite,
nested MLflow runs, tuned params for train."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from features.errors import FunnelcastError
from models.folds import InvalidFold, TimeFold
from models.registry import configure
from models.tasks import Task
from training.train import TrainConfig
from training.tune import SEARCHED, default_params, load_tuned_params, suggest_params, task_tuning, tune, write_tuned_params


def _fold(cfg) -> TimeFold:
    return TimeFold(horizon=cfg.horizon_days, evaluate=cfg.eval_days, calibrate=cfg.calib_days)


def test_study_resumes_logs_nested_runs_and_feeds_train(tmp_path, sample_export, train_config):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    client = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = TrainConfig(**{**train_config.__dict__})
    kw = dict(config=cfg, storage=storage, client=client, experiment="tune-tests", n_folds=2)
    cutoff = sample_export.exported_at
    first = tune("lead_quality", sample_export, cutoff, _fold(cfg), 2, **kw)
    assert first.trials == 2 and first.complete + first.pruned == 2
    assert first.default_value is not None and first.best_value <= first.default_value  # trial 0 is the defaults
    assert set(first.best_params) == set(SEARCHED)

    again = tune(Task.LEAD_QUALITY, sample_export, cutoff, _fold(cfg), 1, **kw)  # resumed, not restarted
    assert again.trials == 3 and again.best_value <= first.best_value

    exp = client.get_experiment_by_name("tune-tests")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "tuning"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 2 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    assert "data_fingerprint" in parents[0].data.tags and parents[0].data.params["fold_horizon"] == "91d"

    path = write_tuned_params(tmp_path, again)
    record = load_tuned_params(tmp_path)
    assert path.exists() and record["params"] == again.best_params and record["study"] == "lead_quality"

    with pytest.raises(FunnelcastError, match="other data"):
        tune("lead_quality", sample_export, cutoff - pd.Timedelta(days=30), _fold(cfg), 1, **kw)


def test_lead_folds_are_the_time_fold_rolling_splits(sample_export, train_config):
    cv = task_tuning(Task.LEAD_QUALITY).cross_validation(sample_export, train_config, sample_export.exported_at,
                                                    _fold(train_config), 3, False)
    assert len(cv.folds) == 3
    ends = [pd.Timestamp(f["evaluate"].split("..")[1].split(" ")[0], tz="UTC") for f in cv.folds]
    starts = [pd.Timestamp(f["evaluate"].split("..")[0], tz="UTC") for f in cv.folds]
    assert ends == sorted(ends) and all(e < s for e, s in zip(ends, starts[1:], strict=False))  # no overlap
    assert ends[-1] + pd.Timedelta(days=train_config.horizon_days) <= sample_export.exported_at


def test_too_short_a_history_is_refused(sample_export, train_config):
    early = sample_export.leads["created_at"].min() + pd.Timedelta(days=200)
    with pytest.raises(InvalidFold, match="not enough history"):
        tune("lead_quality", sample_export, early, _fold(train_config), 1, config=train_config,
             storage="sqlite:///:memory:")


def test_the_fold_and_the_config_share_one_horizon(sample_export, train_config):
    with pytest.raises(FunnelcastError, match="horizon 28d"):
        tune("lead_quality", sample_export, sample_export.exported_at, TimeFold(horizon="28d"), 1,
             config=train_config, storage="sqlite:///:memory:")


@pytest.mark.parametrize("task", list(Task))
def test_defaults_are_trial_zero_and_inside_the_search_space(task):
    # so that enqueuing them as trial 0 is a valid trial of the space
    defaults = default_params(task)
    assert set(defaults) == set(SEARCHED)
    study = optuna.create_study()
    study.enqueue_trial(defaults)
    trial = study.ask()
    assert suggest_params(trial, task_tuning(task).min_child) == defaults


def test_each_task_keeps_its_own_defaults():
    assert default_params("stage_conversion")["learning_rate"] == 0.05  # what train uses for deals untuned
    assert default_params("high_value")["min_child_samples"] == 20
    assert default_params("lead_quality")["min_child_samples"] == 200


def test_deal_folds_validate_later_than_their_censored_fits(sample_export, deal_snapshot_frame, deal_config):
    from training.deals import _fitting_deal_folds

    _, snaps = deal_snapshot_frame
    cutoff = sample_export.exported_at
    fold = _fold(deal_config)
    folds = _fitting_deal_folds(snaps, fold.splits(snaps["as_of"], cutoff, 3), deal_config, cutoff)
    assert len(folds) >= 2
    h = pd.Timedelta(days=deal_config.horizon_days)
    for (a, _), (b, _) in zip(folds, folds[1:], strict=False):
        assert a.evaluate[-1] < b.cutoff  # validation windows move forward and do not overlap
        assert a.cutoff < b.cutoff  # expanding: a later fold learns from more history
    for split, rows in folds:
        assert split.cutoff <= split.evaluate[0] and split.evaluate[-1] + h <= cutoff  # labels known at the cutoff
        assert rows["next_stage"][0]["as_of"].max() < split.cutoff  # the fit rows are before the fold's cutoff
    assert folds[-1][0].evaluate[-1] == snaps.loc[snaps["as_of"] + h <= cutoff, "as_of"].max()
    with pytest.raises(FunnelcastError, match="not enough deal history"):  # too few events: refused, not guessed
        _fitting_deal_folds(snaps[snaps["as_of"] < snaps["as_of"].min() + pd.Timedelta(days=200)],
                            [folds[-1][0]], deal_config, cutoff)


def test_stage_conversion_study_resumes_with_nested_runs(tmp_path, sample_export, deal_config):
    client = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kw = dict(storage=f"sqlite:///{tmp_path / 'optuna.db'}", client=client, experiment="tune-deals", n_folds=2)
    cutoff, fold = sample_export.exported_at, _fold(deal_config)
    first = tune("stage_conversion", sample_export, cutoff, fold, 2, config=deal_config, **kw)
    assert first.task == "stage_conversion" and first.trials == 2 and len(first.folds) == 2
    assert first.default_value is not None and first.best_value <= first.default_value
    again = tune("stage_conversion", sample_export, cutoff, fold, 1, config=deal_config, **kw)
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
    lead_cfg = TrainConfig(horizon_days=91, snapshot_every_days=28)
    with pytest.raises(FunnelcastError, match="another task"):  # one study name, two tasks: refused
        tune("lead_quality", sample_export, cutoff, _fold(lead_cfg), 1, config=lead_cfg,
             study_name="stage_conversion", **kw)


def test_high_value_study_on_its_customer_fold_and_train_uses_the_best_params(tmp_path, account_sample, capsys):
    from features.settings import Settings
    from training.cli_train import task_config

    _, export, cfg, _ = account_sample
    result = tune("high_value", export, export.exported_at, None, 2, config=cfg, n_folds=2,
                  storage=f"sqlite:///{tmp_path / 'o.db'}")  # None: the task's own fold (training.accounts.customer_fold)
    assert result.task == "high_value" and result.trials == 2 and len(result.folds) == 2
    assert result.default_value is not None and result.best_value <= result.default_value
    assert set(result.best_params) == set(SEARCHED)
    for f in result.folds:  # every fold learns from the customers before the ones it validates on
        day = {w: [pd.Timestamp(d.split(" ")[0], tz="UTC") for d in f[w].split("..")] for w in f}
        assert day["fit"][1] < day["calibrate"][0] and day["calibrate"][1] < day["evaluate"][0]
    home = tmp_path / "home"
    write_tuned_params(home, result)
    # what `train --task high_value` builds its config from: <home>/tuned/high_value.json, unless --default-params
    kw = dict(horizon_days=None, snapshot_every_days=None, seed=7, exclude=(), overrides={})
    tuned_cfg, source = task_config(Task.HIGH_VALUE, Settings(home=home), **kw, default_params=False)
    assert tuned_cfg.params == result.best_params and source == f"tuned:high_value#{result.best_trial}"
    assert f"trial {result.best_trial}" in capsys.readouterr().out
    plain_cfg, source = task_config(Task.HIGH_VALUE, Settings(home=home), **kw, default_params=True)
    assert plain_cfg.params == {} and source == "default"


@pytest.mark.parametrize("argv", [["tune"], ["promote"], ["drift"]])
def test_model_operations_commands_offer_every_task(argv, capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "usage" in text and all(t.value in text for t in Task)
    if argv == ["promote"]:
        assert "--wape-tolerance" in text
