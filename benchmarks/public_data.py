"""Lead-model quality on the three public datasets (../shared/data), leaking columns excluded.

Per dataset: import with its built-in mapping (``funnelcast import``) and train the lead model exactly
as ``funnelcast train`` does, with default settings (the horizon and windows chosen from the data; record
order for X Education, whose timestamps are synthetic: stated). The table shows every candidate of the
ladder (``models.candidates``: naive Bayes, logistic regression, conservative and current LightGBM, the
blend) on the same evaluation rows, and which one validation chose ("funnelcast" is that one). The
baselines are the ladder's own, fitted the same way as the model (fit window, Platt calibration on the
calibration window). ``old logistic regression`` is the baseline this benchmark used before: fitted on
the fit and calibration windows without a later calibration, it extrapolates the standardised numbers
(lead age above all) into the later window; its Brier score on Olist was 0.558. A last row keeps the
leaking columns, to show what they do.

``calibration_error`` is the expected calibration error of :func:`models.metrics.expected_calibration_error`:
the evaluation rows in 10 equal-frequency bins of the predicted probability, the mean |observed rate -
mean probability| weighted by bin size (about 0.03 of it is noise on a thousand rows: the benchmark prints
what a perfectly calibrated model would score on the same rows).

The calibration (the map, Platt or the monotone spline, and the calibration window's length) is chosen on
the validation window (``models.candidates.choose_calibration``); the benchmark prints what was tried
there. To tell what no calibration fitted before the evaluation window could fix from what it could, it
also prints the chosen model's calibration error after maps fitted **on the evaluation rows themselves**
(in-sample, so lower bounds, not models): its intercept alone (the level), Platt, the spline, and the
reliability table (10 equal-frequency bins) of the chosen model as trained.

    python benchmarks/public_data.py [--data ../shared/data] [--only xeducation maven_crm olist]

Maven CRM has no leads: its mapping writes each engaged deal as a lead that converts when the
deal is won, so these figures are a deal-win score from engagement-time facts. The dedicated
deal-win model and the monthly forecast backtest on Maven are in ``benchmarks/public_deals.py``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from tqdm.auto import tqdm

from features.adapters import import_export
from models.estimators import _intercept_shift, fit_log_odds_map, ramps
from models.metrics import calibration_table, classification_metrics, expected_calibration_error
from training.train import TrainConfig, build_lead_model

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Dataset:
    name: str
    folder: str
    mapping: str
    leaks: tuple[str, ...]  # from ../shared/data/README.md
    horizon_days: int | None = None  # None: chosen from the data, as `funnelcast train` does
    snapshot_every_days: int = 14
    eval_days: int = 91
    calib_days: int = 91
    # evaluate up to the last lead's arrival (+ horizon) instead of the latest timestamp: Olist's won dates
    # run months past its last MQL, and snapshots there hold only stale leads
    cutoff_at_last_lead: bool = False
    # days of history before the first snapshot (outcomes recorded only from some date on)
    warmup_days: int = 30


DATASETS = (
    Dataset("xeducation", "xeducation_leads", "xeducation",
            ("tags", "lead_quality", "last_activity", "last_notable_activity", "lead_profile",
             "asymmetrique_activity_index", "asymmetrique_profile_index", "asymmetrique_activity_score",
             "asymmetrique_profile_score")),
    # 14 months of deals: the windows shrink to what the history allows (no setting)
    Dataset("maven_crm", "maven_crm", "maven_crm", ("close_value",)),
    # 11 months of leads with a median of 14 days to close: weekly snapshots
    Dataset("olist", "olist_marketing_funnel", "olist",
            ("business_segment", "lead_type", "lead_behaviour_profile", "has_company", "has_gtin", "average_stock",
             "business_type", "declared_product_catalog_size", "declared_monthly_revenue", "sdr_id", "sr_id"),
            # won dates are recorded only from 2017-12 on: snapshots start then (fewer than 10
            # conversions in a fit window and training refuses)
            snapshot_every_days=7, cutoff_at_last_lead=True, warmup_days=150),
)


def logistic_regression(fit: pd.DataFrame, y: np.ndarray, later: pd.DataFrame, categorical: list[str]) -> np.ndarray:
    """A plain, well-specified logistic regression on the same feature frame."""
    numeric = [c for c in fit.columns if c not in categorical and fit[c].notna().any()]
    cats = [c for c in categorical if fit[c].notna().any()]

    def text(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[cats].astype("str").where(frame[cats].notna(), "(missing)").astype(object)

    pre = ColumnTransformer([
        ("cat", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20), cats),
        ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), numeric),
    ])
    model = make_pipeline(pre, LogisticRegression(C=1.0, max_iter=3000))
    model.fit(pd.concat([text(fit), fit[numeric]], axis=1), y)
    return model.predict_proba(pd.concat([text(later), later[numeric]], axis=1))[:, 1]


def calibration_noise(p: np.ndarray, seed: int = 0, draws: int = 200) -> tuple[float, float]:
    """Mean and 95th percentile of the calibration error a *perfectly* calibrated model with these
    probabilities shows on this many rows (outcomes drawn from ``p``): the metric's noise floor."""
    rng = np.random.default_rng(seed)
    errors = [expected_calibration_error((rng.random(len(p)) < p).astype(int), p) for _ in range(draws)]
    return float(np.mean(errors)), float(np.percentile(errors, 95))


def in_sample_bounds(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The calibration error of the probabilities ``p`` on ``y`` after maps of their log-odds fitted on these
    very rows (lower bounds: what the level alone, Platt's line and the spline could do if the evaluation
    window were known)."""
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    z, y = np.log(p / (1 - p)), np.asarray(y, dtype=int)
    out = {"level": expected_calibration_error(y, 1 / (1 + np.exp(-(z + _intercept_shift(z, y.astype(float))))))}
    for method in ("platt", "spline"):
        a, knots, slopes = fit_log_odds_map(z, y, method)
        out[method] = expected_calibration_error(y, 1 / (1 + np.exp(-(a + ramps(z, knots) @ slopes))))
    return out


def _lifetime_rows(export, later: pd.DataFrame, ev: pd.DataFrame, cutoff: pd.Timestamp) -> str:
    """The evaluation rows older than any lead that converted before ``cutoff`` took to convert: how many, how
    many of them converted, and what the model gave them (what the age correction of models.lifetime is for)."""
    leads = export.leads.drop_duplicates("lead_id", keep="last")
    done = leads[leads["converted_at"] < cutoff]
    longest = float(((done["converted_at"] - done["created_at"]) / pd.Timedelta(days=1)).max())
    old = (later["lead_age_days"] > longest).to_numpy()
    return (f"the longest creation-to-conversion before the cutoff: {longest:.0f} d; evaluation rows older than "
            f"that: {old.mean():.1%} ({old.sum()}), converted {ev['label'].to_numpy()[old].mean():.1%}, "
            f"mean probability {ev['p_model'].to_numpy()[old].mean():.1%}" if old.any() else
            f"the longest creation-to-conversion before the cutoff: {longest:.0f} d; no evaluation row is older")


def run(ds: Dataset, data: Path, seed: int) -> tuple[list[dict], dict]:
    t0 = time.perf_counter()
    imported = import_export(ds.mapping, data / ds.folder, skip_bad_rows=True)
    export = imported.export
    skipped = sum(imported.report.counts_by_reason().values())
    rows, info = [], {}
    cutoff = export.exported_at
    if ds.cutoff_at_last_lead:  # a horizon after the last lead (the horizon Olist's conversions call for)
        from models.tasks import resolve_horizon
        from training.train import LEAD_QUALITY

        h = ds.horizon_days or resolve_horizon(LEAD_QUALITY, export, cutoff, TrainConfig())[0].horizon_days
        cutoff = min(cutoff, export.leads["created_at"].max().ceil("D") + pd.Timedelta(days=h))
    for leaks_kept in (False, True):
        cfg = TrainConfig(horizon_days=ds.horizon_days, snapshot_every_days=ds.snapshot_every_days,
                          eval_days=ds.eval_days, calib_days=ds.calib_days, warmup_days=ds.warmup_days,
                          exclude=() if leaks_kept else ds.leaks, seed=seed)
        res = build_lead_model(export, cfg, cutoff)
        ev = res.evaluation
        y = ev["label"].to_numpy()
        if leaks_kept:
            rows.append({"dataset": ds.name, "model": "funnelcast, leaking columns KEPT",
                         **classification_metrics(y, ev["p_model"].to_numpy())})
            continue
        snaps, plan, spec = res.snapshots, res.plan, res.scorer.spec
        fit = snaps[snaps["as_of"].isin(plan.fit + plan.calibrate)]
        later = snaps[snaps["as_of"].isin(plan.evaluate)]
        assert (later["lead_id"].to_numpy() == ev["lead_id"].to_numpy()).all()
        cols = spec.feature_names
        p_lr = logistic_regression(fit[cols], fit["label"].to_numpy(), later[cols], spec.categorical_features)
        chosen = res.chosen["candidate"]
        rows.append({"dataset": ds.name, "model": f"funnelcast (chosen: {chosen})",
                     **classification_metrics(y, ev["p_model"].to_numpy())})
        for name in res.candidates.index:
            role = res.candidates.loc[name, "role"]
            rows.append({"dataset": ds.name, "model": f"  {name} ({role})",
                         **classification_metrics(y, ev[f"p_{name}"].to_numpy())})
        rows.append({"dataset": ds.name, "model": "  old logistic regression (no later calibration)",
                     **classification_metrics(y, p_lr)})
        info = {
            "dataset": ds.name,
            "order": "record order (synthetic)" if "leads.created_at" in imported.synthetic else "time",
            "split": res.plan.describe(),
            "eval_rows": len(ev),
            "eval_positive_rate": float(y.mean()),
            "skipped_source_rows": skipped,
            "horizon_days": res.chosen["horizon_days"],
            "chosen": res.chosen,
            "cutoff": str(cutoff.date()),
            "excluded": ", ".join(ds.leaks),
            "calibration_noise": calibration_noise(ev["p_model"].to_numpy(), seed),
            "calibration_grid": res.calibration_grid,
            "in_sample": in_sample_bounds(ev["p_model"].to_numpy(), y),
            "lifetime": _lifetime_rows(export, later, ev, plan.cutoff),
            "reliability": calibration_table(y, ev["p_model"].to_numpy()).assign(
                gap=lambda t: t["observed"] - t["predicted"]),
        }
    info["seconds"] = round(time.perf_counter() - t0, 1)
    return rows, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of the public datasets")
    ap.add_argument("--only", nargs="*", choices=[d.name for d in DATASETS], help="run only these datasets")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        raise SystemExit(f"{data} not found: the public datasets are read from there, never copied into the repo")
    chosen = [d for d in DATASETS if not args.only or d.name in args.only]
    rows, infos = [], []
    for ds in tqdm(chosen, desc="datasets", unit="dataset"):
        r, info = run(ds, data, args.seed)
        rows += r
        infos.append(info)
    table = pd.DataFrame(rows)[["dataset", "model", "roc_auc", "brier", "calibration_error", "log_loss", "pr_auc",
                                "positive_rate", "n"]]
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print("\nEvaluation window of each dataset's time split (same rows for every model):")
        print(table.round(4).to_string(index=False))
        print()
        for info in infos:
            print(f"{info['dataset']}: split by {info['order']}; {info['split']}; horizon {info['horizon_days']}d; "
                  f"{info['eval_rows']} evaluation rows ({info['eval_positive_rate']:.1%} positive); "
                  f"{info['skipped_source_rows']} source rows skipped as invalid; {info['seconds']} s")
            print(f"  excluded as leaking: {info['excluded']}")
            print(f"  chosen: {info['chosen']}")
            print(f"  moved to the recent rate: {info['chosen'].get('recent_rate', 'n/a')}")
            print(f"  leads older than the model saw: {info['chosen'].get('age_limit', 'none')}; {info['lifetime']}")
            mean, high = info["calibration_noise"]
            print(f"  calibration error (10 equal-frequency bins) of a perfectly calibrated model with funnelcast's "
                  "probabilities on these rows: "
                  f"{mean:.4f} on average, {high:.4f} at the 95th percentile")
            bounds = ", ".join(f"{k} {v:.4f}" for k, v in info["in_sample"].items())
            print(f"  calibration error after a map fitted on the evaluation rows themselves (lower bounds): {bounds}")
            grid = info["calibration_grid"]
            print("  calibration tried on the validation window:" + ("\n" + grid.round(4).to_string(index=False)
                                                                  if not grid.empty else " none (no validation window)"))
            print("  reliability of funnelcast on the evaluation window (10 equal-frequency bins):")
            print(info["reliability"].round(4).T.to_string())


if __name__ == "__main__":
    main()
