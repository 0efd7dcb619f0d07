"""high_value as `funnelcast train` makes it, on several generated samples: the candidate validation
chose and every candidate on the evaluation customers, against the first deal's amount alone.

    python benchmarks/high_value.py --seeds 1 2 3 4 --samples DIR [--scale X]

For each sample (generated with the seed and scale if absent): the ladder fitted and chosen on the
customers before the evaluation window, every candidate shown on the evaluation customers (the table
`funnelcast train` prints), and whether the chosen model passes the baseline floor. A last table
sums the samples up: the chosen candidate, its ROC AUC and log loss, the first-deal baseline's, the
best candidate's in hindsight (which nothing may choose by), and the floor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from features.io import load_export
from features.sample import generate_sample
from training.accounts import FIRST_DEAL, AccountConfig, build_high_value_model
from training.pipeline import result_floor


def run(sample: Path, seed: int, scale: float) -> dict[str, object]:
    """high_value trained on one sample (generated if absent); its summary row, after printing its table."""
    if not (sample / "export" / "leads.csv").exists():
        generate_sample(sample, seed=seed, scale=scale, progress=True)
    export, _ = load_export(sample / "export")
    result = build_high_value_model(export, AccountConfig(), export.exported_at)  # the settings `train` uses
    table = result.candidates
    chosen = str(table.index[table["chosen"]][0])
    print(f"\nseed {seed}, scale {scale:g}: {len(result.snapshots)} customers; validation {result.windows['validate']}, "
          f"evaluation {result.windows['evaluate']}")
    print(table.drop(columns=["pr_auc", "top_decile_capture"], errors="ignore").round(4).to_string())
    hindsight = table["log_loss"].idxmin()
    floor = result_floor(result)
    return {"seed": seed, "customers": len(result.snapshots), "chosen": chosen,
            "auc": table.loc[chosen, "roc_auc"], "log_loss": table.loc[chosen, "log_loss"],
            "first_deal_auc": table.loc[FIRST_DEAL, "roc_auc"], "first_deal_log_loss": table.loc[FIRST_DEAL, "log_loss"],
            "best_in_hindsight": hindsight, "its_log_loss": table.loc[hindsight, "log_loss"],
            "floor": "passed" if floor.passed else "refused"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4], help="generator seeds, one sample each")
    ap.add_argument("--samples", default=".funnelcast/bench-samples", help="folder of the samples (seed-N)")
    ap.add_argument("--scale", type=float, default=1.0, help="generator scale (0.3: a small, young CRM)")
    args = ap.parse_args()
    suffix = "" if args.scale == 1.0 else f"-scale{args.scale:g}"
    rows = [run(Path(args.samples) / f"seed-{seed}{suffix}", seed, args.scale) for seed in tqdm(args.seeds, desc="samples")]
    table = pd.DataFrame(rows).set_index("seed")
    print(f"\nhigh_value on seeds {', '.join(map(str, args.seeds))} at scale {args.scale:g} (evaluation customers):")
    print(table.round(4).to_string())
    print(f"mean log loss: chosen {table['log_loss'].mean():.4f}, first deal alone {table['first_deal_log_loss'].mean():.4f}; "
          f"floor passed on {int((table['floor'] == 'passed').sum())} of {len(table)}")


if __name__ == "__main__":
    main()
