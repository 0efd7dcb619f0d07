"""Tuned vs default LightGBM parameters for lead_quality, measured on a window tuning never saw.

Tuning runs on the history before ``cutoff = export time - eval_days`` (time-ordered CV),
then both parameter sets train the usual way at the export time and are evaluated on its
latest 91 days of labelled snapshots, which begin after every label tuning could read.

    python benchmarks/tuning.py --sample .funnelcast/sample --trials 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from features.io import load_export
from training.train import TrainConfig, build_lead_model
from training.tune import tune


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/sample", help="a generated sample folder (with export/)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    export, _ = load_export(Path(args.sample) / "export")
    cfg = TrainConfig(seed=args.seed)
    tune_cutoff = export.exported_at - pd.Timedelta(days=cfg.eval_days)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = tune(export, cfg, tune_cutoff, n_trials=args.trials, timeout=args.timeout,
                      storage=f"sqlite:///{tmp}/optuna.db", n_folds=args.folds)
        seconds = time.perf_counter() - t0
    rows = {}
    for name, params in (("default", {}), ("tuned", result.best_params)):
        run_cfg = TrainConfig(seed=args.seed, params=params)
        r = build_lead_model(export, run_cfg, export.exported_at)
        rows[name] = {**{k: r.metrics[k] for k in ("roc_auc", "brier", "log_loss", "calibration_error")},
                      "rows": int(r.metrics["n"])}
    print(f"tuning: {result.trials} trials ({result.complete} complete, {result.pruned} pruned) in {seconds:.0f} s; "
          f"CV log loss default {result.default_value:.5f} -> best {result.best_value:.5f}")
    print(f"best params: {result.best_params}")
    print(pd.DataFrame(rows).T.round(4).to_string())


if __name__ == "__main__":
    main()
