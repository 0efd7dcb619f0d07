"""Optuna over the LightGBM parameters of each task, with time-ordered cross-validation.

One study per task, the same machinery for all three (:func:`_optimize`); only the folds
and what a fold fits differ:

* ``lead_quality`` (:func:`tune`): the folds are an **expanding window over** ``as_of``:
  fold *k* truncates the snapshot times ``k * fold_days`` before the last labelled one and
  applies the training split to what is left (fit on the early part, early stopping and
  Platt scaling on the calibration window, validate on the latest ``eval_days``, a horizon
  apart as in :class:`models.folds.TimeFold`). Objective: mean validation log loss of
  "converts within the horizon".
* ``stage_conversion`` (:func:`tune_deals`): fold *k* validates on the deal snapshots of one
  ``fold_days`` window (the latest ending at the last snapshot whose horizon is labelled at
  the tuning cutoff) and fits every deal model with its cutoff at the window's start, so
  the labels it learns from are **censored there** (:func:`training.deals.fit_deal_scorer`).
  Objective: mean validation log loss of "won within the horizon" (what promotion and the
  forecast use); the next-stage log loss is kept per trial.
* ``high_value`` (:func:`tune_accounts`): customers sorted by the time of their snapshot
  (``first win + early_days``); the latest ``holdout`` share is cut into ``n_folds``
  consecutive blocks, and fold *k* fits on every customer before its block (the earlier
  two thirds fit the trees, the later third calibrates). Objective: mean validation log
  loss of P(high value).

In every case each fold validates on a later period than it learned from, and the folds'
validation windows do not overlap. Bad trials are pruned after each fold (median rule). The
study lives in a SQLite database under the project home (``optuna.db``), so a run can be
interrupted and resumed; it refuses to mix data sets (the export's fingerprint and the
cutoff are stored with the study). The first trial of a new study is the task's current
default parameters, so the best trial is never worse than them on the CV. Each trial is a
nested MLflow run under one ``tune`` run; the best parameters are written to
``<home>/tuned/<task>.json``, which the next ``train`` / ``train-deals`` / ``train-accounts``
reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
from models.folds import Split
from training.train import TrainConfig, _fit, _rows

#: The parameters searched (the rest of each task's defaults stays as it is).
SEARCHED = ("learning_rate", "num_leaves", "min_child_samples", "feature_fraction", "bagging_fraction", "lambda_l2", "cat_smooth")
#: ``min_child_samples`` range per task: high_value fits on hundreds of customers, not tens of thousands of rows.
_MIN_CHILD = {Task.LEAD_QUALITY.value: (10, 1000), Task.STAGE_CONVERSION.value: (10, 1000), Task.HIGH_VALUE.value: (5, 100)}
#: The metric of one fold: (log loss, ROC AUC, Brier, extra metrics to keep).
FoldScore = tuple[float, float, float, dict[str, float]]


def suggest_params(trial: optuna.Trial, task: str = Task.LEAD_QUALITY.value) -> dict[str, Any]:
    lo, hi = _MIN_CHILD[task]
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 3, 63, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", lo, hi, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.3, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 100.0, log=True),
        "cat_smooth": trial.suggest_float("cat_smooth", 1.0, 100.0, log=True),
    }


def default_params(task: str) -> dict[str, Any]:
    """The searched parameters as each task's ``train`` uses them without tuning (trial 0)."""
    base = dict(DEFAULT_PARAMS)
    if task == Task.STAGE_CONVERSION.value:
        from training.deals import DEAL_PARAMS

        base.update(DEAL_PARAMS)
    elif task == Task.HIGH_VALUE.value:
        from training.accounts import ACCOUNT_PARAMS

        base.update(ACCOUNT_PARAMS)
    return {k: base[k] for k in SEARCHED}


def cv_folds(times: list[pd.Timestamp], cfg: TrainConfig, n_folds: int, fold_days: int | None = None) -> list[Split]:
    """Lead folds: expanding windows, oldest first; folds without enough history are left out."""
    return cfg.fold.splits(times, n=n_folds, evaluate=fold_days or cfg.eval_days)


@dataclass
class DealFold:
    """One stage_conversion fold: the models are fitted with labels censored at ``cutoff`` and
    validated on the snapshots ``cutoff <= as_of <= last`` (labels known at the tuning cutoff)."""

    cutoff: pd.Timestamp
    last: pd.Timestamp

    def describe(self) -> dict[str, str]:
        return {"fit": f"labels censored at {self.cutoff.date()}", "evaluate": f"{self.cutoff.date()}..{self.last.date()}"}


def deal_cv_folds(snaps: pd.DataFrame, cutoff: pd.Timestamp, cfg: Any, n_folds: int,
                  fold_days: int | None = None) -> list[DealFold]:
    """Deal folds, oldest first: consecutive ``fold_days`` windows ending at the last labelled
    snapshot; older folds whose fit or calibration windows hold too few events are left out."""
    h = pd.Timedelta(days=cfg.horizon_days)
    labelled = snaps.loc[snaps["as_of"] + h <= cutoff, "as_of"]
    if labelled.empty:
        raise FunnelcastError(f"no deal snapshot is labelled before {cutoff}: the export is too short to tune on")
    days = pd.Timedelta(days=fold_days or cfg.eval_days)
    folds: list[DealFold] = []
    last = labelled.max()
    for _ in range(n_folds):
        start = last - days + pd.Timedelta(days=1)
        if not _deal_fold_fits(snaps, start, cfg):
            break
        folds.insert(0, DealFold(cutoff=start, last=last))
        last = start - pd.Timedelta(days=1)
    if not folds:
        raise FunnelcastError(
            f"not enough deal history for time-ordered cross-validation before {cutoff.date()}: the latest fold's "
            "fit or calibration window holds too few next-stage, close or win events"
        )
    return folds


def _deal_fold_fits(snaps: pd.DataFrame, cutoff: pd.Timestamp, cfg: Any) -> bool:
    """Whether :func:`training.deals.fit_deal_scorer` can fit at ``cutoff`` (its positives rule,
    after widening the calibration window as far as it goes)."""
    from training.deals import fit_and_calibration_rows, rows_suffice

    return rows_suffice(fit_and_calibration_rows(snaps, cutoff, cfg))


def account_cv_folds(snaps: pd.DataFrame, n_folds: int, holdout: float = 0.4) -> list[tuple[int, int]]:
    """High-value folds, oldest first: ``(start, stop)`` row ranges of ``snaps`` (sorted by ``as_of``)
    cutting its latest ``holdout`` share into consecutive blocks; a block never splits one ``as_of``."""
    n = len(snaps)
    as_of = snaps["as_of"].to_numpy()
    edges = [int(round(n * (1 - holdout * (n_folds - k) / n_folds))) for k in range(n_folds + 1)]
    for i, e in enumerate(edges[:-1]):
        while 0 < e < n and as_of[e] == as_of[e - 1]:
            e += 1
        edges[i] = e
    folds = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b - a >= 10 and a >= 30]
    if not folds:
        raise FunnelcastError(f"only {n} customers with a complete value: too few for time-ordered cross-validation "
                              "(need about 60)")
    return folds


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
    """lead_quality: run (or resume) the study; returns the best parameters over every trial of the study."""
    h = pd.Timedelta(days=cfg.horizon_days)
    start = export.leads["created_at"].min() + pd.Timedelta(days=cfg.warmup_days)
    times = snapshot_times(start, cutoff - h, cfg.snapshot_every_days)
    spec = LeadFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, exclude=cfg.exclude, as_of=cutoff)
    cols = spec.feature_names
    plans = cv_folds(times, cfg, n_folds)
    snaps = lead_snapshots(export, times, spec, progress=progress)

    def fold(params: dict[str, Any], k: int) -> FoldScore:
        trial_cfg = TrainConfig(**{**cfg.__dict__, "params": {**cfg.params, **params}})
        clf = _fit(snaps, plans[k], spec, trial_cfg)
        ev = _rows(snaps, plans[k].evaluate)
        m = classification_metrics(ev["label"].to_numpy(), clf.predict_proba(ev[cols]))
        return m["log_loss"], m["roc_auc"], m["brier"], {}

    return _optimize(Task.LEAD_QUALITY.value, export, cutoff, len(cols), [p.describe() for p in plans], fold,
                     seed=cfg.seed, n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name,
                     client=client, experiment=experiment)


def tune_deals(
    export: Export,
    cfg: Any,
    cutoff: pd.Timestamp,
    *,
    n_trials: int | None,
    timeout: float | None = None,
    storage: str,
    study_name: str = Task.STAGE_CONVERSION.value,
    n_folds: int = 3,
    fold_days: int | None = None,
    client: MlflowClient | None = None,
    experiment: str = "funnelcast",
    progress: bool = False,
) -> TuneResult:
    """stage_conversion (``cfg``: a :class:`training.deals.DealTrainConfig`): the deal models'
    shared LightGBM parameters, on folds censored at their own cutoffs (see the module docstring)."""
    from features.deals import DealFeatureSpec
    from features.deals import snapshot_times as deal_snapshot_times
    from training.deals import (
        DealTrainConfig,
        build_snapshots,
        deal_metrics,
        evaluation_frame,
        fit_and_calibration_rows,
        fit_deal_scorer,
    )

    # the feature spec (categories, custom fields) as known at the earliest fold's cutoff, so no fold
    # sees a category first met after it; each fold learns from labels censored at its own cutoff
    start = export.opportunities["created_at"].min() + pd.Timedelta(days=cfg.warmup_days)
    times = [t for t in deal_snapshot_times(start, cutoff, cfg.snapshot_every_days)
             if t + pd.Timedelta(days=cfg.horizon_days) <= cutoff]  # build_snapshots' times whose horizon is labelled
    if not times:
        raise FunnelcastError(f"no deal snapshot is labelled before {cutoff}: the export is too short to tune on")
    earliest = times[-1] - n_folds * pd.Timedelta(days=fold_days or cfg.eval_days) + pd.Timedelta(days=1)
    spec = DealFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, exclude=cfg.exclude, as_of=earliest)
    _, snaps = build_snapshots(export, cutoff, cfg, progress=progress, spec=spec)
    folds = deal_cv_folds(snaps, cutoff, cfg, n_folds, fold_days)
    fold_rows: dict[int, dict[str, Any]] = {}  # a fold's fit and calibration rows do not depend on the parameters

    def fold(params: dict[str, Any], k: int) -> FoldScore:
        f = folds[k]
        trial_cfg = DealTrainConfig(**{**cfg.__dict__, "params": {**cfg.params, **params}})
        if k not in fold_rows:
            fold_rows[k] = fit_and_calibration_rows(snaps, f.cutoff, cfg)
        scorer = fit_deal_scorer(export, snaps, spec, f.cutoff, trial_cfg, surrogate=False, rows=fold_rows[k])
        rows = snaps[(snaps["as_of"] >= f.cutoff) & (snaps["as_of"] <= f.last)]
        m, _ = deal_metrics(evaluation_frame(scorer, rows, cutoff))
        return m["win_h_log_loss"], m["win_h_roc_auc"], m["win_h_brier"], {"next_log_loss": m["next_log_loss"],
                                                                            "next_roc_auc": m["next_roc_auc"]}

    return _optimize(Task.STAGE_CONVERSION.value, export, cutoff, len(spec.feature_names),
                     [f.describe() for f in folds], fold, seed=cfg.seed, n_trials=n_trials, timeout=timeout,
                     storage=storage, study_name=study_name, client=client, experiment=experiment)


def tune_accounts(
    export: Export,
    cfg: Any,
    cutoff: pd.Timestamp,
    *,
    n_trials: int | None,
    timeout: float | None = None,
    storage: str,
    study_name: str = Task.HIGH_VALUE.value,
    n_folds: int = 3,
    client: MlflowClient | None = None,
    experiment: str = "funnelcast",
    progress: bool = False,
) -> TuneResult:
    """high_value (``cfg``: a :class:`training.accounts.AccountConfig`): P(high value)'s LightGBM
    parameters on consecutive blocks of the latest customers (see the module docstring)."""
    from features.customers import AccountFeatureSpec, account_snapshots
    from training.accounts import AccountConfig, fit_high_value_classifier

    spec = AccountFeatureSpec.from_export(export, early_days=cfg.early_days, window_days=cfg.window_days)
    snaps, _ = account_snapshots(export, cutoff, spec, quantile=cfg.quantile, progress=progress)
    folds = account_cv_folds(snaps, n_folds)
    cols = spec.feature_names

    def fold(params: dict[str, Any], k: int) -> FoldScore:
        a, b = folds[k]
        trial_cfg = AccountConfig(**{**cfg.__dict__, "params": {**cfg.params, **params}})
        clf = fit_high_value_classifier(snaps.iloc[:a], spec, trial_cfg)
        ev = snaps.iloc[a:b]
        m = classification_metrics(ev["label"].to_numpy(), clf.predict_proba(ev[cols]))
        return m["log_loss"], m["roc_auc"], m["brier"], {}

    described = [{"fit": f"{a} customers before {snaps['as_of'].iloc[a].date()}",
                  "evaluate": f"{snaps['as_of'].iloc[a].date()}..{snaps['as_of'].iloc[b - 1].date()} ({b - a})"}
                 for a, b in folds]
    return _optimize(Task.HIGH_VALUE.value, export, cutoff, len(cols), described, fold, seed=cfg.seed,
                     n_trials=n_trials, timeout=timeout, storage=storage, study_name=study_name, client=client,
                     experiment=experiment)


def _optimize(
    task: str,
    export: Export,
    cutoff: pd.Timestamp,
    n_features: int,
    folds: list[dict[str, str]],
    fold: Callable[[dict[str, Any], int], FoldScore],
    *,
    seed: int,
    n_trials: int | None,
    timeout: float | None,
    storage: str,
    study_name: str,
    client: MlflowClient | None,
    experiment: str,
) -> TuneResult:
    """The study shared by every task: ``fold(params, k)`` scores fold ``k``; trial 0 is the defaults."""
    fingerprint = export_fingerprint(export)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    known = study.user_attrs.get("data_fingerprint")
    identity = {"data_fingerprint": fingerprint, "cutoff": str(cutoff), "features": n_features, "task": task}
    if known is not None and (known != fingerprint or study.user_attrs.get("cutoff") != str(cutoff)
                              or study.user_attrs.get("task", Task.LEAD_QUALITY.value) != task):
        raise FunnelcastError(
            f"study {study_name!r} in {storage} was run on other data or another task (fingerprint {known[:12]}, "
            f"cutoff {study.user_attrs.get('cutoff')}, task {study.user_attrs.get('task', 'lead_quality')}): its "
            "trials are not comparable; pass another --study name"
        )
    defaults = default_params(task)
    if known is None:
        for k, v in identity.items():
            study.set_user_attr(k, v)
        study.enqueue_trial(defaults)  # the defaults are trial 0
    exp_id = None
    if client:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, task)
        losses, aucs, briers = [], [], []
        extra: dict[str, list[float]] = {}
        with mlflow.start_run(experiment_id=exp_id, run_name=f"trial-{trial.number}", nested=True) if client else _null():
            if client:
                mlflow.log_params({**params, "trial": trial.number, "study": study_name, "task": task})
            for step in range(len(folds)):
                loss, auc, brier, more = fold(params, step)
                losses.append(loss)
                aucs.append(auc)
                briers.append(brier)
                for k, v in more.items():
                    extra.setdefault(k, []).append(v)
                if client:
                    mlflow.log_metrics({"fold_log_loss": loss, "fold_roc_auc": auc}, step=step)
                trial.report(float(np.mean(losses)), step)
                if trial.should_prune():
                    if client:
                        mlflow.set_tag("state", "pruned")
                    raise optuna.TrialPruned(f"pruned after fold {step + 1} of {len(folds)}")
            value = float(np.mean(losses))
            summary = {"cv_roc_auc": float(np.nanmean(aucs)), "cv_brier": float(np.mean(briers)),
                       **{f"cv_{k}": float(np.nanmean(v)) for k, v in extra.items()}}
            for k, v in summary.items():
                trial.set_user_attr(k, v)
            if client:
                mlflow.set_tag("state", "complete")
                mlflow.log_metrics({"cv_log_loss": value, **{k: v for k, v in summary.items() if np.isfinite(v)}})
        return value

    run_id = None
    started = time.perf_counter()
    if client:
        with mlflow.start_run(experiment_id=exp_id, run_name=f"tune-{task}") as run:
            mlflow.set_tags({"task": task, "kind": "tuning", "study": study_name, **provenance_tags(seed, fingerprint)})
            mlflow.log_params({"n_trials": n_trials, "timeout": timeout, "folds": len(folds), "storage": storage})
            study.optimize(objective, n_trials=n_trials, timeout=timeout)
            result = _result(study, storage, folds, fingerprint, defaults, task)
            mlflow.log_params({f"best_{k}": v for k, v in result.best_params.items()})
            mlflow.log_metrics({"best_cv_log_loss": result.best_value, "seconds": time.perf_counter() - started,
                                **({"default_cv_log_loss": result.default_value} if result.default_value else {})})
            run_id = run.info.run_id
    else:
        study.optimize(objective, n_trials=n_trials, timeout=timeout)
        result = _result(study, storage, folds, fingerprint, defaults, task)
    result.run_id = run_id
    return result


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
