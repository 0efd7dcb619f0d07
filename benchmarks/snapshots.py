"""Cost of the snapshot step and of the pandas training path as the data grows.

For each ``--scale`` (a sample generated with that scale and ``--seed``, reused when its folder
exists), times in one run, each step in a fresh child process (its peak resident memory is
the child's own ``resource.getrusage`` maximum):

* the lead and the deal snapshots, the per-``as_of`` loop (``naive``: the per-snapshot
  feature functions over the full tables) and the one-pass build (``one-pass``, what training
  uses) side by side, on the snapshot times the tasks use;
* ``funnelcast train``'s pandas path without MLflow (``training.pipeline.train``) of
  ``lead_quality`` and of ``stage_conversion`` (the deal models), snapshots included.

Then prints one table per step and scale, and the ratios the issue asks for: one-pass against
naive at each scale, and each step's time at the largest scale over the smallest.

    python benchmarks/snapshots.py --scales 1 4 --work .funnelcast/scale
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

STEPS = ("lead snapshots naive", "lead snapshots one-pass", "deal snapshots naive", "deal snapshots one-pass",
         "train lead_quality", "train stage_conversion")
#: The lead task's horizon on the generated sample (what `funnelcast train` chooses from its data).
LEAD_HORIZON_DAYS = 70
SNAPSHOT_EVERY_DAYS = 14  # the settings' default


def _lead_snapshot_step(export, naive: bool) -> int:
    from features.leads import LeadFeatureSpec, _lead_snapshots_naive, lead_snapshots, snapshot_times

    cut = export.exported_at
    h = pd.Timedelta(days=LEAD_HORIZON_DAYS)
    start = export.leads["created_at"].min() + pd.Timedelta(days=30)  # the lead task's warm-up
    times = snapshot_times(start, cut - h, SNAPSHOT_EVERY_DAYS)
    spec = LeadFeatureSpec.from_export(export, horizon_days=LEAD_HORIZON_DAYS, as_of=cut)
    return len((_lead_snapshots_naive if naive else lead_snapshots)(export, times, spec))


def _deal_snapshot_step(export, naive: bool) -> int:
    from features.deals import DealFeatureSpec, _deal_snapshots_naive, deal_snapshots, snapshot_times
    from training.deals import DealTrainConfig

    cfg, cut = DealTrainConfig(snapshot_every_days=SNAPSHOT_EVERY_DAYS), export.exported_at
    start = export.opportunities["created_at"].min() + pd.Timedelta(days=cfg.warmup_days)
    times = snapshot_times(start, cut, cfg.snapshot_every_days)  # as training.deals.build_snapshots
    spec = DealFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, as_of=cut)
    return len((_deal_snapshots_naive if naive else deal_snapshots)(export, times, spec))


def _train_step(export, task: str) -> int:
    from models.tasks import Task
    from training.pipeline import train
    from training.tasks import task_definition

    cfg = task_definition(Task(task)).config(horizon_days=None, snapshot_every_days=SNAPSHOT_EVERY_DAYS, seed=0)
    return len(train(Task(task), export, export.exported_at, cfg).snapshots)


def _child(step: str, sample: Path) -> None:
    """Run one step in this process and print its figures as JSON (the parent reads the last line)."""
    from features.io import load_export

    export, _ = load_export(sample / "export")
    t0 = time.perf_counter()
    if step.startswith("lead snapshots"):
        rows = _lead_snapshot_step(export, naive=step.endswith("naive"))
    elif step.startswith("deal snapshots"):
        rows = _deal_snapshot_step(export, naive=step.endswith("naive"))
    else:
        rows = _train_step(export, step.removeprefix("train "))
    seconds = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux
    print(json.dumps({"seconds": seconds, "peak_gb": peak_gb, "rows": rows}))


def _sample(work: Path, scale: float, seed: int) -> Path:
    from features.sample import generate_sample

    folder = work / f"scale_{scale:g}_seed_{seed}"
    if not (folder / "export").is_dir():
        generate_sample(folder, seed=seed, scale=scale)
    return folder


def _run(step: str, sample: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", step, "--sample", str(sample)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{step} on {sample} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=".funnelcast/scale", help="where the generated samples are kept")
    ap.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    ap.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--sample", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, Path(args.sample))
        return
    rows = []
    for scale in args.scales:
        sample = _sample(Path(args.work), scale, args.seed)
        sizes = {t: sum(1 for _ in open(sample / "export" / f"{t}.csv")) - 1 for t in ("leads", "activities")}
        for step in args.steps:
            r = _run(step, sample)
            rows.append({"scale": scale, "leads": sizes["leads"], "activities": sizes["activities"], "step": step, **r})
            print(f"scale {scale:g}: {step}: {r['seconds']:.1f} s, peak {r['peak_gb']:.2f} GB", file=sys.stderr)
    table = pd.DataFrame(rows)
    print(table.round(2).to_string(index=False))
    _ratios(table)


def _ratios(table: pd.DataFrame) -> None:
    secs = table.pivot_table(index="step", columns="scale", values="seconds")
    for kind in ("lead", "deal"):
        naive, fast = f"{kind} snapshots naive", f"{kind} snapshots one-pass"
        if naive in secs.index and fast in secs.index:
            for scale in secs.columns:
                print(f"{kind} snapshots at scale {scale:g}: one-pass {secs.loc[naive, scale] / secs.loc[fast, scale]:.1f}x "
                      "faster than naive")
    lo, hi = secs.columns.min(), secs.columns.max()
    if hi > lo:
        for step in secs.index:
            print(f"{step}: scale {hi:g} takes {secs.loc[step, hi] / secs.loc[step, lo]:.2f}x the time of scale {lo:g}")


if __name__ == "__main__":
    main()
