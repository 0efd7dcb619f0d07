"""Deal models against the truth and the CRM's stage win rate, on the sample's truth origins.

At each ``as_of`` of ``truth/opportunities.csv`` (T - 273, T - 182, T - 91, T days): fit the
deal models on the history before ``as_of`` only (labels censored there), score every deal
open then, and compare with the truth's exact probabilities and with the stage win rate
(the CRM's probability by stage, point-in-time), against what actually happened (the truth
files follow every deal to its end). Pooled over the origins, with a paired bootstrap CI
of the AUC gap to the truth.

    python benchmarks/deals.py --sample .funnelcast/sample [--per-stage] [--config JSON]
    python benchmarks/deals.py --seeds 1 2 3 4      # generated samples (default scale), one table each

``--seeds`` generates each seed's sample into ``--samples`` (``funnelcast generate --seed N``,
kept for the next run) and ends with the win AUC gap to the truth per seed.

``--per-stage`` also fits one next-stage model and one pair of timing models per open stage
(on that stage's rows only) and prints them beside the default, which has stage as a feature.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from features.io import load_export
from models.deals import period_frame, win_mass
from models.metrics import classification_metrics
from training.deals import (
    DealTrainConfig,
    _classifier,
    build_snapshots,
    fit_and_calibration_rows,
    fit_deal_scorer,
    timing_models,
)


def per_stage_predictions(spec, cfg: DealTrainConfig, snaps: pd.DataFrame, as_of: pd.Timestamp,
                          X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """P(won) and P(next stage) of the deals ``X`` from models fitted per open stage, on the same
    censored fit and calibration rows as the default's, restricted to the stage."""
    rows = fit_and_calibration_rows(snaps, as_of, cfg)
    (ns_fit, ns_cal), (hz_fit, hz_cal) = rows["next_stage"], rows["hazard"]
    cols, J = spec.feature_names, cfg.n_periods
    p_win, p_next = np.full(len(X), np.nan), np.full(len(X), np.nan)
    for stage in spec.open_stages:
        m = (X["stage"] == stage).to_numpy()
        if not m.any():
            continue
        nxt = _classifier(spec, cfg, ns_fit[ns_fit["stage"] == stage], ns_cal[ns_cal["stage"] == stage], cols,
                          "label", f"next stage from {stage}")
        p_next[m] = nxt.predict_proba(X[m])
        win, loss = timing_models(spec, cfg, hz_fit[hz_fit["stage"] == stage], hz_cal[hz_cal["stage"] == stage],
                                  [*cols, "period"])
        n = int(m.sum())
        big = period_frame(X[m].loc[X[m].index.repeat(J)], np.tile(np.arange(J), n))
        p_win[m] = win_mass(win.predict_proba(big).reshape(n, J), loss.predict_proba(big).reshape(n, J)).sum(axis=1)
    return p_win, p_next


def truth_comparison(sample: Path, cfg: DealTrainConfig, progress: bool = True, per_stage: bool = False) -> pd.DataFrame:
    """Per origin and deal: truth, model and stage-win-rate probabilities, and the outcomes."""
    export, _ = load_export(sample / "export")
    truth = pd.read_csv(sample / "truth" / "opportunities.csv")
    truth["as_of"] = pd.to_datetime(truth["as_of"], utc=True)
    spec, snaps = build_snapshots(export, export.exported_at, cfg, progress=progress,
                                  spec=None)
    rows = []
    for as_of in tqdm(sorted(truth["as_of"].unique()), desc="truth origins", disable=not progress):
        as_of = pd.Timestamp(as_of)
        scorer = fit_deal_scorer(export, snaps, spec, as_of, cfg, surrogate=False)
        choice = scorer.metadata.get("timing_choice") or {}
        if progress:
            tqdm.write(f"{as_of.date()}: timing candidate {choice.get('chosen', cfg.timing_layout)} (validation "
                       f"{choice.get('window', 'n/a')}): " + ", ".join(
                           f"{k} {v.get('validation_log_loss', float('nan')):.4f}"
                           for k, v in choice.get("candidates", {}).items())
                       + f"; history {choice.get('history_days') or 'all'} d, half-life "
                         f"{choice.get('half_life_days') or 'none'}"
                       + f"; refit on the calibration window {'yes' if scorer.metadata.get('refit_timing') else 'no'}"
                       + (f"; base-rate shift {scorer.metadata['base_rate_shift']:+.3f} ({scorer.metadata['base_rate_note']})"
                          if "base_rate_shift" in scorer.metadata else ""))
        opps = export.opportunities.set_index("opportunity_id")
        t = truth[truth["as_of"] == as_of]
        scored = scorer.score(opps.loc[t["opportunity_id"]].reset_index(), export.stage_history, export.activities,
                              export.leads, export.accounts, as_of, n_reasons=0).set_index("opportunity_id")
        t = t.set_index("opportunity_id")
        out = t[["as_of", "stage", "p_win", "p_win_within_horizon", "p_next_stage_within_horizon", "won",
                 "won_within_horizon", "next_stage_within_horizon"]].rename(
            columns={"p_win": "truth_p_win", "p_win_within_horizon": "truth_p_win_h",
                     "p_next_stage_within_horizon": "truth_p_next"})
        out["model_p_win"] = scored["p_win"]
        out["model_p_win_h"] = scored["p_win_within_horizon"]
        out["model_p_next"] = scored["p_next_stage"]
        out["stage_p_win"] = out["stage"].map(scorer.context.stage_win_rate).fillna(scorer.context.global_win_rate)
        if per_stage:
            X, _ = scorer.features(opps.loc[out.index].reset_index(), export.stage_history, export.activities,
                                   export.leads, export.accounts, as_of)
            out["per_stage_p_win"], out["per_stage_p_next"] = per_stage_predictions(spec, cfg, snaps, as_of,
                                                                                   X.loc[out.index])
        rows.append(out.reset_index())
    return pd.concat(rows, ignore_index=True)


def auc_gap_ci(y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 500, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) < 2:
            continue
        gaps.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    return float(np.quantile(gaps, 0.025)), float(np.quantile(gaps, 0.975))


def seed_sample(folder: Path, seed: int) -> Path:
    """The generated sample of ``seed`` at the default scale under ``folder`` (generated if missing)."""
    from features.sample import generate_sample

    out = folder / f"seed-{seed}"
    if not (out / "truth" / "opportunities.csv").is_file():
        generate_sample(out, seed=seed)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", default=".funnelcast/sample", help="a generated sample (export/ and truth/)")
    p.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="generator seeds to run on instead of --sample (each generated at the default scale)")
    p.add_argument("--samples", default=".funnelcast/samples", help="with --seeds: where the samples are kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the per-deal comparison to this CSV")
    p.add_argument("--per-stage", action="store_true", help="also fit and compare models per open stage")
    p.add_argument("--config", default="{}",
                   help='DealTrainConfig fields as JSON, e.g. \'{"timing_layout": "close_share"}\' or '
                        '\'{"timing_params": {"linear_tree": true, "linear_lambda": 100}}\'')
    args = p.parse_args()
    cfg = DealTrainConfig(**{"seed": args.seed, **json.loads(args.config)})
    if args.seeds is None:
        report(Path(args.sample), cfg, args.per_stage, args.out)
        return
    gaps = {}
    for s in args.seeds:
        print(f"\n=== generator seed {s} ===")
        out = f"{args.out.removesuffix('.csv')}-seed-{s}.csv" if args.out else None
        gaps[s] = report(seed_sample(Path(args.samples), s), cfg, args.per_stage, out)
    print("\nwin AUC gap to the truth per seed: " + ", ".join(f"seed {s} {g:.4f}" for s, g in gaps.items()))


def report(sample: Path, cfg: DealTrainConfig, per_stage: bool, out: str | None) -> float:
    """The tables of one sample; returns the win AUC gap to the truth."""
    start = time.perf_counter()
    cmp = truth_comparison(sample, cfg, per_stage=per_stage)
    print(f"{len(cmp)} open-deal snapshots over {cmp['as_of'].nunique()} origins ({time.perf_counter() - start:.0f} s)\n")
    table = []
    for target, y, cols in (
        ("won eventually", "won", [("truth", "truth_p_win"), ("funnelcast", "model_p_win"), ("stage win rate", "stage_p_win"),
                                   ("funnelcast, per-stage models", "per_stage_p_win")]),
        ("won within 91 d", "won_within_horizon", [("truth", "truth_p_win_h"), ("funnelcast", "model_p_win_h")]),
        ("next stage within 91 d", "next_stage_within_horizon", [("truth", "truth_p_next"), ("funnelcast", "model_p_next"),
                                                                  ("funnelcast, per-stage models", "per_stage_p_next")]),
    ):
        for name, col in cols:
            if col not in cmp:
                continue
            m = classification_metrics(cmp[y].to_numpy(), cmp[col].to_numpy())
            table.append({"target": target, "model": name, "roc_auc": m["roc_auc"], "brier": m["brier"],
                          "log_loss": m["log_loss"], "calibration_error": m["calibration_error"]})
    print(pd.DataFrame(table).round(4).to_string(index=False))
    y = cmp["won"].to_numpy()
    lo, hi = auc_gap_ci(y, cmp["truth_p_win"].to_numpy(), cmp["model_p_win"].to_numpy(), seed=cfg.seed)
    truth_auc = roc_auc_score(y, cmp["truth_p_win"])
    model_auc = roc_auc_score(y, cmp["model_p_win"])
    stage_auc = roc_auc_score(y, cmp["stage_p_win"])
    print(f"\nwin AUC gap to the truth: {truth_auc - model_auc:.4f} (95% paired bootstrap {lo:.4f}..{hi:.4f}); "
          f"above the stage win rate: {model_auc - stage_auc:+.4f}")
    if "per_stage_p_win" in cmp:
        print(f"per-stage models: win AUC gap to the truth {truth_auc - roc_auc_score(y, cmp['per_stage_p_win']):.4f}")
    per = cmp.groupby("as_of").apply(
        lambda g: pd.Series({"truth": roc_auc_score(g["won"], g["truth_p_win"]),
                             "funnelcast": roc_auc_score(g["won"], g["model_p_win"]),
                             "stage": roc_auc_score(g["won"], g["stage_p_win"]), "deals": len(g)}),
        include_groups=False)
    print("\nper origin (win AUC):\n" + per.round(4).to_string())
    mean = cmp.groupby("as_of")[["truth_p_win", "model_p_win", "won", "truth_p_win_h", "model_p_win_h",
                                 "won_within_horizon"]].mean()
    print("\nper origin (mean probability against the mean outcome):\n" + mean.round(4).to_string())
    if out:
        cmp.to_csv(out, index=False)
    return truth_auc - model_auc


if __name__ == "__main__":
    main()
