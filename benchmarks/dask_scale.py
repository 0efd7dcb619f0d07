"""The lead model trained on pandas and on Dask: time, evaluation AUC and peak memory of each process.

Each path runs in its own child process (the same code as ``funnelcast train --task lead_quality``
without MLflow: load the export, snapshots, the candidate ladder, the final scorer), sampled every
0.2 s with psutil: the pandas process's peak resident memory; for Dask, the command's process (the
client, which reads the export and runs the ladder on the collected snapshots) and each worker
process of the local cluster (the entity partitions, their features and LightGBM's data-parallel
fits) separately. The target: each worker's peak below half of the pandas process's peak. The
command's process also reports its peak once the export is read (``after reading``): how much of
its final peak the export accounts for.

    python benchmarks/dask_scale.py [--scale 10] [--workers 2] [--sample DIR] [--paths pandas dask]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import psutil


def _child(args: argparse.Namespace) -> None:
    """Train the lead model on one engine and print its figures as JSON (the measured process)."""
    import pandas as pd

    from features.engine import Engine, engine_session
    from features.io import load_export
    from training.train import TrainConfig, build_lead_model

    started = time.perf_counter()
    export, _ = load_export(Path(args.sample) / "export")
    loaded = time.perf_counter()
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux: the peak of reading the export
    engine = Engine(args.engine, workers=args.workers, threads=args.threads, memory_limit="auto")
    cfg = TrainConfig(horizon_days=args.horizon, snapshot_every_days=args.snapshot_every, seed=args.seed)
    with engine_session(engine):
        result = build_lead_model(export, cfg, export.exported_at)
    done = time.perf_counter()
    lgbm = result.candidates.loc["lgbm", "roc_auc"] if result.candidates is not None else float("nan")
    print(json.dumps({"engine": args.engine, "load_s": loaded - started, "train_s": done - loaded, "load_peak_gb": load_peak,
                      "rows": len(result.snapshots), "leads": len(export.leads), "activities": len(export.activities),
                      "chosen": str(result.chosen.get("candidate")), "eval_roc_auc": result.metrics["roc_auc"],
                      "lgbm_roc_auc": float(lgbm), "as_of": str(pd.Timestamp(export.exported_at))}))


def _measure(cmd: list[str]) -> tuple[dict, dict[str, float]]:
    """Run ``cmd``, sampling the resident memory of it and of each of its descendants; its JSON and the peaks
    (GB): ``main`` and, per descendant process that lived (the workers), ``worker N``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    main = psutil.Process(proc.pid)
    peaks: dict[int, float] = {}
    while proc.poll() is None:
        try:
            for p in [main, *main.children(recursive=True)]:
                try:
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), p.memory_info().rss / 1e9)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    figures = json.loads(out.strip().splitlines()[-1])
    named = {"main": peaks.pop(proc.pid, 0.0)}
    # the workers: the largest descendants (the nanny's spawned processes; tiny helpers such as the
    # multiprocessing resource tracker are left out)
    workers = sorted((v for v in peaks.values() if v > 0.1), reverse=True)
    named.update({f"worker {i + 1}": v for i, v in enumerate(workers)})
    return figures, named


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=10.0, help="sample size multiplier (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", help="sample folder (default .funnelcast/bench-dask-<scale>; generated if absent)")
    ap.add_argument("--workers", type=int, default=2, help="workers of the local Dask cluster (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    ap.add_argument("--horizon", type=int, default=91)
    ap.add_argument("--snapshot-every", type=int, default=14)
    ap.add_argument("--paths", nargs="+", choices=("pandas", "dask"), default=["pandas", "dask"],
                    help="which paths to run (default both, pandas first)")
    ap.add_argument("--child", choices=("pandas", "dask"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sample = args.sample or f".funnelcast/bench-dask-{args.scale:g}"
    if args.child:
        args.engine = args.child
        _child(args)
        return
    from features.sample import generate_sample

    if not (Path(args.sample) / "export" / "leads.csv").exists():
        generate_sample(args.sample, seed=args.seed, scale=args.scale, progress=True)
    base = [sys.executable, __file__, "--scale", str(args.scale), "--seed", str(args.seed), "--sample", args.sample,
            "--workers", str(args.workers), "--threads", str(args.threads), "--horizon", str(args.horizon),
            "--snapshot-every", str(args.snapshot_every)]
    rows = {engine: _measure([*base, "--child", engine]) for engine in args.paths}
    first = next(iter(rows.values()))[0]
    print(f"\nscale {args.scale:g}: {first['leads']:,} leads, {first['activities']:,} activities, "
          f"{first['rows']:,} snapshot rows; Dask: a local cluster of {args.workers} worker processes x "
          f"{args.threads} thread(s)\n")
    print("| path | train (s) | evaluation AUC | lgbm candidate AUC | peak memory (GB) | command's peak after reading (GB) |")
    print("|---|---|---|---|---|---|")
    for engine, (f, p) in rows.items():
        workers = ", ".join(f"{v:.2f}" for k, v in p.items() if k.startswith("worker"))
        peak = f"{p['main']:.2f}" if engine == "pandas" else f"client {p['main']:.2f}; workers {workers}"
        print(f"| {engine} | {f['train_s']:.0f} | {f['eval_roc_auc']:.4f} ({f['chosen']}) | {f['lgbm_roc_auc']:.4f} | "
              f"{peak} | {f['load_peak_gb']:.2f} |")
    if len(rows) == 2:
        (pf, pp), (df, dp) = rows["pandas"], rows["dask"]
        worst = max((v for k, v in dp.items() if k.startswith("worker")), default=float("nan"))
        print(f"\nlargest worker peak / pandas peak: {worst / pp['main']:.2f} (target: below 0.5); "
              f"evaluation AUC difference {abs(df['eval_roc_auc'] - pf['eval_roc_auc']):.4f}")


if __name__ == "__main__":
    main()
