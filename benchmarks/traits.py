"""Do the traits the sample generator planted come out on top? Prints a table per sample.

    python benchmarks/traits.py --sample .funnelcast/sample [--seeds 1 2]

For each sample: mine traits with ``funnelcast traits``' code on the customers whose value is
complete at the export time, then, for each planted trait in ``truth/traits.json``, the rank
of the first mined trait matching it exactly (same columns, same values, numeric cut-offs
within 2x) and of the first containing it (its conditions and more).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from features.customers import AccountFeatureSpec, account_snapshots
from features.io import load_export
from features.sample import generate_sample
from models.traits import planted_match
from training.accounts import AccountConfig, mine_traits


def run(sample: Path, seed: int) -> list[dict]:
    export, _ = load_export(sample / "export")
    planted = json.loads((sample / "truth" / "traits.json").read_text())["traits"]
    cfg = AccountConfig(seed=seed)
    spec = AccountFeatureSpec.from_export(export)
    t0 = time.perf_counter()
    snaps, _ = account_snapshots(export, export.exported_at, spec)
    miner = mine_traits(snaps, spec, cfg)
    secs = time.perf_counter() - t0
    rows = []
    for p in planted:
        exact = next((t for t in miner.traits_ if planted_match(t, p["conditions"]) == "exact"), None)
        contains = next((t for t in miner.traits_ if planted_match(t, p["conditions"])), None)
        rows.append({"sample": sample.name, "customers": len(snaps), "planted": p["name"],
                     "exact_rank": exact.rank if exact else None, "exact_trait": exact.name if exact else "",
                     "exact_heldout_lift": round(exact.heldout_lift, 2) if exact else None,
                     "exact_stability": exact.stability if exact else None,
                     "first_rank_containing": contains.rank if contains else None,
                     "containing_trait": contains.name if contains else "", "seconds": round(secs, 1)})
    print(f"\n{sample}: top traits")
    print(miner.table()[["rank", "trait", "accounts", "lift", "heldout_lift", "stability"]].round(2).to_string(index=False))
    return rows


def main() -> None:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/sample", help="a generated sample (with truth/)")
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="also generate samples with these seeds (scale 1)")
    args = ap.parse_args()
    rows = run(Path(args.sample), 0)
    with tempfile.TemporaryDirectory() as tmp:
        for s in tqdm(args.seeds, desc="samples"):
            out = Path(tmp) / f"seed{s}"
            generate_sample(out, seed=s, scale=1.0)
            rows += run(out, s)
    print()
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
