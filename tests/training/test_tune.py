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
