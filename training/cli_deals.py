"""Commands for deals: ``train-deals``, ``score opportunities``, ``forecast``, ``funnel``, ``backtest``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from features.settings import Settings
from training.cli import _timestamp, data_args, load_data, mlflow_client, reported_outcomes, tuned_params

N_REASONS = 5


def _days(value: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*d?\s*", value)
    if not m or int(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a horizon in days: {value!r} (e.g. 91d or 91)")
    return int(m[1])


def _deal_config(args: argparse.Namespace, settings: Settings):
    from training.deals import DealTrainConfig

    return DealTrainConfig(horizon_days=settings.horizon_days, snapshot_every_days=args.snapshot_every_days,
                           exclude=tuple(args.exclude or ()), seed=args.seed, timing_layout=args.timing_layout)


def _timing_layout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timing-layout", choices=("competing_risks", "close_share"), default="competing_risks",
                   help="the timing model: separate win and loss hazards (default), or a close hazard times "
                   "P(won | closes), the layout before 29 Nov (better on Maven CRM; see the README)")


def _load_deal_scorer(settings: Settings):
    from models.registry import load_scorer
    from models.tasks import Task

    return load_scorer(mlflow_client(settings), Task.STAGE_CONVERSION.value, settings.model_alias)


def _scoring_time(args: argparse.Namespace, export, scorer) -> pd.Timestamp:
    as_of = args.as_of or export.exported_at
    return as_of


def cmd_train_deals(args: argparse.Namespace, settings: Settings) -> int:
    from training.deals import log_and_register_deals
    from training.outcomes import build_deal_model_with_outcomes, log_outcome_labels

    source, export = load_data(args, settings)
    cutoff = args.as_of or export.exported_at
    cfg = _deal_config(args, settings)
    tuned = tuned_params(args, settings, "stage_conversion")
    if tuned:
        cfg.params = dict(tuned["params"])
    outcomes = reported_outcomes(args, settings, "stage_conversion", cutoff, what="deal outcome(s)")
    result, stats = build_deal_model_with_outcomes(export, cfg, cutoff, outcomes, progress=True)
    if stats is not None:
        print(f"snapshot rows decided by stored outcomes: {stats.labels_from_outcomes}, changed from the export: "
              f"{stats.labels_changed}, dropped (closed before the snapshot): {stats.rows_dropped}")
    result.scorer.metadata["params_source"] = f"tuned:{tuned['study']}#{tuned['trial']}" if tuned else "default"
    client = mlflow_client(settings)
    result = log_and_register_deals(result, client, experiment=settings.experiment,
                                    artifact_location=settings.artifact_location(), cfg=cfg, data_source=source,
                                    alias=settings.model_alias)
    log_outcome_labels(client, result.run_id, stats)
    client.log_param(result.run_id, "params_source", result.scorer.metadata["params_source"])
    rows = []
    for target, key in (("won (decided deals)", "win"), (f"won within {cfg.horizon_days} d", "win_h"),
                        (f"next stage within {cfg.horizon_days} d", "next")):
        for metric in ("roc_auc", "brier", "calibration_error"):
            rows.append({"target": target, "metric": metric, "funnelcast": result.metrics[f"{key}_{metric}"],
                         "stage win rate": result.baseline_metrics[f"{key}_{metric}"]})
    print(f"stage_conversion trained on history before {cutoff}; evaluation window {result.windows['evaluate']}")
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    print(f"registered stage_conversion version {result.version} as "
          f"{', '.join('@' + a for a in result.aliases)} (run {result.run_id})")
    return 0


def cmd_score_opportunities(args: argparse.Namespace, settings: Settings) -> int:
    from models.deals import score_open_deals

    _, export = load_data(args, settings)
    loaded = _load_deal_scorer(settings)
    as_of = _scoring_time(args, export, loaded.scorer)
    scored, _ = score_open_deals(export, loaded.scorer, as_of, n_reasons=N_REASONS)
    out = scored[["opportunity_id", "stage", "p_win", "p_win_within_horizon", "p_next_stage", "expected_close_date",
                  "amount", "amount_predicted", "expected_value"]].copy()
    out["expected_close_date"] = out["expected_close_date"].dt.date
    for k in range(N_REASONS):
        out[f"reason_{k + 1}"] = [r[k]["text"] if len(r) > k else "" for r in scored["reasons"]]
    out["warnings"] = ["; ".join(w) for w in scored["warnings"]]
    out["model_version"] = loaded.version
    out = out.sort_values(["expected_value", "opportunity_id"], ascending=[False, True], ignore_index=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(f"scored {len(out)} deals open at {as_of} with stage_conversion v{loaded.version} -> {args.out}")
    print(out.head(10)[["opportunity_id", "stage", "p_win", "p_win_within_horizon", "p_next_stage",
                        "expected_close_date", "expected_value"]].round(3).to_string(index=False))
    return 0


def cmd_forecast(args: argparse.Namespace, settings: Settings) -> int:
    from models.forecast import forecast_bookings

    _, export = load_data(args, settings)
    loaded = _load_deal_scorer(settings)
    as_of = _scoring_time(args, export, loaded.scorer)
    by = {"owner": "owner_id"}.get(args.by, args.by)
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
    by = {"owner": "owner_id"}.get(args.by, args.by)
    report = funnel_report(export, as_of, period_days=args.period_days, by=by)
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
    cfg = BacktestConfig(every=args.every_days, span=args.span_days, n_sims=args.sims,
                         by={"owner": "owner_id"}.get(args.by, args.by),
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


def _common(p: argparse.ArgumentParser, as_of_help: str) -> None:
    data_args(p)
    p.add_argument("--as-of", type=_timestamp, help=as_of_help)


def register(sub: argparse._SubParsersAction, score_sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train-deals", help="train, evaluate and register the deal models (stage_conversion)",
                       description="Build point-in-time deal snapshots, fit P(next stage), the timing model (a "
                       "discrete-time hazard with censoring: P(won), P(won within the horizon), expected close date), "
                       "evaluate on the latest window against the CRM's stage win rate, log to MLflow and register "
                       "stage_conversion (first version @champion, later ones @challenger). Uses the parameters of the last "
                       "`funnelcast tune --task stage_conversion` and the deal outcomes stored through POST /v1/outcomes.")
    _common(t, "train on history before this time only (default: export time)")
    t.add_argument("--exclude", nargs="*", help="feature columns to leave out")
    t.add_argument("--snapshot-every-days", type=int, default=14, help="days between snapshots (default 14)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _timing_layout_arg(t)
    t.add_argument("--default-params", action="store_true",
                   help="ignore the parameters of `funnelcast tune --task stage_conversion`")
    t.add_argument("--no-outcomes", action="store_true",
                   help="ignore the deal outcomes (won / lost) reported through POST /v1/outcomes (default: one "
                   "reported before the cutoff replaces what the export says happened to the deal)")
    t.set_defaults(func=cmd_train_deals)

    so = score_sub.add_parser("opportunities", help="score every deal open at --as-of",
                              description="Score every deal open at --as-of with stage_conversion@champion: p_win, "
                              "p_win_within_horizon, p_next_stage, expected_close_date, expected_value (amount "
                              "predicted from similar deals when missing) and the top reasons as text.")
    _common(so, "scoring time (default: export time)")
    so.add_argument("--out", required=True, help="output CSV file")
    so.set_defaults(func=cmd_score_opportunities)

    f = sub.add_parser("forecast", help="bookings forecast per group with P10/P50/P90 and the weighted pipeline",
                       description="Expected bookings within the horizon per group from the open pipeline (each deal's "
                       "P(won within the horizon) x amount, simulated as a Poisson-binomial) plus deals not yet "
                       "created (from the history and the lead flow), with P10/P50/P90, beside the CRM weighted "
                       "pipeline and the reps' close dates.")
    _common(f, "forecast time (default: export time)")
    f.add_argument("--horizon", type=_days, default=91, help="horizon, e.g. 91d (default 91d)")
    f.add_argument("--by", default="owner_id", choices=["owner_id", "owner", "team", "industry", "product", "none"],
                   help="grouping (default owner_id; none: the total)")
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
    _common(u, "end of the period (default: export time)")
    u.add_argument("--by", default="none", choices=["none", "owner_id", "owner", "team", "industry", "product"],
                   help="grouping (default none)")
    u.add_argument("--period-days", type=int, default=91, help="period length (default 91)")
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
    b.add_argument("--by", default="owner_id", choices=["owner_id", "owner", "team", "industry", "product", "none"],
                   help="grouping (default owner_id)")
    b.add_argument("--sims", type=int, default=2000, help="simulations per origin (default 2000)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _timing_layout_arg(b)
    b.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    b.set_defaults(func=cmd_backtest)


__all__ = ["register"]
