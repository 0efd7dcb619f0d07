"""Forecast by owner against the truth's expected bookings and the CRM weighted pipeline.

At the sample's truth origins whose horizon ended before the export (T - 273, T - 182,
T - 91 days): fit the deal models on the history before the origin, and compare, per owner,
three forecasts of the bookings from the pipeline open at the origin with what it booked
within the horizon: funnelcast (sum of P(won within the horizon) x amount), the truth's
expected bookings (the exact probabilities x the same amounts: the best possible from that
pipeline) and the CRM weighted pipeline. Deals created after the origin are left out on
every side (the truth has no probability for them; `funnelcast backtest` covers them).

    python benchmarks/forecast.py --sample .funnelcast/sample
    python benchmarks/forecast.py --seeds 1 2 3 4      # generated samples (default scale)

``--seeds`` generates each seed's sample into ``--samples`` if missing (as ``benchmarks/deals.py``).
``--detail`` decomposes each origin's gap: per owner, funnelcast's and the truth's mean P(won within
the horizon) beside the owner's actual rate, and how much of the WAPE is the model's distance from the
truth (``model_error``: sum over owners of |funnelcast - truth| / actual) against the noise the
truth cannot remove (``noise``: |truth - actual| / actual, the truth's own WAPE).

``--new-deals`` measures instead the other part of the forecast, deals not yet created (no truth
has a probability for them, and no deal model is needed): at 14 origins 4 weeks apart over the
last year, each rep's expected bookings from deals created and won within the horizon against
what they booked, for the forecast's run rate and for its plain form (a fixed half-life of two
windows, each rep's own amounts):

    python benchmarks/forecast.py --seeds 1 2 3 4 --new-deals
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from features.deals import deal_outcomes
from features.io import load_export
from models.forecast import UNASSIGNED, group_keys, new_deal_flow, weighted_pipeline
from training.backtest import accuracy
from training.deals import DealTrainConfig, build_snapshots, fit_deal_scorer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deals import seed_sample  # noqa: E402  (benchmarks/ is a folder of scripts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", default=".funnelcast/sample", help="a generated sample (export/ and truth/)")
    p.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="generator seeds to run on instead of --sample (each generated at the default scale)")
    p.add_argument("--samples", default=".funnelcast/samples", help="with --seeds: where the samples are kept")
    p.add_argument("--detail", action="store_true", help="per owner and origin: mean probabilities against the truth's")
    p.add_argument("--new-deals", action="store_true", help="measure the deals-not-yet-created part instead (fast)")
    args = p.parse_args()
    if args.new_deals:
        samples = [Path(args.sample)] if args.seeds is None else [seed_sample(Path(args.samples), s) for s in args.seeds]
        table = pd.concat({sample.name: new_deal_report(sample) for sample in samples}, names=["sample"])
        print("deals not yet created, by rep, 14 origins: WAPE and bias of the summed expected bookings\n"
              + table.round(4).to_string())
        return
    if args.seeds is None:
        report(Path(args.sample), args.detail)
        return
    ratios = {}
    for s in args.seeds:
        print(f"\n=== generator seed {s} ===")
        ratios[s] = report(seed_sample(Path(args.samples), s), args.detail)
    print("\nfunnelcast / truth WAPE by owner per seed: " + ", ".join(f"seed {s} {r:.3f}" for s, r in ratios.items()))


def _plain_flow(export, as_of: pd.Timestamp, h: int, by: str):
    """The run rate in its plain form: a fixed half-life of two windows, each rep's own amounts."""
    flow = new_deal_flow(export, as_of, h, by, half_life_windows=2.0)
    flow.amount_weight = {}
    return flow


def new_deal_report(sample: Path, horizon_days: int = 91, origins: int = 14) -> pd.DataFrame:
    """Per method: WAPE and bias over reps and origins of the bookings from deals created and won
    within the horizon after each origin, and the mean half-life chosen."""
    export, _ = load_export(sample / "export")
    outcomes = deal_outcomes(export)
    opps = export.opportunities.set_index("opportunity_id")
    h = pd.Timedelta(days=horizon_days)
    last = (export.exported_at - h).floor("D")
    sums: dict[str, list[float]] = {"funnelcast": [0.0, 0.0, 0.0, 0.0], "plain run rate": [0.0, 0.0, 0.0, 0.0]}
    for k in range(origins - 1, -1, -1):
        o = last - pd.Timedelta(days=28 * k)
        created = opps[(opps["created_at"] >= o) & (opps["created_at"] < o + h)]
        out = outcomes.reindex(created.index)
        won = ((out["won"] == 1) & (out["closed_at"] < o + h)).to_numpy()
        actual = out.loc[won, "won_amount"].fillna(0.0).groupby(group_keys(created[won], export, "owner_id").to_numpy()).sum()
        for name, flow in (("funnelcast", new_deal_flow(export, o, horizon_days, "owner_id")),
                           ("plain run rate", _plain_flow(export, o, horizon_days, "owner_id"))):
            exp = pd.Series({g: r * flow.expected_amount(g) for g, r in flow.rate.items()}, dtype=float)
            reps = sorted((set(exp.index) | set(actual.index)) - {UNASSIGNED})
            f, a = exp.reindex(reps).fillna(0.0).to_numpy(), actual.reindex(reps).fillna(0.0).to_numpy()
            acc = sums[name]
            acc[0] += float(np.abs(f - a).sum())
            acc[1] += float((f - a).sum())
            acc[2] += float(a.sum())
            acc[3] += flow.half_life_windows / origins
    return pd.DataFrame({m: {"wape": v[0] / v[2], "bias": v[1] / v[2], "mean_half_life_windows": v[3]}
                         for m, v in sums.items()}).T


def _detail(origin, scored: pd.DataFrame, p_truth: np.ndarray, won: np.ndarray, owner: np.ndarray,
            frame: pd.DataFrame) -> None:
    """Per owner: deals, mean P(won within the horizon) of funnelcast and of the truth, the actual rate,
    and the money forecasts; then the split of the WAPE into model error and noise."""
    per = pd.DataFrame({"owner": owner, "p_funnelcast": scored["p_win_within_horizon"].to_numpy(),
                        "p_truth": p_truth, "won_rate": won.astype(float)}).groupby("owner")
    table = per.mean().assign(deals=per.size()).join(frame[["funnelcast", "truth", "actual"]])
    table["funnelcast/truth"] = table["funnelcast"] / table["truth"]
    total = frame["actual"].sum()
    print(f"\n{origin}: per owner\n" + table.round(3).to_string())
    print(f"{origin}: model_error {np.abs(frame['funnelcast'] - frame['truth']).sum() / total:.4f}, "
          f"noise {np.abs(frame['truth'] - frame['actual']).sum() / total:.4f}")


def report(sample: Path, detail: bool = False) -> float:
    """The tables of one sample; returns funnelcast's WAPE by owner over the truth's."""
    export, _ = load_export(sample / "export")
    truth = pd.read_csv(sample / "truth" / "opportunities.csv")
    truth["as_of"] = pd.to_datetime(truth["as_of"], utc=True)
    cfg = DealTrainConfig()
    spec, snaps = build_snapshots(export, export.exported_at, cfg, progress=True)
    outcomes = deal_outcomes(export)
    opps = export.opportunities.set_index("opportunity_id")
    h = pd.Timedelta(days=cfg.horizon_days)
    rows = []
    for as_of in sorted(truth["as_of"].unique()):
        as_of = pd.Timestamp(as_of)
        if as_of + h > export.exported_at:
            continue
        scorer = fit_deal_scorer(export, snaps, spec, as_of, cfg, surrogate=False)
        if "base_rate_shift" in scorer.metadata:
            print(f"{as_of.date()}: base-rate shift {scorer.metadata['base_rate_shift']:+.3f} "
                  f"({scorer.metadata['base_rate_note']})")
        t = truth[truth["as_of"] == as_of]
        scored = scorer.score(opps.loc[t["opportunity_id"]].reset_index(), export.stage_history, export.activities,
                              export.leads, export.accounts, as_of, n_reasons=0)
        amount = scored["amount"].to_numpy()
        rate = scored["stage"].map(scorer.context.stage_win_rate).fillna(scorer.context.global_win_rate).to_numpy(float)
        weighted, commit = weighted_pipeline(amount, rate, pd.Series(scored["crm_close_date"].to_numpy()), as_of,
                                             cfg.horizon_days)
        out = outcomes.reindex(scored["opportunity_id"])
        won = ((out["won"] == 1) & (out["closed_at"] < as_of + h)).to_numpy()
        owner = opps.loc[scored["opportunity_id"], "owner_id"].fillna("(none)").to_numpy()
        frame = pd.DataFrame({
            "owner": owner,
            "actual": np.where(won, out["won_amount"].fillna(0.0).to_numpy(), 0.0),
            "funnelcast": scored["p_win_within_horizon"].to_numpy() * amount,
            "truth": t["p_win_within_horizon"].to_numpy() * amount,
            "weighted_pipeline": weighted,
            "reps_close_dates": commit,
        }).groupby("owner").sum()
        if detail:
            _detail(as_of.date(), scored, t["p_win_within_horizon"].to_numpy(), won, owner, frame)
        for m in ("funnelcast", "truth", "weighted_pipeline", "reps_close_dates"):
            rows.append({"origin": as_of.date(), "method": m, **accuracy(frame[m].to_numpy(), frame["actual"].to_numpy())})
    res = pd.DataFrame(rows)
    print(res.pivot(index="origin", columns="method", values="wape").round(4).to_string())
    mean = res.groupby("method")[["wape", "bias", "within_10pct"]].mean()
    print("\nmean over origins (open pipeline, by owner):\n" + mean.round(4).to_string())
    print(f"\nfunnelcast / truth WAPE: {mean.loc['funnelcast', 'wape'] / mean.loc['truth', 'wape']:.3f}; "
          f"funnelcast / weighted pipeline WAPE: {mean.loc['funnelcast', 'wape'] / mean.loc['weighted_pipeline', 'wape']:.3f}")
    return float(mean.loc["funnelcast", "wape"] / mean.loc["truth", "wape"])


if __name__ == "__main__":
    main()
