"""Tuned vs default LightGBM parameters for each task, measured on a window tuning never saw.

For every task, tuning runs on the history before a cutoff chosen so that **no label tuning
reads falls after the start of the evaluation window** the task's own training then reports:

* ``lead_quality``, ``stage_conversion``: both parameter sets train the usual way at the export
  time (``build_lead_model`` / ``build_deal_model``) and are evaluated on its latest ``eval_days``
  of labelled snapshots (leads: converts within the horizon; deals: won within the horizon, the
  metric promotion and the forecast use; next stage alongside); tuning's cutoff is the start
  of that window;
* ``high_value``: ``build_high_value_model`` evaluates on its latest quarter of customers
  (by snapshot time q); tuning uses the customers complete at ``q - early_days - 8 d + window``,
  whose snapshots are all before q.

    python benchmarks/tuning.py --task stage_conversion --sample .funnelcast/sample --trials 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from features.io import load_export
from models.tasks import Task
from training.tune import TuneResult, tune

SHOWN = ("roc_auc", "brier", "log_loss", "calibration_error")
_SECONDS: dict[str, float] = {}  # tuning time per task


def _lead(export, args) -> tuple[TuneResult, dict[str, dict[str, float]], str]:
    from training.train import TrainConfig, build_lead_model

    default = build_lead_model(export, TrainConfig(seed=args.seed), export.exported_at)
    cutoff = default.plan.evaluate[0]  # tuning reads no label after the evaluation window starts
    result = _tune(TrainConfig(seed=args.seed), export, cutoff, args)
    tuned = build_lead_model(export, TrainConfig(seed=args.seed, params=result.best_params), export.exported_at)
    rows = {name: {**{k: r.metrics[k] for k in SHOWN}, "rows": int(r.metrics["n"])}
            for name, r in (("default", default), ("tuned", tuned))}
    return result, rows, f"tuning cutoff {cutoff.date()}; evaluation {default.plan.describe()['evaluate']}"


def _deals(export, args) -> tuple[TuneResult, dict[str, dict[str, float]], str]:
    from training.deals import DealTrainConfig, build_deal_model

    def cfg(params: dict) -> DealTrainConfig:
        return DealTrainConfig(seed=args.seed, snapshot_every_days=args.snapshot_every_days, params=params)

    default = build_deal_model(export, cfg({}), export.exported_at)
    cutoff = pd.Timestamp(default.windows["fit_until"], tz="UTC")  # the evaluation window's start
    result = _tune(cfg({}), export, cutoff, args)
    tuned = build_deal_model(export, cfg(result.best_params), export.exported_at, snaps=default.snapshots,
                             spec=default.scorer.spec)  # the same snapshot frame
    rows = {name: {**{k: r.metrics[f"win_h_{k}"] for k in SHOWN}, "next_roc_auc": r.metrics["next_roc_auc"],
                   "next_log_loss": r.metrics["next_log_loss"], "rows": int(r.metrics["win_h_n"])}
            for name, r in (("default", default), ("tuned", tuned))}
    return result, rows, f"tuning cutoff {cutoff.date()}; evaluation {default.windows['evaluate']} (won within 91 d)"


def _accounts(export, args) -> tuple[TuneResult, dict[str, dict[str, float]], str]:
    from features.customers import AccountFeatureSpec, account_snapshots
    from training.accounts import AccountConfig, build_high_value_model

    cfg = AccountConfig(seed=args.seed, n_bootstrap=5)
    default = build_high_value_model(export, cfg, export.exported_at)
    q = default.evaluation["as_of"].min()
    cutoff = q - pd.Timedelta(days=cfg.early_days + 8) + pd.Timedelta(days=cfg.window_days)
    spec = AccountFeatureSpec.from_export(export, early_days=cfg.early_days, window_days=cfg.window_days)
    seen, _ = account_snapshots(export, cutoff, spec, quantile=cfg.quantile)
    assert seen["as_of"].max() < q, "tuning customers must all come before the evaluation quarter"
    result = _tune(cfg, export, cutoff, args)
    tuned = build_high_value_model(export, AccountConfig(seed=args.seed, n_bootstrap=5, params=result.best_params),
                                   export.exported_at)
    rows = {name: {**{k: r.metrics[k] for k in SHOWN}, "rows": int(r.metrics["n"])}
            for name, r in (("default", default), ("tuned", tuned))}
    return result, rows, (f"tuning on {len(seen)} customers complete at {cutoff.date()} (snapshots before {q.date()}); "
                          f"evaluation: the latest {rows['default']['rows']} customers (from {q.date()})")


def _tune(cfg: Any, export, cutoff: pd.Timestamp, args) -> TuneResult:
    """The task's study on its own time fold (``None``: ``cfg.fold``, high_value's customer fold)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = tune(args.task, export, cutoff, None, args.trials, config=cfg, timeout=args.timeout,
                      storage=f"sqlite:///{tmp}/optuna.db", n_folds=args.folds)
        _SECONDS[result.task] = time.perf_counter() - t0
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=[t.value for t in Task], default=Task.LEAD_QUALITY.value)
    ap.add_argument("--sample", default=".funnelcast/sample", help="a generated sample folder (with export/)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snapshot-every-days", type=int, default=14, help="deal snapshots (default 14)")
    args = ap.parse_args()

    export, _ = load_export(Path(args.sample) / "export")
    run = {Task.LEAD_QUALITY.value: _lead, Task.STAGE_CONVERSION.value: _deals, Task.HIGH_VALUE.value: _accounts}
    result, rows, what = run[args.task](export, args)
    default = f"{result.default_value:.5f}" if result.default_value is not None else "n/a (pruned)"
    print(f"{args.task}: {what}")
    print(f"tuning: {result.trials} trials ({result.complete} complete, {result.pruned} pruned) in {_SECONDS[args.task]:.0f} s; "
          f"CV log loss default {default} -> best {result.best_value:.5f} (trial {result.best_trial}); "
          f"folds: " + "; ".join(f["evaluate"] for f in result.folds))
    print(f"best params: {result.best_params}")
    print(pd.DataFrame(rows).T.round(4).to_string())


if __name__ == "__main__":
    main()
