"""Model operations commands: ``funnelcast tune``, ``promote``, ``drift`` and ``backtest``.

tune, promote and drift take ``--task`` (every task); the flags mean what they mean in every
command (``training.cli_common``): ``--data``, ``--as-of``, ``--horizon 91d``, ``--by``, and
``--out`` a file for one table (drift's report), a folder where a command writes several
(backtest's report, plots and tables).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from features.engine import add_engine_args, engine_from, engine_session
from features.errors import FunnelcastError
from features.settings import Settings
from models.folds import InvalidFold, parse_duration
from models.tasks import Task
from training.cli_common import GROUPINGS, as_of_arg, data_args, grouping, horizon, load_data, mlflow_client

_TASKS = [t.value for t in Task]


def _duration(value: str) -> pd.Timedelta:
    """A duration argument such as ``91d`` or ``13w``."""
    try:
        return parse_duration(value, "duration")
    except InvalidFold as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    """Search a task's LightGBM parameters with Optuna on the rolling splits of its time fold (each
    evaluates just before the next; stage_conversion's fits censored at their cutoffs; high_value's
    over customers by snapshot time), median pruning, the study stored in <home>/optuna.db
    (resumable), each trial a nested MLflow run. The best parameters go to <home>/tuned/<task>.json;
    the next `funnelcast train --task TASK` uses them.
    """
    from training.tasks import task_definition
    from training.tune import study_storage, tune, write_tuned_params

    if args.trials is None and args.timeout is None:
        print("error: give --trials N and/or --timeout S", file=sys.stderr)
        return 2
    _, export = load_data(args, settings)
    cutoff = args.as_of or export.exported_at
    storage = args.storage or study_storage(settings.home)
    config = task_definition(args.task).config(horizon_days=args.horizon or settings.horizon_days,
                                               snapshot_every_days=settings.snapshot_every_days, seed=args.seed,
                                               exclude=tuple(args.exclude or ()))
    result = tune(args.task, export, cutoff, None, args.trials, config=config, timeout=args.timeout, storage=storage,
                  study_name=args.study, n_folds=args.folds, client=mlflow_client(settings, create=True),
                  experiment=settings.experiment, progress=True)
    path = write_tuned_params(settings.home, result, args.task)
    print(f"{args.task}: study {result.study_name!r} ({storage}): {result.trials} trials, {result.complete} complete, "
          f"{result.pruned} pruned; validation folds (time-ordered): " + "; ".join(f["evaluate"] for f in result.folds))
    default = f"{result.default_value:.5f}" if result.default_value is not None else "n/a"
    print(f"cross-validated log loss: best {result.best_value:.5f} (trial {result.best_trial}), defaults {default}")
    print(json.dumps(result.best_params, indent=2))
    print(f"best parameters -> {path}; the next `funnelcast train --task {args.task}` uses them "
          f"(MLflow run {result.run_id})")
    return 0


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    """Compare the challenger and the champion on the same most recent labelled window of the export
    (ROC AUC, Brier, calibration error; lead_quality: converts within the horizon; stage_conversion:
    won within the horizon, plus the forecast's WAPE by owner; high_value: P(high value) on the
    latest customers); move @champion only when the challenger is better by a margin, not worse
    calibrated and (stage_conversion) not a worse forecast, and never below the baseline floor (the
    best simple baseline on the challenger's evaluation window, within one standard error of its
    AUC) unless --force. The figures and the decision are printed and logged to MLflow.
    """
    from training.promote import Margins, promote

    _, export = load_data(args, settings)
    d = promote(export, mlflow_client(settings), task=args.task, experiment=settings.experiment,
                evaluate=args.evaluate,
                margins=Margins(auc=args.auc_margin, brier=args.brier_margin, calibration=args.calibration_tolerance,
                                wape=args.wape_tolerance),
                champion_alias=settings.model_alias, dry_run=args.dry_run, force=args.force)
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
    """Population stability index and missing-rate change per feature, and the score shift, between the
    model's training reference (logged with it: its latest training rows) and what it scores at
    --as-of in the export: the open leads (lead_quality), the open deals (stage_conversion; score =
    P(won)) or the accounts (high_value; score = P(high value)).
    """
    from models.drift import drift_frame, drift_plot, drift_report
    from models.registry import load_scorer

    _, export = load_data(args, settings)
    as_of = args.as_of or export.exported_at
    loaded = load_scorer(mlflow_client(settings), args.task, args.alias or settings.model_alias)
    scorer = loaded.scorer
    reference = scorer.metadata.get("reference")
    if not reference:
        raise FunnelcastError(f"{args.task} v{loaded.version} was logged without reference distributions: retrain it")
    from training.tasks import task_definition

    definition = task_definition(args.task)
    population = definition.population(export, as_of)
    X, scores = definition.drift_features(scorer, export, population, as_of)
    report = drift_report(reference, X, scores)
    table = drift_frame(report)
    print(f"{args.task} v{loaded.version}: {report['rows']} {definition.drift_population} at {as_of} against "
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
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"model": loaded.version, "as_of": str(as_of), **report}, indent=1,
                                             default=str))
        print(f"report -> {args.out}")
    return 0


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    """At the deal models' time-fold origins (every --every over the last --span, the latest a horizon
    before the export): train stage_conversion on what was known, forecast the next horizon per
    group, compare with what happened; WAPE, bias, share within +-10%, P10-P90 coverage, deal
    AUC/Brier and the pipeline waterfall, for funnelcast, the weighted pipeline and the reps' close
    dates. Writes OUT/report.md with plots and CSVs, and logs the figures to MLflow.
    """
    from training.backtest import BacktestConfig, log_backtest, origins, run_backtest, skipped_text, write_report

    if args.period:
        return _backtest_periods(args, settings)

    source, export = load_data(args, settings)
    deal = _backtest_deal_config(args, settings, export)
    cfg = BacktestConfig(every=args.every, span=args.span, n_sims=args.sims, by=grouping(args.by),
                         deal=replace(deal, timing_layout=args.timing_layout))
    times = origins(export, cfg)
    print(f"backtest: {len(times)} origins every {_days(args.every)} from {times[0].date()} to {times[-1].date()} "
          f"(the last {_days(args.span)}, the latest a horizon before the export), each forecasting the next "
          f"{deal.horizon_days}d by {cfg.by}")
    with engine_session(engine_from(args, settings, announce=True)):  # --engine dask: snapshots and fits on a cluster
        result = run_backtest(export, cfg, progress=True)
    if result.skipped:
        print(skipped_text(result.skipped, result.per_origin["origin"].nunique(), remedy=result.remedy),
              file=sys.stderr)
    out = Path(args.out)
    write_report(result, out)
    print(result.overall.round(4).to_string(index=False))
    if not args.no_mlflow:
        run_id = log_backtest(result, mlflow_client(settings, create=True), settings.experiment, settings.artifact_location(), out,
                              cfg, source)
        print(f"figures logged to MLflow run {run_id}")
    print(f"report -> {out / 'report.md'} ({result.seconds:.0f} s)")
    return 0


def _days(duration: pd.Timedelta) -> str:
    """A whole-day duration as the flags take it (``28d``)."""
    return f"{duration.days}d" if duration == pd.Timedelta(days=duration.days) else str(duration)


def _backtest_deal_config(args: argparse.Namespace, settings: Settings, export: Any) -> Any:
    """stage_conversion's config of a backtest, its horizon resolved (--horizon, FUNNELCAST_HORIZON_DAYS,
    else chosen from the export's decisions), and the horizon printed first with where it came from, as
    `funnelcast train` says it: the backtest's origins and forecasts depend on it."""
    from models.tasks import resolve_horizon
    from training.tasks import task_definition

    definition = task_definition(Task.STAGE_CONVERSION)
    deal = definition.config(horizon_days=args.horizon or settings.horizon_days,
                             snapshot_every_days=settings.snapshot_every_days, seed=args.seed)
    deal, chosen = resolve_horizon(definition, export, export.exported_at, deal)
    print(f"backtest: stage_conversion {chosen.describe()}")
    return deal


def _backtest_periods(args: argparse.Namespace, settings: Settings) -> int:
    """``backtest --period month|quarter``: the calendar-period forecast at past periods (training.backtest)."""
    from training.backtest import (PeriodBacktestConfig, log_period_backtest, period_origins, run_period_backtest,
                                   skipped_text, write_period_report)

    source, export = load_data(args, settings)
    deal = _backtest_deal_config(args, settings, export)
    cfg = PeriodBacktestConfig(period=args.period, periods=args.periods, at_day=args.at_day, n_sims=args.sims,
                               by=grouping(args.by), deal=replace(deal, timing_layout=args.timing_layout))
    periods = period_origins(export, cfg)
    print(f"backtest: the last {len(periods)} complete {cfg.period}s, from {periods[0][0].date()} to "
          f"{(periods[-1][2] - pd.Timedelta(days=1)).date()}, each forecast at day {cfg.at_day} by {cfg.by}")
    with engine_session(engine_from(args, settings, announce=True)):
        result = run_period_backtest(export, cfg, progress=True)
    if result.skipped:
        print(skipped_text(result.skipped, result.per_origin["origin"].nunique(), cfg.period, remedy=result.remedy),
              file=sys.stderr)
    out = Path(args.out)
    paths = write_period_report(result, out, cfg)
    print(result.overall.round(4).to_string(index=False))
    if not args.no_mlflow:
        run_id = log_period_backtest(result, mlflow_client(settings), settings.experiment, settings.artifact_location(),
                                     out, cfg, source)
        print(f"figures logged to MLflow run {run_id}")
    print(f"tables -> {', '.join(str(p) for p in paths)} ({result.seconds:.0f} s)")
    return 0


def _flag(text: str, kind: type | None = None, default: Any = None, **kw: Any) -> dict[str, Any]:
    """``add_argument`` keywords: the default, when there is one, is said in the help."""
    return {"help": text if default is None else f"{text} (default {default})",
            **({"type": kind} if kind else {}), **({"default": default} if default is not None else {}), **kw}


def _command(sub: argparse._SubParsersAction, name: str, func: Any, summary: str, flags: dict[str, dict[str, Any]],
             task: str | None = None, as_of: str | None = None) -> argparse.ArgumentParser:
    """One command, described by ``func``'s docstring: ``--data``, ``--task`` (every task) and ``--as-of``
    where they apply, then ``flags``."""
    sp = sub.add_parser(name, help=summary, description=inspect.cleandoc(func.__doc__ or summary))
    data_args(sp)
    if task:
        sp.add_argument("--task", choices=_TASKS, default=Task.LEAD_QUALITY.value,
                        help=f"{task} (default lead_quality): {', '.join(_TASKS)}")
    if as_of:
        as_of_arg(sp, as_of)
    for flag, kw in flags.items():
        sp.add_argument(flag, **kw)
    sp.set_defaults(func=func)
    return sp


def register(sub: argparse._SubParsersAction) -> None:
    _command(sub, "tune", cmd_tune, "Optuna search of a task's LightGBM parameters (time-ordered CV)", {
        "--horizon": _flag("label horizon, e.g. 91d or 13w (default FUNNELCAST_HORIZON_DAYS)", horizon),
        "--trials": _flag("number of trials to add to the study", int),
        "--timeout": _flag("stop starting trials after S seconds", float),
        "--folds": _flag("time-ordered folds", int, 3),
        "--study": _flag("study name (default: the task); a new name starts a fresh study"),
        "--storage": _flag("Optuna storage URL (default sqlite:///<home>/optuna.db)"),
        "--seed": _flag("sampler and model seed", int, 0),
        "--exclude": _flag("feature columns to leave out (lead_quality, stage_conversion)", nargs="*"),
    }, task="the task to tune", as_of="tune on history before this time only")
    _command(sub, "promote", cmd_promote, "compare @challenger with @champion and move @champion if it wins", {
        "--evaluate": _flag("length of the comparison window, e.g. 13w", _duration, "91d"),
        "--auc-margin": _flag("AUC gain that counts as better", float, 0.002),
        "--brier-margin": _flag("relative Brier reduction that counts as better (0.01 = 1%%)", float, 0.01),
        "--calibration-tolerance": _flag("largest increase of the calibration error accepted", float, 0.005),
        "--wape-tolerance": _flag("stage_conversion: largest increase of the forecast's WAPE by owner "
                                  "accepted", float, 0.02),
        "--dry-run": _flag("decide and log, but leave the aliases alone", action="store_true"),
        "--force": _flag("promote even when the challenger is below the best simple baseline on its evaluation "
                         "window (the baseline floor)", action="store_true"),
    }, task="the task whose models are compared")
    _command(sub, "drift", cmd_drift, "feature and score drift of an export against the model's training data", {
        "--alias": _flag("model alias (default: champion)"),
        "--top": _flag("features to print", int, 15),
        "--plot": _flag("write a PSI bar chart to this PNG file"),
        "--out": _flag("write the full report to this JSON file"),
    }, task="the task whose model is checked", as_of="what the model scores at this time")
    backtest = _command(sub, "backtest", cmd_backtest, "forecast accuracy review over rolling origins (stage_conversion)", {
        "--out": _flag("output folder (report.md, plots, CSV tables)", required=True),
        "--horizon": _flag("forecast horizon, e.g. 91d (default FUNNELCAST_HORIZON_DAYS)", horizon),
        "--by": _flag("grouping", default="owner_id", choices=GROUPINGS),
        "--every": _flag("time between origins, e.g. 4w", _duration, "28d"),
        "--span": _flag("how far back the origins go, e.g. 52w", _duration, "364d"),
        "--sims": _flag("simulations per origin", int, 2000),
        "--seed": _flag("random seed", int, 0),
        "--timing-layout": _flag("stage_conversion's timing model (default: chosen per fit on the validation window)",
                                 choices=("competing_risks", "close_share")),
        "--no-mlflow": _flag("do not log to MLflow", action="store_true"),
        "--period": _flag("backtest the forecast of calendar periods instead: month or quarter",
                          choices=("month", "quarter")),
        "--periods": _flag("with --period: how many past complete periods", int, 4),
        "--at-day": _flag("with --period: the forecast is made this many days into each period", int, 0),
    })
    add_engine_args(backtest)
