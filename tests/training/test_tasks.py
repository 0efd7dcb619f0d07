"""The task protocol's contract, run over every registered task: the population at ``as_of``,
scores that ignore what happened after ``as_of``, the cutoff guard, and the MLflow round trip."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from features.contract import TABLES, Export
from features.errors import InvalidRecord
from models.tasks import Task, TaskDefinition
from training.tasks import TASKS, task_definition

DAY = pd.Timedelta(days=1)
HEADLINE = {Task.LEAD_QUALITY: "eval_roc_auc", Task.STAGE_CONVERSION: "eval_win_roc_auc",
            Task.HIGH_VALUE: "eval_roc_auc"}
ENTITY_ID = {Task.LEAD_QUALITY: "lead_id", Task.STAGE_CONVERSION: "opportunity_id", Task.HIGH_VALUE: "account_id"}


@pytest.fixture(scope="module")
def results(trained, account_sample, sample_export, deal_config):
    """``task -> (export, result)``: every task trained through the one pipeline (lead and account
    results come from the shared fixtures, which call the same task functions)."""
    from training.pipeline import train

    deal = train(Task.STAGE_CONVERSION, sample_export, sample_export.exported_at, deal_config)
    return {Task.LEAD_QUALITY: (sample_export, trained), Task.STAGE_CONVERSION: (sample_export, deal),
            Task.HIGH_VALUE: (account_sample[1], account_sample[3])}


def test_the_registry_holds_every_task_once():
    assert list(TASKS) == [Task.LEAD_QUALITY, Task.HIGH_VALUE, Task.STAGE_CONVERSION]
    assert set(TASKS) == set(Task)
    for task, definition in TASKS.items():
        assert isinstance(definition, TaskDefinition) and definition.task is task
        assert task_definition(task.value) is definition
        # what tuning and promotion ask the definition for belongs to the same task
        assert definition.tuning.task is task and definition.comparison.task is task
    with pytest.raises(ValueError, match="churn"):
        task_definition("churn")


@pytest.mark.parametrize("task", list(Task))
def test_the_population_holds_nothing_created_at_or_after_as_of(task, sample_export):
    as_of = sample_export.exported_at - pd.Timedelta(days=200)
    pop = task_definition(task).population(sample_export, as_of)
    assert len(pop) > 0 and (pop["created_at"] < as_of).all()
    assert pop[ENTITY_ID[task]].is_unique


def _with_future_events(export: Export, as_of: pd.Timestamp) -> Export:
    """``export`` plus copies of rows of every table dated after ``as_of`` (new ids where a table has a key)."""
    tables = {}
    for name, spec in TABLES.items():
        frame = export.table(name)
        if frame is None or not len(frame) or name == "reps":  # reps are who sells, not events
            continue
        extra = frame.head(5).copy()
        for col in extra.columns:
            if isinstance(extra[col].dtype, pd.DatetimeTZDtype):
                extra[col] = extra[col].where(extra[col].isna(), as_of + DAY)
        if spec.key and spec.key in extra:
            extra[spec.key] = [f"future-{name}-{i}" for i in range(len(extra))]
        tables[name] = pd.concat([frame, extra], ignore_index=True)
    return dataclasses.replace(export, **tables)


@pytest.mark.parametrize("task", list(Task))
def test_scores_do_not_change_when_events_after_as_of_are_added(task, results):
    export, result = results[task]
    definition = task_definition(task)
    as_of = export.exported_at
    before = definition.score(result.scorer, export, as_of).table
    after = definition.score(result.scorer, _with_future_events(export, as_of), as_of).table
    assert len(before) > 0
    pd.testing.assert_frame_equal(before, after)


@pytest.mark.parametrize("task", [Task.LEAD_QUALITY, Task.STAGE_CONVERSION])  # accounts: see AccountScorer.features
def test_scoring_before_the_training_cutoff_is_refused(task, results):
    export, result = results[task]
    with pytest.raises(InvalidRecord, match="training cutoff"):
        task_definition(task).score(result.scorer, export, result.scorer.trained_until - 30 * DAY)


@pytest.mark.parametrize("task", list(Task))
def test_a_logged_scorer_loads_back_with_identical_scores(task, results, tmp_path):
    from models.registry import configure, load_scorer
    from training.pipeline import log_and_register

    export, result = results[task]
    client = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = result.scorer.metadata["train_config"]
    registered = log_and_register(dataclasses.replace(result), client, experiment="contract",
                                  artifact_location=(tmp_path / "a").as_uri(),
                                  cfg=task_definition(task).config(horizon_days=91, snapshot_every_days=28,
                                                                   seed=cfg["seed"]),
                                  data_source="sample", force=True)  # the round trip, not the floor (see test_promote)
    assert sorted(registered.aliases) == ["challenger", "champion"]
    run = client.get_run(registered.run_id).data
    assert run.tags["task"] == task.value and 0.5 < run.metrics[HEADLINE[task]] <= 1
    assert any(k.startswith(f"{task_definition(task).baseline}_") for k in run.metrics)
    assert client.get_model_version(task.value, registered.version).tags["trained_until"] == str(
        result.scorer.trained_until)
    loaded = load_scorer(client, task.value)
    as_of = export.exported_at
    definition = task_definition(task)
    pd.testing.assert_frame_equal(definition.score(result.scorer, export, as_of).table,
                                  definition.score(loaded.scorer, export, as_of).table)


@pytest.mark.parametrize("task", [Task.LEAD_QUALITY, Task.HIGH_VALUE])
def test_decision_durations_read_only_what_was_decided_before_the_cutoff(task, sample_export):
    definition = task_definition(task)
    cutoff = sample_export.exported_at - 200 * DAY
    d = definition.decision_durations(sample_export, cutoff)
    assert len(d) and (d >= pd.Timedelta(0)).all()
    assert ((d.index + pd.to_timedelta(d.to_numpy())) < cutoff).all()
    assert len(definition.decision_durations(sample_export, sample_export.exported_at)) > len(d)


def test_the_horizon_is_resolved_once_for_a_task_that_has_one(trained, sample_export):
    from models.tasks import resolve_horizon

    lead = task_definition(Task.LEAD_QUALITY)
    cfg, horizon = resolve_horizon(lead, sample_export, sample_export.exported_at, lead.config(
        horizon_days=None, snapshot_every_days=28, seed=0))
    assert horizon.source == "data" and cfg.horizon_days == horizon.days and 7 <= horizon.days <= 182
    # the shared fixture sets its horizon (91 days): the user's, logged as such and used by the scorer
    assert trained.chosen["horizon_source"] == "user" and trained.config.horizon_days == 91
    assert trained.scorer.spec.horizon_days == 91
    user, h = resolve_horizon(lead, sample_export, sample_export.exported_at, dataclasses.replace(cfg, horizon_days=30))
    assert h.source == "user" and user.horizon_days == 30
    account = task_definition(Task.HIGH_VALUE).config(horizon_days=None, snapshot_every_days=14, seed=0)
    assert resolve_horizon(task_definition(Task.HIGH_VALUE), sample_export, sample_export.exported_at,
                           account) == (account, None)
