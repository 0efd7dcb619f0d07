"""Optuna over the LightGBM parameters of a task, with time-ordered cross-validation.

One study per task and one search for all of them (:func:`tune`): the folds are the task's
:class:`~models.folds.TimeFold` rolling splits (:meth:`~models.folds.TimeFold.splits`: each
evaluates on the window just before the next one, the latest ending at the last snapshot whose
horizon is labelled at the tuning cutoff), and what a task fits and scores on a split is its
own (:class:`Tuning`, the ``tuning`` of its task definition):

* ``lead_quality`` and ``high_value``: the task's own ``fit`` and ``evaluate`` on each split
  (``training.tasks``; what ``train`` runs on its evaluation split): fit on the fit window, early
  stopping and Platt scaling on the calibration window, validate on the evaluation window (leads:
  "converts within the horizon", a horizon after the calibration window; high_value: P(high
  value) over customers by snapshot day, its customer fold). Objective: validation log loss.
* ``stage_conversion``: every deal model is fitted with its cutoff at the evaluation window's
  start, so the labels it learns from are **censored there**
  (:func:`training.deals.fit_deal_scorer`); older splits whose fit or calibration rows hold too
  few events are left out. Objective: validation log loss of "won within the horizon" (what
  promotion and the forecast use); the next-stage log loss is kept per trial. Its own code, not
  the protocol's ``fit``: each fold's feature spec is point-in-time at the earliest fold's cutoff
  (no category first met later), and each fold's censored fit and calibration rows are computed
  once, not per trial.

Bad trials are pruned after each fold (median rule). The study lives in a SQLite database
under the project home (``optuna.db``), so a run can be interrupted and resumed; it refuses to
mix data sets (the export's fingerprint and the cutoff are stored with the study). The first
trial of a new study is the task's current default parameters, so the best trial is never worse
than them on the CV. Each trial is a nested MLflow run under one ``tune`` run; the best
parameters are written to ``<home>/tuned/<task>.json``, which the next ``train --task`` reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient

from features.contract import Export
from features.errors import FunnelcastError
from models.folds import TimeFold
from models.tasks import Task, resolve_horizon
from training.provenance import export_fingerprint, provenance_tags

#: The parameters searched (the rest of each task's defaults stays as it is).
SEARCHED = ("learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "bagging_fraction", "lambda_l2", "cat_smooth")
#: The metric of one fold: (log loss, ROC AUC, Brier, extra metrics to keep).
FoldScore = tuple[float, float, float, dict[str, float]]


@dataclass(frozen=True)
class CrossValidation:
    """A task's folds, ready to score: ``score(params, k)`` fits fold ``k`` with ``params`` over the
    task's configured ones and validates it."""

    fold: TimeFold
    n_features: int
    folds: list[dict[str, str]]
    score: Callable[[dict[str, Any], int], FoldScore]


class Tuning(Protocol):
    """What the search needs from a task: its default parameters, the range of ``min_child_samples``
    that fits its data size, and its folds over the time fold."""

    task: Task
    min_child: tuple[int, int]

    def params(self) -> dict[str, Any]:
        """The task's LightGBM parameters without tuning."""
        ...

    def cross_validation(self, export: Export, config: Any, cutoff: pd.Timestamp, fold: TimeFold | None,
                         n_folds: int, progress: bool) -> CrossValidation:
        """The ``n_folds`` latest rolling splits of ``fold`` (None: the task's own) labelled at ``cutoff``."""
        ...


def with_params(config: Any, params: dict[str, Any]) -> Any:
    """``config`` with the trial's ``params`` over its own (and no choice of candidate: a trial tunes LightGBM)."""
    return replace(config, params={**config.params, **params}, **({"choose": False} if hasattr(config, "choose") else {}))


class ProtocolTuning:
    """A task tuned through its own protocol (``training.tasks``): its snapshots, its fold, and on each
    split its ``fit`` and ``evaluate``, exactly what ``train`` runs on its evaluation split."""

    def __init__(self, task: Task, params: Callable[[], dict[str, Any]], min_child: tuple[int, int]):
        self.task, self._params, self.min_child = task, params, min_child

    def params(self) -> dict[str, Any]:
        return self._params()

    def cross_validation(self, export: Export, config: Any, cutoff: pd.Timestamp, fold: TimeFold | None,
                         n_folds: int, progress: bool) -> CrossValidation:
        from training.tasks import task_definition

        task = task_definition(self.task)
        snaps = task.snapshots(export, cutoff, config, progress=progress)
        fold = fold or task.fold(config, snaps)
        splits = fold.splits(snaps.times, snaps.cutoff, n_folds)

        def score(params: dict[str, Any], k: int) -> FoldScore:
            trial = with_params(config, params)
            m = task.evaluate(task.fit(export, snaps, splits[k], trial), snaps, splits[k], trial).metrics
            return m["log_loss"], m["roc_auc"], m["brier"], {}

        return CrossValidation(fold, len(snaps.spec.feature_names), [s.describe() for s in splits], score)


def task_tuning(task: Task | str) -> Tuning:
    """What ``task``'s definition gives the search (its ``tuning``)."""
    from training.tasks import task_definition

    return task_definition(task).tuning


def suggest_params(trial: optuna.Trial, min_child: tuple[int, int]) -> dict[str, Any]:
    lo, hi = min_child
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 3, 63, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", lo, hi, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 100.0, log=True),
        "cat_smooth": trial.suggest_float("cat_smooth", 1.0, 100.0, log=True),
    }


def default_params(task: Task | str) -> dict[str, Any]:
    """The searched parameters as the task's ``train`` uses them without tuning (trial 0)."""
    base = task_tuning(task).params()
    return {k: base[k] for k in SEARCHED}


@dataclass
class TuneResult:
    study_name: str
    storage: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    default_value: float | None
    trials: int
    complete: int
    pruned: int
    folds: list[dict[str, str]] = field(default_factory=list)
    run_id: str | None = None
    data_fingerprint: str = ""
    task: str = Task.LEAD_QUALITY.value

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "params": self.best_params,
            "metric": "cv_log_loss",
            "value": self.best_value,
            "default_value": self.default_value,
            "study": self.study_name,
            "storage": self.storage,
            "trial": self.best_trial,
            "trials": self.trials,
            "mlflow_run_id": self.run_id,
            "data_fingerprint": self.data_fingerprint,
        }


def tuned_params_path(home: Path, task: str = Task.LEAD_QUALITY.value) -> Path:
    return Path(home) / "tuned" / f"{task}.json"


def load_tuned_params(home: Path, task: str = Task.LEAD_QUALITY.value) -> dict[str, Any] | None:
    """The record written by the last ``funnelcast tune --task task`` (``params``, ``study``, ``trial``, ...), or None."""
    path = tuned_params_path(home, task)
    return json.loads(path.read_text()) if path.exists() else None


def study_storage(home: Path) -> str:
    return f"sqlite:///{(Path(home) / 'optuna.db').resolve()}"


def tune(
    task: Task | str,
    export: Export,
    cutoff: pd.Timestamp,
    fold: TimeFold | None,
    trials: int | None,
    *,
    config: Any,
    storage: str,
    timeout: float | None = None,
    study_name: str | None = None,
    n_folds: int = 3,
    client: MlflowClient | None = None,
    experiment: str = "funnelcast",
    progress: bool = False,
) -> TuneResult:
    """Run (or resume) the study of ``task`` on the ``n_folds`` latest splits of ``fold`` (None: the
    task's own, e.g. ``config.fold``) labelled at ``cutoff`` (``config``: the task's training
    configuration, whose parameters the trials override); returns the best parameters over every
    trial of the study (default name: the task)."""
    from training.pipeline import experiment_id  # the pipeline imports the task modules, which import this one
    from training.tasks import task_definition

    tuning = task_tuning(task)
    config, _ = resolve_horizon(task_definition(task), export, cutoff, config)  # None: chosen from the data
    horizon = getattr(config, "horizon_days", None)
    if fold is not None and horizon is not None and pd.Timedelta(days=horizon) != fold.horizon:
        raise FunnelcastError(f"the fold's horizon {fold.describe()['horizon']} is not the {task} config's "
                              f"{horizon} days: build both from the same --horizon")
    cv = tuning.cross_validation(export, config, cutoff, fold, n_folds, progress)
    fingerprint = export_fingerprint(export)
    defaults = default_params(tuning.task)
    study_name = study_name or tuning.task.value
    identity = {"data_fingerprint": fingerprint, "cutoff": str(cutoff), "features": cv.n_features,
                "task": tuning.task.value}
    study = _open_study(storage, study_name, config.seed, identity, defaults)
    exp_id = experiment_id(client, experiment) if client else None
    objective = _objective(tuning, study_name, cv, exp_id, logged=client is not None)
    if not client:
        study.optimize(objective, n_trials=trials, timeout=timeout)
        return _result(study, storage, cv.folds, fingerprint, defaults, tuning.task.value)
    started = time.perf_counter()
    with mlflow.start_run(experiment_id=exp_id, run_name=f"tune-{tuning.task}") as run:
        mlflow.set_tags({"task": tuning.task.value, "kind": "tuning", "study": study_name,
                         **provenance_tags(config.seed, fingerprint)})
        mlflow.log_params({"n_trials": trials, "timeout": timeout, "folds": len(cv.folds), "storage": storage,
                           **{f"fold_{k}": v for k, v in cv.fold.describe().items()}})
        study.optimize(objective, n_trials=trials, timeout=timeout)
        result = _result(study, storage, cv.folds, fingerprint, defaults, tuning.task.value)
        mlflow.log_params({f"best_{k}": v for k, v in result.best_params.items()})
        mlflow.log_metrics({"best_cv_log_loss": result.best_value, "seconds": time.perf_counter() - started,
                            **({"default_cv_log_loss": result.default_value} if result.default_value else {})})
    result.run_id = run.info.run_id
    return result


def _open_study(storage: str, study_name: str, seed: int, identity: dict[str, Any],
                defaults: dict[str, Any]) -> optuna.Study:
    """Create or resume the study; a study run on other data, another cutoff or another task is refused.
    A new study records ``identity`` and gets the task's defaults as trial 0."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    attrs = study.user_attrs
    known = attrs.get("data_fingerprint")
    if known is None:
        for k, v in identity.items():
            study.set_user_attr(k, v)
        study.enqueue_trial(defaults)
        return study
    known_task = attrs.get("task", Task.LEAD_QUALITY.value)
    if known != identity["data_fingerprint"] or attrs.get("cutoff") != identity["cutoff"] or known_task != identity["task"]:
        raise FunnelcastError(
            f"study {study_name!r} in {storage} was run on other data or another task (fingerprint {known[:12]}, "
            f"cutoff {attrs.get('cutoff')}, task {known_task}): its trials are not comparable; pass another --study name"
        )
    return study


def _objective(tuning: Tuning, study_name: str, cv: CrossValidation, exp_id: str | None,
               logged: bool) -> Callable[[optuna.Trial], float]:
    """One trial: the fold scores in time order, pruned after each fold; a nested MLflow run when ``logged``."""
    task, n_folds = tuning.task.value, len(cv.folds)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, tuning.min_child)
        with mlflow.start_run(experiment_id=exp_id, run_name=f"trial-{trial.number}", nested=True) if logged else _null():
            if logged:
                mlflow.log_params({**params, "trial": trial.number, "study": study_name, "task": task})
            scores = []
            for step in range(n_folds):
                scores.append(cv.score(params, step))
                if logged:
                    mlflow.log_metrics({"fold_log_loss": scores[-1][0], "fold_roc_auc": scores[-1][1]}, step=step)
                trial.report(float(np.mean([sc[0] for sc in scores])), step)
                if trial.should_prune():
                    if logged:
                        mlflow.set_tag("state", "pruned")
                    raise optuna.TrialPruned(f"pruned after fold {step + 1} of {n_folds}")
            value = float(np.mean([sc[0] for sc in scores]))
            summary = {"cv_roc_auc": float(np.nanmean([sc[1] for sc in scores])),
                       "cv_brier": float(np.mean([sc[2] for sc in scores])),
                       **{f"cv_{k}": float(np.nanmean([sc[3][k] for sc in scores])) for k in scores[0][3]}}
            for k, v in summary.items():
                trial.set_user_attr(k, v)
            if logged:
                mlflow.set_tag("state", "complete")
                mlflow.log_metrics({"cv_log_loss": value, **{k: v for k, v in summary.items() if np.isfinite(v)}})
        return value

    return objective


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _result(study: optuna.Study, storage: str, folds: list[dict[str, str]], fingerprint: str,
            defaults: dict[str, Any], task: str) -> TuneResult:
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise FunnelcastError("no trial completed: raise --trials or --timeout")
    best = study.best_trial
    default = next(
        (t.value for t in complete if all(np.isclose(t.params.get(k, np.nan), defaults[k]) for k in SEARCHED)),
        None,
    )
    return TuneResult(
        study_name=study.study_name,
        storage=storage,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_trial=best.number,
        default_value=default,
        trials=len(states),
        complete=len(complete),
        pruned=sum(s == optuna.trial.TrialState.PRUNED for s in states),
        folds=folds,
        data_fingerprint=fingerprint,
        task=task,
    )


def write_tuned_params(home: Path, result: TuneResult, task: str | None = None) -> Path:
    path = tuned_params_path(home, task or result.task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_json(), indent=2))
    return path
