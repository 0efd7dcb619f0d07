"""Model operations commands: ``funnelcast tune``, ``funnelcast promote``, ``funnelcast drift``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.errors import FunnelcastError
from features.settings import Settings
from models.tasks import Task
from training.cli_common import data_args, load_data, mlflow_client
from training.cli_common import timestamp as _timestamp

_TASKS = [t.value for t in Task]


_DRIFT_TASKS = (Task.LEAD_QUALITY.value, Task.STAGE_CONVERSION.value)


def _drift_population(task: str, scorer: Any, export: Any, as_of: pd.Timestamp) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The features and scores of what the model would score at ``as_of``: the leads open then
    (lead_quality) or the deals open then (stage_conversion, scores = P(won))."""
    if task == Task.LEAD_QUALITY.value:
        from features.pit import open_leads

        X = scorer.features(open_leads(export.leads, as_of), export.accounts, export.activities, as_of)
        return X, scorer.predict_proba(X), "leads"
    if task == Task.STAGE_CONVERSION.value:
        from features.deals import open_opportunities

        opps = open_opportunities(export.opportunities, export.stage_history, as_of)
        X, _ = scorer.features(opps, export.stage_history, export.activities, export.leads, export.accounts, as_of)
        return X, scorer.predict(X)["p_win"].to_numpy(), "deals"
    raise FunnelcastError(f"drift is implemented for {' and '.join(map(repr, _DRIFT_TASKS))}, not for {task!r}")


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from training.tune import study_storage, tune, tune_accounts, tune_deals, write_tuned_params

    if args.trials is None and args.timeout is None:
        print("error: give --trials N and/or --timeout S", file=sys.stderr)
        return 2
    source, export = load_data(args, settings)
    cutoff = args.as_of or export.exported_at
    exclude = tuple(args.exclude or ())
    storage = args.storage or study_storage(settings.home)
    client = mlflow_client(settings)
    common = dict(n_trials=args.trials, timeout=args.timeout, storage=storage, study_name=args.study or args.task,
                  n_folds=args.folds, client=client, experiment=settings.experiment, progress=True)
    if args.task == Task.STAGE_CONVERSION.value:
        from training.deals import DealTrainConfig

        cfg = DealTrainConfig(horizon_days=settings.horizon_days, snapshot_every_days=settings.snapshot_every_days,
                              exclude=exclude, seed=args.seed)
        result, metric, train = tune_deals(export, cfg, cutoff, **common), "won-within-horizon log loss", "train-deals"
    elif args.task == Task.HIGH_VALUE.value:
        from training.accounts import AccountConfig

        if exclude:
            raise FunnelcastError("--exclude applies to lead_quality and stage_conversion, not to high_value")
        cfg = AccountConfig(seed=args.seed)
        result, metric, train = tune_accounts(export, cfg, cutoff, **common), "P(high value) log loss", "train-accounts"
    else:
        from training.train import TrainConfig

        cfg = TrainConfig(horizon_days=settings.horizon_days, snapshot_every_days=settings.snapshot_every_days,
                          exclude=exclude, seed=args.seed)
        result, metric, train = tune(export, cfg, cutoff, **common), "log loss", "train"
    path = write_tuned_params(settings.home, result, args.task)
    print(f"{args.task}: study {result.study_name!r} ({storage}): {result.trials} trials, {result.complete} complete, "
          f"{result.pruned} pruned; validation folds (time-ordered): " + "; ".join(f["evaluate"] for f in result.folds))
    default = f"{result.default_value:.5f}" if result.default_value is not None else "n/a"
    print(f"cross-validated {metric}: best {result.best_value:.5f} (trial {result.best_trial}), defaults {default}")
    print(json.dumps(result.best_params, indent=2))
    print(f"best parameters -> {path}; the next `funnelcast {train}` uses them (MLflow run {result.run_id})")
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    from training.promote import Margins, promote

    _, export = load_data(args, settings)
    d = promote(export, mlflow_client(settings), task=args.task, experiment=settings.experiment,
                window_days=args.window_days, every_days=settings.snapshot_every_days,
                margins=Margins(auc=args.auc_margin, brier=args.brier_margin, calibration=args.calibration_tolerance,
                                wape=args.wape_tolerance),
                champion_alias=settings.model_alias, dry_run=args.dry_run)
    if d.champion:
        print(f"{d.task}: champion v{d.champion_version} vs challenger v{d.challenger_version} on {d.window}, "
              f"{d.mode} mode")
        print(d.table().round(4).to_string())
    verdict = "PROMOTE" if d.promote else "KEEP champion"
    done = " (dry run: aliases unchanged)" if args.dry_run and d.promote else ""
    print(f"decision: {verdict}: {d.reason}{done} (MLflow run {d.run_id})")
    if d.promote and not args.dry_run:
        print(f"{d.task}@{settings.model_alias} -> version {d.challenger_version}; running APIs pick it up with "
              "their alias poll (FUNNELCAST_RELOAD_POLL_SECONDS) or POST /v1/admin/reload")
    return 0


def cmd_drift(args: argparse.Namespace, settings: Settings) -> int:
    from models.drift import drift_frame, drift_plot, drift_report
    from models.registry import load_scorer

    _, export = load_data(args, settings)
    as_of = args.as_of or export.exported_at
    loaded = load_scorer(mlflow_client(settings), args.task, args.alias or settings.model_alias)
    scorer = loaded.scorer
    reference = scorer.metadata.get("reference")
    if not reference:
        raise FunnelcastError(f"{args.task} v{loaded.version} has no reference distributions: retrain it")
    X, scores, what = _drift_population(args.task, scorer, export, as_of)
    report = drift_report(reference, X, scores)
    table = drift_frame(report)
    print(f"{args.task} v{loaded.version}: {report['rows']} {what} open at {as_of} against "
          f"{report['reference_rows']} training rows (the model's latest training window)")
    s = report["score"]
    print(f"score: PSI {s['psi']:.4f} ({s['level']}), mean {s['mean_reference']:.4f} -> {s['mean_recent']:.4f}")
    shown = table.head(args.top)
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    flagged = table[table["level"] != "stable"]
    print(f"{len(flagged)} of {len(table)} features drifted (PSI > 0.1): "
          + (", ".join(flagged["feature"].head(10)) or "none"))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        drift_plot(report, args.plot)
        print(f"plot -> {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": loaded.version, "as_of": str(as_of), **report}, indent=1, default=str))
        print(f"report -> {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("tune", help="Optuna search of the LightGBM parameters (time-ordered CV)",
                       description="Search a task's LightGBM parameters with Optuna: time-ordered cross-validation "
                       "(expanding window over as_of; for stage_conversion each fold's labels censored at its cutoff; "
                       "for high_value consecutive blocks of the latest customers), median pruning, the study stored in "
                       "<home>/optuna.db (resumable), each trial a nested MLflow run. The best parameters go to "
                       "<home>/tuned/<task>.json; the next `train` (lead_quality), `train-deals` (stage_conversion) or "
                       "`train-accounts` (high_value) uses them.")
    data_args(t)
    t.add_argument("--task", choices=_TASKS, default=Task.LEAD_QUALITY.value,
                   help="task (default lead_quality): lead_quality, stage_conversion (the deal models) or high_value")
    t.add_argument("--trials", type=int, help="number of trials to add to the study")
    t.add_argument("--timeout", type=float, help="stop starting trials after S seconds")
    t.add_argument("--folds", type=int, default=3, help="time-ordered folds (default 3)")
    t.add_argument("--study", help="study name (default: the task); a new name starts a fresh study")
    t.add_argument("--storage", help="Optuna storage URL (default sqlite:///<home>/optuna.db)")
    t.add_argument("--as-of", type=_timestamp, help="tune on history before this time only (default: export time)")
    t.add_argument("--exclude", nargs="*", help="feature columns to leave out (lead_quality, stage_conversion)")
    t.add_argument("--seed", type=int, default=0, help="sampler and model seed (default 0)")
    t.set_defaults(func=cmd_tune)

    p = sub.add_parser("promote", help="compare @challenger with @champion and move @champion if it wins",
                       description="Compare the challenger and the champion on the same most recent labelled "
                       "window of the export (ROC AUC, Brier, calibration error; lead_quality: converts within the "
                       "horizon; stage_conversion: won within the horizon, plus the forecast's WAPE by owner; "
                       "high_value: P(high value) on the latest customers); move @champion only when the challenger "
                       "is better by a margin, not worse calibrated and (stage_conversion) not a worse forecast. The "
                       "figures and the decision are printed and logged to MLflow.")
    data_args(p)
    p.add_argument("--task", choices=_TASKS, default=Task.LEAD_QUALITY.value, help="task (default lead_quality)")
    p.add_argument("--window-days", type=int, default=91, help="length of the comparison window (default 91)")
    p.add_argument("--auc-margin", type=float, default=0.002, help="AUC gain that counts as better (default 0.002)")
    p.add_argument("--brier-margin", type=float, default=0.01,
                   help="relative Brier reduction that counts as better (default 0.01 = 1%%)")
    p.add_argument("--calibration-tolerance", type=float, default=0.005,
                   help="largest increase of the calibration error accepted (default 0.005)")
    p.add_argument("--wape-tolerance", type=float, default=0.02,
                   help="stage_conversion: largest increase of the forecast's WAPE by owner accepted (default 0.02)")
    p.add_argument("--dry-run", action="store_true", help="decide and log, but leave the aliases alone")
    p.set_defaults(func=cmd_promote)

    d = sub.add_parser("drift", help="feature and score drift of an export against the model's training data",
                       description="Population stability index and missing-rate change per feature, and the score "
                       "shift, between the model's training reference (logged with it) and the leads (lead_quality) "
                       "or deals (stage_conversion; score = P(won)) open at --as-of in the export.")
    data_args(d)
    d.add_argument("--task", choices=_DRIFT_TASKS, default=Task.LEAD_QUALITY.value,
                   help="task (default lead_quality)")
    d.add_argument("--as-of", type=_timestamp, help="the leads or deals open at this time (default: export time)")
    d.add_argument("--alias", help="model alias (default: champion)")
    d.add_argument("--top", type=int, default=15, help="features to print (default 15)")
    d.add_argument("--plot", help="write a PSI bar chart to this PNG file")
    d.add_argument("--json", help="write the full report to this JSON file")
    d.set_defaults(func=cmd_drift)

