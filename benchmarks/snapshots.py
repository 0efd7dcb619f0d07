"""Cost of the snapshot step and of the pandas training path as the data grows.

For each ``--scale`` (a sample generated with that scale and ``--seed``, reused when its folder
exists), times in one run, each step in a fresh child process (its peak resident memory is
the child's own ``resource.getrusage`` maximum):

* the lead, the deal and the account (high_value) snapshots, the per-``as_of`` loop (``naive``: the per-snapshot
  feature functions over the full tables) and the one-pass build (``one-pass``, what training
  uses) side by side, on the snapshot times the tasks use;
* ``funnelcast train``'s pandas path without MLflow (``training.pipeline.train``) of
  ``lead_quality`` and of ``stage_conversion`` (the deal models), snapshots included, with the
  evaluation window's AUC of the task's floor metric (``eval_auc``: what a speed-up must not lose).

Then prints one row per step and scale (wall and CPU seconds, peak memory, rows built) and
the ratios, in CPU time (steady on a shared machine, where wall time is not): one-pass
against naive at each scale, and each step at the largest scale over the smallest. The
scales of a step run one after the other, so they see the same machine load.

    python benchmarks/snapshots.py --scales 1 4 --work .funnelcast/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

STEPS = ("lead snapshots naive", "lead snapshots one-pass", "deal snapshots naive", "deal snapshots one-pass",
         "account snapshots naive", "account snapshots one-pass", "train lead_quality", "train stage_conversion")
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


def _account_snapshot_step(export, naive: bool) -> int:
    from features.customers import AccountFeatureSpec, _account_snapshots_naive, account_snapshots

    spec = AccountFeatureSpec.from_export(export)
    return len((_account_snapshots_naive if naive else account_snapshots)(export, export.exported_at, spec)[0])


def _train_step(export, task: str) -> tuple[int, float]:
    """Rows of the training snapshots, and the evaluation window's AUC of the task's floor metric (what
    a speed-up must not lose)."""
    from models.tasks import Task
    from training.pipeline import train
    from training.tasks import task_definition

    definition = task_definition(Task(task))
    cfg = definition.config(horizon_days=None, snapshot_every_days=SNAPSHOT_EVERY_DAYS, seed=0)
    result = train(Task(task), export, export.exported_at, cfg)
    return len(result.snapshots), float(result.metrics[getattr(definition, "floor_metric", "roc_auc")])


def _child(step: str, sample: Path) -> None:
    """Run one step in this process and print its figures as JSON (the parent reads the last line)."""
    from features.io import load_export

    export, _ = load_export(sample / "export")
    start = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t0 = start.ru_utime + start.ru_stime, time.perf_counter()
    if step.startswith("lead snapshots"):
        rows = _lead_snapshot_step(export, naive=step.endswith("naive"))
    elif step.startswith("deal snapshots"):
        rows = _deal_snapshot_step(export, naive=step.endswith("naive"))
    elif step.startswith("account snapshots"):
        rows = _account_snapshot_step(export, naive=step.endswith("naive"))
    else:
        rows, auc = _train_step(export, step.removeprefix("train "))
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    peak_gb = usage.ru_maxrss / 1024**2  # kB on Linux
    figures = {"seconds": seconds, "cpu_seconds": cpu, "peak_gb": peak_gb, "rows": rows}
    if step.startswith("train"):
        figures["eval_auc"] = auc
    print(json.dumps(figures))


def _sample(work: Path, scale: float, seed: int) -> Path:
    from features.sample import generate_sample

    folder = work / f"scale_{scale:g}_seed_{seed}"
    if not (folder / "export").is_dir():
        generate_sample(folder, seed=seed, scale=scale)
    return folder


def _run(step: str, sample: Path) -> dict:
    # LightGBM's OpenMP threads sleep instead of spinning while they wait: on a shared machine a
    # spinning thread burns the CPU the others need (the figures are ratios, not records)
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    out = subprocess.run([sys.executable, __file__, "--child", step, "--sample", str(sample)],
                         capture_output=True, text=True, check=False, env=env)
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
    samples = {scale: _sample(Path(args.work), scale, args.seed) for scale in args.scales}
    rows = []
    for step in args.steps:  # the scales of a step one after the other: under the same machine load
        for scale, sample in samples.items():
            r = _run(step, sample)
            rows.append({"step": step, "scale": scale, **r})
            print(f"scale {scale:g}: {step}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU), "
                  f"peak {r['peak_gb']:.2f} GB", file=sys.stderr)
    table = pd.DataFrame(rows)
    print(table.round(2).assign(**({"eval_auc": table["eval_auc"].round(4)} if "eval_auc" in table else {}))
          .to_string(index=False))
    _ratios(table)


def _ratios(table: pd.DataFrame) -> None:
    secs = table.pivot_table(index="step", columns="scale", values="cpu_seconds")
    for kind in ("lead", "deal", "account"):
        naive, fast = f"{kind} snapshots naive", f"{kind} snapshots one-pass"
        if naive in secs.index and fast in secs.index:
            for scale in secs.columns:
                print(f"{kind} snapshots at scale {scale:g}: one-pass {secs.loc[naive, scale] / secs.loc[fast, scale]:.1f}x "
                      "less CPU time than naive")
    lo, hi = secs.columns.min(), secs.columns.max()
    if hi > lo:
        for step in secs.index:
            print(f"{step}: scale {hi:g} takes {secs.loc[step, hi] / secs.loc[step, lo]:.2f}x the CPU time of scale {lo:g}")


if __name__ == "__main__":
    main()
