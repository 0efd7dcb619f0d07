"""Deal-win model and monthly forecast backtest on Maven CRM (../shared/data/maven_crm).

Imports Maven with its built-in mapping (``funnelcast import --mapping maven_crm``, bad rows
skipped: see the mapping's notes for what is real and what is synthetic), then

1. **deal win** at monthly origins (1st of each month, ``--origins``): the funnelcast deal
   models are fitted on what was known at the origin (labels censored there, exactly as
   ``funnelcast train --task stage_conversion`` / ``backtest`` do), and every deal open at the origin is scored.
   Compared on the same deals: the CRM stage win rate (point in time; Maven records one open
   stage, so it is one number per origin) and a logistic regression on the same snapshot
   features, fitted on the snapshots before the origin whose outcome was known then. Targets:
   won eventually (deals decided by the export) and won within the 30-day horizon (all).
2. **forecast backtest**: :func:`training.backtest.run_backtest` with a 30-day horizon and an
   origin every 30 days (a "month" is 30 days: the backtest's origins step back from the
   export's last complete horizon), grouped by sales agent, by manager (``team``) and in total;
   funnelcast against the CRM weighted pipeline and the reps' close dates. Maven has no
   expected close date: the mapping gives every deal engage_date + 45 days (SYNTHETIC, listed
   in IMPORT.json), which is what the two CRM baselines use.

``close_value`` (0 for every lost deal: written after the outcome) is excluded from every model.

    python benchmarks/public_deals.py [--data ../shared/data] [--sims 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from features.adapters import import_export
from features.contract import Export
from features.deals import CALENDAR_FEATURES, DealFeatureSpec, deal_snapshots, snapshot_times
from models.metrics import classification_metrics
from training.backtest import BacktestConfig, run_backtest
from training.deals import DealTrainConfig, censored, fit_deal_scorer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from public_data import logistic_regression  # noqa: E402  (benchmarks/ is a folder of scripts)

REPO = Path(__file__).resolve().parents[1]
LEAKS = ("close_value", "lead_close_value")  # 0 for lost deals: set after the outcome
ORIGINS = ("2017-07-01", "2017-08-01", "2017-09-01", "2017-10-01", "2017-11-01")


def deal_config(seed: int = 0, timing_layout: str | None = None, calendar: bool = True, **more: Any) -> DealTrainConfig:
    """30-day horizon, weekly snapshots; 14 months of history leave 42-day calibration windows;
    the timing layout and LightGBM rung chosen per fit on the validation window (``None``);
    ``calendar=False`` leaves out the sales-calendar features (the model before them)."""
    exclude = LEAKS if calendar else (*LEAKS, *CALENDAR_FEATURES)
    return DealTrainConfig(horizon_days=30, snapshot_every_days=7, eval_days=42, calib_days=42, warmup_days=30,
                           exclude=exclude, seed=seed, timing_layout=timing_layout, **more)


def load_maven(folder: Path) -> tuple[Export, dict]:
    imported = import_export("maven_crm", folder, skip_bad_rows=True)
    return imported.export, {"synthetic": list(imported.synthetic),
                             "skipped": sum(imported.report.counts_by_reason().values())}


def deal_win(export: Export, origins: list[pd.Timestamp], cfg: DealTrainConfig,
             progress: bool = True) -> pd.DataFrame:
    """Per origin and deal open then: funnelcast, stage win rate and logistic-regression P(win), outcomes."""
    spec = DealFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, exclude=cfg.exclude, as_of=origins[0])
    start = export.opportunities["created_at"].min() + pd.Timedelta(days=cfg.warmup_days)
    times = sorted(set(snapshot_times(start, origins[-1], cfg.snapshot_every_days)) | set(origins))
    snaps = deal_snapshots(export, times, spec, progress=progress)
    cols = spec.feature_names
    h = pd.Timedelta(days=cfg.horizon_days)
    rows = []
    for origin in tqdm(origins, desc="deal-win origins", disable=not progress, unit="origin"):
        scorer = fit_deal_scorer(export, snaps, spec, origin, cfg, surrogate=False)
        choice = scorer.metadata.get("timing_choice") or {}
        if progress:
            tqdm.write(f"{origin.date()}: timing candidate {choice.get('chosen', cfg.timing_layout)} (validation "
                       f"{choice.get('window', 'n/a')}{'; ' + choice['note'] if choice.get('note') else ''}): "
                       + ", ".join(f"{k} {v.get('validation_log_loss', float('nan')):.4f}"
                                   for k, v in choice.get("candidates", {}).items())
                       + (f"; calendar {'kept' if (choice.get('calendar') or {})['chosen'] else 'left out'}"
                          if (choice.get("calendar") or {}).get("chosen") is not None else "")
                       + (f"; base-rate shift {scorer.metadata['base_rate_shift']:+.3f} "
                          f"({scorer.metadata['base_rate_note']})" if "base_rate_shift" in scorer.metadata else ""))
        now = snaps[snaps["as_of"] == origin]
        pred = scorer.predict(now[cols])
        # the logistic regression learns P(won) from earlier snapshots whose outcome was known at the origin
        past = censored(snaps, origin)
        past = past[past["won"].notna()]
        p_lr = logistic_regression(past[cols], past["won"].to_numpy(dtype=int), now[cols], spec.categorical_features)
        rows.append(pd.DataFrame({
            "origin": origin, "opportunity_id": now["opportunity_id"].to_numpy(),
            "funnelcast": pred["p_win"].to_numpy(), "funnelcast_h": pred["p_win_within_horizon"].to_numpy(),
            "stage_win_rate": now["stage"].map(scorer.context.stage_win_rate).fillna(
                scorer.context.global_win_rate).to_numpy(float),
            "logistic_regression": p_lr,
            "won": now["won"].to_numpy(),  # eventual outcome as the export knows it (NaN: still open)
            "won_within_horizon": ((now["closed_at"] < origin + h) & (now["won"] == 1)).to_numpy().astype(int),
        }))
    return pd.concat(rows, ignore_index=True)


def deal_win_table(cmp: pd.DataFrame) -> pd.DataFrame:
    table = []
    decided = cmp[cmp["won"].notna()]
    for target, frame, y, models in (
        ("won eventually (decided deals)", decided, "won",
         (("funnelcast", "funnelcast"), ("stage win rate (CRM)", "stage_win_rate"),
          ("logistic regression", "logistic_regression"))),
        ("won within 30 d (all open deals)", cmp, "won_within_horizon",
         (("funnelcast", "funnelcast_h"),)),
    ):
        for name, col in models:
            m = classification_metrics(frame[y].to_numpy(dtype=int), frame[col].to_numpy())
            table.append({"target": target, "model": name, "roc_auc": m["roc_auc"], "brier": m["brier"],
                          "calibration_error": m["calibration_error"], "positive_rate": m["positive_rate"],
                          "n": m["n"]})
    return pd.DataFrame(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of the public datasets")
    ap.add_argument("--origins", nargs="*", default=list(ORIGINS), help="deal-win origins (dates)")
    ap.add_argument("--span-days", type=int, default=150, help="backtest: how far back the origins go")
    ap.add_argument("--by", nargs="*", default=["none", "team", "owner_id"], help="backtest groupings")
    ap.add_argument("--sims", type=int, default=1000, help="backtest simulations per origin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-backtest", action="store_true", help="only the deal-win comparison")
    ap.add_argument("--skip-deal-win", action="store_true", help="only the forecast backtest")
    ap.add_argument("--timing-layout", choices=("competing_risks", "close_share"), default=None,
                    help="the deal timing model (as `funnelcast train --task stage_conversion --timing-layout`; default: chosen per fit)")
    ap.add_argument("--without-calendar", action="store_true",
                    help="leave out the sales-calendar features (days to the end of the month and quarter)")
    ap.add_argument("--config", default="{}", help="more DealTrainConfig fields as JSON, e.g. "
                    '\'{"timing_calibration": "platt"}\'')
    args = ap.parse_args()
    folder = Path(args.data) / "maven_crm"
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: the public datasets are read from there, never copied into the repo")
    t0 = time.perf_counter()
    export, info = load_maven(folder)
    cfg = deal_config(args.seed, args.timing_layout, not args.without_calendar, **json.loads(args.config))
    origins = [pd.Timestamp(o, tz="UTC") for o in args.origins]
    with pd.option_context("display.width", 200):
        cmp = None if args.skip_deal_win else deal_win(export, origins, cfg)
        if cmp is not None:
            print(f"\nMaven CRM deal win: {len(cmp)} open-deal snapshots at {len(origins)} monthly origins "
                  f"({', '.join(args.origins)}); {info['skipped']} source rows skipped; synthetic: {info['synthetic']}; "
                  f"{time.perf_counter() - t0:.0f} s")
            print(deal_win_table(cmp).round(4).to_string(index=False))
            per = cmp.groupby("origin").apply(lambda g: pd.Series({
                "won_within_30d_auc": roc_auc_score(g["won_within_horizon"], g["funnelcast_h"]),
                "mean_p": g["funnelcast_h"].mean(), "won_within_30d": g["won_within_horizon"].mean()}),
                include_groups=False)
            print("\nper origin (won within 30 d):\n" + per.round(3).to_string())
        if args.skip_backtest:
            return
        for by in args.by:
            t1 = time.perf_counter()
            res = run_backtest(export, BacktestConfig(every="30d", span=args.span_days, n_sims=args.sims,
                                                      by=by, deal=cfg))
            o = res.per_origin["origin"]
            print(f"\nMaven CRM forecast backtest by {by}: {o.nunique()} origins {o.min().date()}..{o.max().date()}, "
                  f"30-day horizon; {time.perf_counter() - t1:.0f} s")
            cols = [c for c in ("method", "wape", "wape_pooled", "bias", "within_10pct", "coverage_p10_p90",
                                "deal_auc", "deal_brier") if c in res.overall]
            print(res.overall[cols].round(4).to_string(index=False))
            if by == "none":
                tot = res.groups[["origin", "actual", "funnelcast", "p10", "p90", "weighted_pipeline",
                                  "reps_close_dates"]].assign(origin=lambda f: f["origin"].dt.date)
                print(tot.round(0).to_string(index=False))


if __name__ == "__main__":
    main()
