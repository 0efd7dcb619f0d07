"""Optuna over the LightGBM parameters, with time-ordered cross-validation.

The folds are an **expanding window over** ``as_of``: fold *k* truncates the snapshot times
``k * fold_days`` before the last labelled one and applies the training split to what is
left (fit on the early part, early stopping and Platt scaling on the calibration window,
validate on the latest ``eval_days``, a horizon apart as in :func:`training.train.split_times`).
So every fold validates on a later period than it trained on, and the folds' validation
windows do not overlap. The objective is the mean validation **log loss** (it rewards both
ranking and calibration); ROC AUC and Brier are kept per trial.

Bad trials are pruned after each fold (median rule). The study lives in a SQLite database
under the project home (``optuna.db``), so a run can be interrupted and resumed; it refuses
to mix data sets (the export's fingerprint is stored with the study). The first trial of a
new study is the default parameters, so the best trial is never worse than them on the CV.
Each trial is a nested MLflow run under one ``tune`` run; the best parameters are written to
``<home>/tuned/<task>.json``, which the next ``funnelcast train`` reads.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from mlflow.tracking import MlflowClient

from features.contract import Export
from features.errors import FunnelcastError
from features.leads import LeadFeatureSpec, lead_snapshots, snapshot_times
from models.estimators import DEFAULT_PARAMS
from models.metrics import classification_metrics
from models.tasks import Task
from training.provenance import export_fingerprint, provenance_tags
from training.train import SplitPlan, TrainConfig, _fit, _rows, split_times

#: The parameters searched (the rest of DEFAULT_PARAMS stays as it is).
SEARCHED = ("learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "bagging_fraction", "lambda_l2", "cat_smooth")


def suggest_params(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 3, 63, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 1000, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 100.0, log=True),
        "cat_smooth": trial.suggest_float("cat_smooth", 1.0, 100.0, log=True),
    }


def cv_folds(times: list[pd.Timestamp], cfg: TrainConfig, n_folds: int, fold_days: int | None = None) -> list[SplitPlan]:
    """Expanding-window folds, oldest first; folds without enough history are left out."""
    plans: list[SplitPlan] = []
    end = times[-1]
    for _ in range(n_folds):  # latest first; each older fold ends just before the next one validates
        part = [t for t in times if t <= end]
        try:
            plan = split_times(part, cfg.horizon_days, fold_days or cfg.eval_days, cfg.calib_days)
        except ValueError:
            break
        plans.insert(0, plan)
        end = min(plan.evaluate) - pd.Timedelta(days=1)
    if not plans:
        raise FunnelcastError(
            f"not enough history for time-ordered cross-validation: snapshots {times[0].date()}..{times[-1].date()}"
        )
    return plans


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

    def as_json(self) -> dict[str, Any]:
        return {
            "task": Task.LEAD_QUALITY.value,
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
    """The record written by the last ``funnelcast tune`` (``params``, ``study``, ``trial``, ...), or None."""
    path = tuned_params_path(home, task)
    return json.loads(path.read_text()) if path.exists() else None


def study_storage(home: Path) -> str:
    return f"sqlite:///{(Path(home) / 'optuna.db').resolve()}"


def tune(
    export: Export,
    cfg: TrainConfig,
    cutoff: pd.Timestamp,
    *,
    n_trials: int | None,
    timeout: float | None = None,
    storage: str,
    study_name: str = Task.LEAD_QUALITY.value,
    n_folds: int = 3,
    client: MlflowClient | None = None,
    experiment: str = "funnelcast",
    progress: bool = False,
) -> TuneResult:
    """Run (or resume) the study; returns the best parameters over every trial of the study."""
    h = pd.Timedelta(days=cfg.horizon_days)
    start = export.leads["created_at"].min() + pd.Timedelta(days=cfg.warmup_days)
    times = snapshot_times(start, cutoff - h, cfg.snapshot_every_days)
    spec = LeadFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, exclude=cfg.exclude, as_of=cutoff)
    cols = spec.feature_names
    plans = cv_folds(times, cfg, n_folds)
    fingerprint = export_fingerprint(export)

    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    known = study.user_attrs.get("data_fingerprint")
    identity = {"data_fingerprint": fingerprint, "cutoff": str(cutoff), "features": len(cols)}
    if known is not None and (known != fingerprint or study.user_attrs.get("cutoff") != str(cutoff)):
        raise FunnelcastError(
            f"study {study_name!r} in {storage} was run on other data (fingerprint {known[:12]}, cutoff "
            f"{study.user_attrs.get('cutoff')}): its trials are not comparable; pass another --study name"
        )
    if known is None:
        for k, v in identity.items():
            study.set_user_attr(k, v)
        study.enqueue_trial({k: DEFAULT_PARAMS[k] for k in SEARCHED})  # the defaults are trial 0
    snaps = lead_snapshots(export, times, spec, progress=progress)
    exp_id = None
    if client:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial)
        trial_cfg = TrainConfig(**{**cfg.__dict__, "params": {**cfg.params, **params}})
        losses, aucs, briers = [], [], []
        with mlflow.start_run(experiment_id=exp_id, run_name=f"trial-{trial.number}", nested=True) if client else _null():
            if client:
                mlflow.log_params({**params, "trial": trial.number, "study": study_name})
            for step, plan in enumerate(plans):
                clf = _fit(snaps, plan, spec, trial_cfg)
                ev = _rows(snaps, plan.evaluate)
                m = classification_metrics(ev["label"].to_numpy(), clf.predict_proba(ev[cols]))
                losses.append(m["log_loss"])
                aucs.append(m["roc_auc"])
                briers.append(m["brier"])
                if client:
                    mlflow.log_metrics({"fold_log_loss": m["log_loss"], "fold_roc_auc": m["roc_auc"]}, step=step)
                trial.report(float(np.mean(losses)), step)
                if trial.should_prune():
                    if client:
                        mlflow.set_tag("state", "pruned")
                    raise optuna.TrialPruned(f"pruned after fold {step + 1} of {len(plans)}")
            value = float(np.mean(losses))
            trial.set_user_attr("cv_roc_auc", float(np.nanmean(aucs)))
            trial.set_user_attr("cv_brier", float(np.mean(briers)))
            if client:
                mlflow.set_tag("state", "complete")
                mlflow.log_metrics({"cv_log_loss": value, "cv_roc_auc": float(np.nanmean(aucs)), "cv_brier": float(np.mean(briers))})
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_id = None
    started = time.perf_counter()
    if client:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"tune-{Task.LEAD_QUALITY.value}") as run:
            mlflow.set_tags({"task": Task.LEAD_QUALITY.value, "kind": "tuning", "study": study_name,
                             **provenance_tags(cfg.seed, fingerprint)})
            mlflow.log_params({"n_trials": n_trials, "timeout": timeout, "folds": len(plans), "storage": storage})
            study.optimize(objective, n_trials=n_trials, timeout=timeout)
            result = _result(study, storage, plans, fingerprint)
            mlflow.log_params({f"best_{k}": v for k, v in result.best_params.items()})
            mlflow.log_metrics({"best_cv_log_loss": result.best_value, "seconds": time.perf_counter() - started,
                                **({"default_cv_log_loss": result.default_value} if result.default_value else {})})
            run_id = run.info.run_id
    else:
        study.optimize(objective, n_trials=n_trials, timeout=timeout)
        result = _result(study, storage, plans, fingerprint)
    result.run_id = run_id
    return result


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _result(study: optuna.Study, storage: str, plans: list[SplitPlan], fingerprint: str) -> TuneResult:
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise FunnelcastError("no trial completed: raise --trials or --timeout")
    best = study.best_trial
    default = next(
        (t.value for t in complete if all(np.isclose(t.params.get(k, np.nan), DEFAULT_PARAMS[k]) for k in SEARCHED)),
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
        folds=[p.describe() for p in plans],
        data_fingerprint=fingerprint,
    )


def write_tuned_params(home: Path, result: TuneResult, task: str = Task.LEAD_QUALITY.value) -> Path:
    path = tuned_params_path(home, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.as_json(), indent=2))
    return path
