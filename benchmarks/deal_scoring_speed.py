"""In-process cost of the deal models' predictions, per timing layout.

Fits ``stage_conversion`` at the sample's export time once per layout (competing risks, the
default; close share, the layout before 29 Nov) and times, for 1 and 100 open deals: the
features and everything else of ``DealScorer.score`` (reasons included), and ``predict``
alone (P(won), P(won within the horizon), P(next stage), expected days to a win). Medians of
``--repeats`` runs. The API adds parsing and validation on top (see load_test.py for leads).

    python benchmarks/deal_scoring_speed.py --sample .funnelcast/sample
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from features.deals import open_opportunities
from features.io import load_export
from training.deals import TIMING_LAYOUTS, DealTrainConfig, build_snapshots, fit_deal_scorer


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default=".funnelcast/sample", help="a generated sample (export/)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    export, _ = load_export(Path(args.sample) / "export")
    cut = export.exported_at
    cfg = DealTrainConfig()
    spec, snaps = build_snapshots(export, cut, cfg)
    opps = open_opportunities(export.opportunities, export.stage_history, cut)
    tables = (export.stage_history, export.activities, export.leads, export.accounts)
    rows = []
    for layout in TIMING_LAYOUTS:
        scorer = fit_deal_scorer(export, snaps, spec, cut, replace(cfg, timing_layout=layout))
        for n in (1, 100):
            o = opps.head(n)
            X, _ = scorer.features(o, *tables, cut)
            rows.append({"layout": layout, "deals": n,
                         "score_ms (features, predictions, reasons)": _median_ms(lambda: scorer.score(o, *tables, cut),
                                                                                 args.repeats),
                         "predict_ms": _median_ms(lambda: scorer.predict(X), args.repeats)})
    print(pd.DataFrame(rows).round(1).to_string(index=False))


if __name__ == "__main__":
    main()
