"""Allocation against round-robin and "each rep takes their own leads by score", at equal capacity.

    python benchmarks/allocation.py --sample .funnelcast/sample [--days-before 91]

At ``as_of`` = export time minus ``--days-before`` days: train the lead model on history before
``as_of`` only, score every lead open then, and allocate them to the export's reps (weekly
capacity from ``reps.capacity``). Reports the expected value captured (the objective, with
each rep's point-in-time conversion factor) and the realised outcome of the selected leads:
how many converted within the horizon and the amount won from them. The realised figures
measure *which* leads get worked (history cannot say what another rep would have done).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from features.io import load_export
from features.pit import open_leads
from models.allocation import allocate, lead_items, own_by_score, reps_from_export, round_robin
from training.train import TrainConfig, build_lead_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/sample")
    ap.add_argument("--days-before", type=int, default=91)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    export, _ = load_export(Path(args.sample) / "export")
    as_of = export.exported_at - pd.Timedelta(days=args.days_before)
    cfg = TrainConfig(seed=args.seed)
    scorer = build_lead_model(export, cfg, as_of, progress=True).scorer
    leads = open_leads(export.leads, as_of)
    scored = scorer.score(leads, export.accounts, export.activities, as_of, n_reasons=1)
    reps = reps_from_export(export.reps, scorer.context.owner_rate, scorer.context.global_rate)
    items = lead_items(scored, leads)
    end = as_of + pd.Timedelta(days=cfg.horizon_days)
    conv = leads.set_index("lead_id")["converted_at"]
    converted = (conv >= as_of) & (conv < end)
    opps = export.opportunities
    won = opps[(opps["outcome"] == "won") & opps["lead_id"].notna()].groupby("lead_id")["amount"].sum()
    rows = []
    for name, fn in (("exact (funnelcast)", lambda: allocate(reps, items)),
                     ("round robin", lambda: round_robin(reps, items, seed=args.seed)),
                     ("own leads by score", lambda: own_by_score(reps, items))):
        t0 = time.perf_counter()
        a = fn()
        secs = time.perf_counter() - t0
        ids = a.assignments["item_id"]
        rows.append({"method": name, "assigned": len(ids), "expected value": round(a.total_value),
                     "converted in 91 d": int(converted.reindex(ids).sum()),
                     "won amount from them": round(float(won.reindex(ids).fillna(0).sum())), "seconds": round(secs, 2)})
    print(f"{len(items):,} open leads at {as_of.date()}, {len(reps)} reps, capacity {int(reps['capacity'].sum()):,}")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
