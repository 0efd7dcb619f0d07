"""Commands on the deal pipeline: ``forecast`` (rolling or ``--period month|quarter``), ``funnel`` (``backtest`` is in ``training.cli_ops``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from features.errors import NothingToLearnFrom
from features.settings import Settings
from models.forecast import CRM_CATEGORIES, UNASSIGNED
from models.tasks import Task
from training.cli_common import as_of_arg, by_arg, data_args, grouping, horizon, load_data, mlflow_client


def _load_deal_scorer(settings: Settings):
    from models.registry import load_scorer

    return load_scorer(mlflow_client(settings), Task.STAGE_CONVERSION.value, settings.model_alias)


def _period_rows(fc) -> pd.DataFrame:
    """One table of a period forecast: the company, each team (by owner), then each group."""
    parts = [fc.total.assign(level="company")]
    if fc.teams is not None:
        parts.append(fc.teams.rename(columns={"team": "group"}).assign(level="team"))
    parts.append(fc.groups.assign(level="rep" if fc.by == "owner_id" else fc.by))
    table = pd.concat(parts, ignore_index=True)
    if fc.by == "owner_id":  # deals without an owner are shown, never as a rep
        table.loc[(table["level"] == "rep") & (table["group"] == UNASSIGNED), "level"] = UNASSIGNED
    table.insert(0, "level", table.pop("level"))
    for i, (col, value) in enumerate((("period", fc.period), ("start", str(fc.start.date())),
                                      ("end", str((fc.end - pd.Timedelta(days=1)).date())))):
        table.insert(i, col, value)
    return table


def _forecast_period(args: argparse.Namespace, export, loaded, as_of: pd.Timestamp, by: str) -> pd.DataFrame:
    from models.forecast import period_forecast

    fc = period_forecast(export, loaded.scorer, as_of, period=args.period, by=by, n_sims=args.sims, seed=args.seed,
                         include_new=not args.open_only)
    table = _period_rows(fc)
    t = fc.total.iloc[0]
    print(f"{args.period} {fc.start.date()}..{(fc.end - pd.Timedelta(days=1)).date()} as of {as_of} by {args.by} "
          f"(stage_conversion v{loaded.version}, {args.sims} simulations)")
    shown = ["level", "group", "won_so_far", "expected_open_pipeline", "expected_new_deals", "expected_total", "p10",
             "p50", "p90", "weighted_pipeline"] + [c for c in CRM_CATEGORIES.values() if c in table.columns]
    print(table[shown].round(0).to_string(index=False))
    print(f"company: won so far {t['won_so_far']:,.0f} + open deals {t['expected_open_pipeline']:,.0f} + deals not "
          f"yet created {t['expected_new_deals']:,.0f} = {t['expected_total']:,.0f} (P10 {t['p10']:,.0f}, P90 "
          f"{t['p90']:,.0f}); CRM: won so far + weighted pipeline {t['won_so_far'] + t['weighted_pipeline']:,.0f}")
    print(f"deals not yet created: {fc.new_deals}")
    if not fc.has_crm_categories:
        print("CRM forecast categories: none (the export has no forecast_category, or --as-of is before the export time)")
    return table


def cmd_forecast(args: argparse.Namespace, settings: Settings) -> int:
    from models.forecast import forecast_bookings
    from training.score import readable

    _, export = load_data(args, settings)
    loaded = _load_deal_scorer(settings)
    as_of = args.as_of or export.exported_at
    by = grouping(args.by)
    if args.period:
        if args.horizon is not None:
            print("error: --period and --horizon exclude each other (a period ends at its calendar end)", file=sys.stderr)
            return 2
        table = _forecast_period(args, export, loaded, as_of, by)
    else:
        h = args.horizon or 91
        table = forecast_bookings(export, loaded.scorer, as_of, by=by, horizon_days=h, n_sims=args.sims,
                                  seed=args.seed, include_new=not args.open_only)
        total = table.drop(columns=table.columns[0]).sum(numeric_only=True)
        print(f"bookings forecast {as_of.date()} + {h} d by {args.by} (stage_conversion v{loaded.version}, "
              f"{args.sims} simulations)")
        print(table.round(0).to_string(index=False))
        print(f"sum of groups: expected {total['expected_bookings']:,.0f}; CRM weighted pipeline "
              f"{total['weighted_pipeline']:,.0f}; reps' close dates {total['reps_close_dates']:,.0f} "
              "(group P10/P90 do not add up: use --by none for the total's band, or --period for calendar periods)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    readable(table, as_of, f"stage_conversion@{loaded.version}").to_csv(args.out, index=False)
    print(f"-> {args.out}")
    return 0


def cmd_funnel(args: argparse.Namespace, settings: Settings) -> int:
    from models.funnel import funnel_plot, funnel_report

    _, export = load_data(args, settings)
    as_of = args.as_of or export.exported_at
    by = grouping(args.by)
    # the API's /v1/funnel says the same (serving/forecasting.py, by hand: training does not import serving)
    if export.stage_history.empty:
        n = len(export.opportunities)
        raise NothingToLearnFrom("the funnel needs deals and their stage history",
                                 f"{f'{n:,} opportunities' if n else 'no opportunities'} and no stage_history rows: "
                                 "include the deals and each one's stage changes (stage_history) in the export")
    report = funnel_report(export, as_of, period_days=args.horizon, by=by)
    if not report.bottleneck:  # no stage had a deal in the period
        entered = export.stage_history["entered_at"]
        first, last = entered.min(), entered.max()
        low = (first + pd.Timedelta(days=1)).date()
        high = min(last + (report.end - report.start), export.exported_at).date()
        raise NothingToLearnFrom(
            f"the funnel needs deals that entered a stage from {report.start.date()} to {report.end.date()}",
            f"none then (its deals entered stages from {first.date()} to {last.date()}): choose an --as-of "
            f"from {low} to {high}")
    shown = report.table if by != "none" else report.overall
    print(f"funnel {report.start.date()}..{report.end.date()} (entries in the period, what became of them by its end)")
    print(shown.round(3).to_string(index=False))
    print("\nconversion to a later stage by period:\n" + report.by_quarter.round(3).to_string())
    print("\n" + report.summary())
    plot = args.plot or str(Path(settings.home) / "funnel.png")
    Path(plot).parent.mkdir(parents=True, exist_ok=True)
    funnel_plot(report, plot)
    if args.out:
        from training.score import readable

        readable(shown, as_of).to_csv(args.out, index=False)
        print(f"table -> {args.out}")
    print(f"plot -> {plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("forecast", help="bookings forecast per group with P10/P50/P90 and the weighted pipeline",
                       description="Expected bookings within the horizon per group from the open pipeline (each deal's "
                       "P(won within the horizon) x amount, simulated as a Poisson-binomial) plus deals not yet "
                       "created (from the history and the lead flow), with P10/P50/P90, beside the CRM weighted "
                       "pipeline and the reps' close dates. With --period: the calendar month or quarter.")
    data_args(f)
    as_of_arg(f, "forecast time")
    f.add_argument("--horizon", type=horizon, help="rolling horizon, e.g. 91d or 13w (default 91d)")
    f.add_argument("--period", choices=("month", "quarter"),
                   help="forecast the calendar month or quarter holding --as-of instead: won so far + open deals "
                   "won by its end + deals not yet created, with the team roll-up and the CRM forecast categories")
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

