"""Commands on the deal pipeline: ``forecast``, ``funnel``, ``backtest``."""

from __future__ import annotations

import argparse
from pathlib import Path

from features.settings import Settings
from models.tasks import Task
from training.cli_common import as_of_arg, by_arg, data_args, grouping, horizon, load_data, mlflow_client


def _load_deal_scorer(settings: Settings):
    from models.registry import load_scorer

    return load_scorer(mlflow_client(settings), Task.STAGE_CONVERSION.value, settings.model_alias)


def cmd_forecast(args: argparse.Namespace, settings: Settings) -> int:
    from models.forecast import forecast_bookings

    _, export = load_data(args, settings)
    loaded = _load_deal_scorer(settings)
    as_of = args.as_of or export.exported_at
    by = grouping(args.by)
    table = forecast_bookings(export, loaded.scorer, as_of, by=by, horizon_days=args.horizon, n_sims=args.sims,
                              seed=args.seed, include_new=not args.open_only)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    total = table.drop(columns=table.columns[0]).sum(numeric_only=True)
    print(f"bookings forecast {as_of.date()} + {args.horizon} d by {args.by} (stage_conversion v{loaded.version}, "
          f"{args.sims} simulations) -> {args.out}")
    print(table.round(0).to_string(index=False))
    print(f"sum of groups: expected {total['expected_bookings']:,.0f}; CRM weighted pipeline "
          f"{total['weighted_pipeline']:,.0f}; reps' close dates {total['reps_close_dates']:,.0f} "
          "(group P10/P90 do not add up: use --by none for the total's band)")
    return 0


def cmd_funnel(args: argparse.Namespace, settings: Settings) -> int:
    from models.funnel import funnel_plot, funnel_report

    _, export = load_data(args, settings)
    as_of = args.as_of or export.exported_at
    by = grouping(args.by)
    report = funnel_report(export, as_of, period_days=args.horizon, by=by)
    shown = report.table if by != "none" else report.overall
    print(f"funnel {report.start.date()}..{report.end.date()} (entries in the period, what became of them by its end)")
    print(shown.round(3).to_string(index=False))
    print("\nconversion to a later stage by period:\n" + report.by_quarter.round(3).to_string())
    print("\n" + report.summary())
    plot = args.plot or str(Path(settings.home) / "funnel.png")
    Path(plot).parent.mkdir(parents=True, exist_ok=True)
    funnel_plot(report, plot)
    if args.out:
        shown.to_csv(args.out, index=False)
        print(f"table -> {args.out}")
    print(f"plot -> {plot}")
    return 0


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from training.backtest import BacktestConfig, log_backtest, run_backtest, write_report
    from training.deals import DealTrainConfig

    source, export = load_data(args, settings)
    cfg = BacktestConfig(every_days=args.every_days, span_days=args.span_days, n_sims=args.sims,
                         by=grouping(args.by),
                         deal=DealTrainConfig(horizon_days=settings.horizon_days, seed=args.seed,
                                              timing_layout=args.timing_layout))
    result = run_backtest(export, cfg, progress=True)
    out = Path(args.out)
    write_report(result, out)
    print(result.overall.round(4).to_string(index=False))
    if not args.no_mlflow:
        run_id = log_backtest(result, mlflow_client(settings), settings.experiment, settings.artifact_location(), out,
                              cfg, source)
        print(f"figures logged to MLflow run {run_id}")
    print(f"report -> {out / 'report.md'} ({result.seconds:.0f} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("forecast", help="bookings forecast per group with P10/P50/P90 and the weighted pipeline",
                       description="Expected bookings within the horizon per group from the open pipeline (each deal's "
                       "P(won within the horizon) x amount, simulated as a Poisson-binomial) plus deals not yet "
                       "created (from the history and the lead flow), with P10/P50/P90, beside the CRM weighted "
                       "pipeline and the reps' close dates.")
    data_args(f)
    as_of_arg(f, "forecast time")
    f.add_argument("--horizon", type=horizon, default=91, help="horizon, e.g. 91d or 13w (default 91d)")
    by_arg(f, "owner_id")
    f.add_argument("--out", required=True, help="output CSV file")
    f.add_argument("--sims", type=int, default=5000, help="simulations (default 5000)")
    f.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    f.add_argument("--open-only", action="store_true", help="leave out deals not yet created")
    f.set_defaults(func=cmd_forecast)

    u = sub.add_parser("funnel", help="funnel analytics: conversion, time in stage, drop-off, bottleneck, plot",
                       description="Stage-to-stage conversion, median and 90th-percentile time in stage and drop-off "
                       "of the stage entries in the period before --as-of, by group; conversion by period; the "
                       "bottleneck stage (most expected value lost) and where it changed most against the previous "
                       "period. Prints the table and writes a plot.")
    data_args(u)
    as_of_arg(u, "end of the period")
    by_arg(u, "none")
    u.add_argument("--horizon", type=horizon, default=91, help="period length, e.g. 91d or 13w (default 91d)")
    u.add_argument("--plot", help="plot file (default <home>/funnel.png)")
    u.add_argument("--out", help="also write the table to this CSV file")
    u.set_defaults(func=cmd_funnel)

    b = sub.add_parser("backtest", help="forecast accuracy review over rolling origins",
                       description="At origins every --every-days over the last --span-days: train on what was known, "
                       "forecast the next horizon per owner, compare with what happened; WAPE, bias, share within "
                       "+-10%, P10-P90 coverage, deal AUC/Brier and the pipeline waterfall, for funnelcast, the "
                       "weighted pipeline and the reps' close dates. Writes OUT/report.md with plots and CSVs, and "
                       "logs the figures to MLflow.")
    data_args(b)
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--every-days", type=int, default=28, help="days between origins (default 28)")
    b.add_argument("--span-days", type=int, default=364, help="how far back the origins go (default 364)")
    by_arg(b, "owner_id")
    b.add_argument("--sims", type=int, default=2000, help="simulations per origin (default 2000)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    b.add_argument("--timing-layout", choices=("competing_risks", "close_share"), default="competing_risks",
                   help="stage_conversion's timing model (default competing_risks)")
    b.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    b.set_defaults(func=cmd_backtest)

