"""Customer value, high-value traits and the ``high_value`` model, registered in MLflow.

Examples are customers whose value window is complete before the cutoff, one per account,
with features as of ``first win + early_days`` (see ``features.customers``). The split is by
time of that snapshot: the earliest half fits the trees, the next quarter calibrates
(early stopping, Platt scaling), the latest quarter evaluates. Each account appears once,
so no account is in two parts. The registered model is refitted on the earliest three
quarters and calibrated on the latest quarter. The traits are mined on the same customers'
profiles (firmographics, custom fields, how the account came in) and logged with the model.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any
from pathlib import Path

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from features.contract import Export
from features.customers import AccountFeatureSpec, account_snapshots
from models.accounts import AccountScorer, ValueRegressor
from models.estimators import DEFAULT_PARAMS, CalibratedBoostedClassifier
from models.explain import log_odds_contributions, shap_summary_plot
from models.metrics import classification_metrics
from models.registry import ScorerModel
from models.tasks import Task
from models.traits import TraitMiner, global_importance
from training.provenance import export_fingerprint, provenance_tags

#: LightGBM settings of P(high value) over the shared defaults (hundreds of customers, not
#: tens of thousands of rows); ``AccountConfig.params`` (e.g. from ``funnelcast tune``) overrides them.
ACCOUNT_PARAMS: dict[str, Any] = {"min_child_samples": 20}


@dataclass
class AccountConfig:
    window_days: int = 365
    early_days: int = 28
    quantile: float = 0.8
    n_traits: int = 10
    n_bootstrap: int = 50
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class AccountResult:
    scorer: AccountScorer
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    snapshots: pd.DataFrame
    traits: pd.DataFrame
    importance: pd.DataFrame
    evaluation: pd.DataFrame
    run_id: str | None = None
    version: str | None = None
    extra: dict = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


def profile_columns(spec: AccountFeatureSpec) -> list[str]:
    """What traits are mined over: who the customer is and how it came in (targetable in prospects)."""
    return [*spec.account_categoricals, *spec.account_numerics,
            *(f"lead_{c}" for c in spec.lead_categoricals), *(f"lead_{c}" for c in spec.lead_numerics)]


def mine_traits(snaps: pd.DataFrame, spec: AccountFeatureSpec, cfg: AccountConfig) -> TraitMiner:
    """High-value traits of the customers in ``snaps`` (see ``models.traits``)."""
    miner = TraitMiner(n_traits=cfg.n_traits, n_bootstrap=cfg.n_bootstrap, random_state=cfg.seed)
    return miner.fit(snaps[profile_columns(spec)], snaps["value"].to_numpy(), snaps["label"].to_numpy())


def _split(snaps: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    n = len(snaps)
    a, b = int(n * 0.5), int(n * 0.75)
    if a < 20 or b - a < 10 or n - b < 10:
        raise ValueError(f"only {n} customers with a complete value: too few for a time split (need 80)")
    return snaps.iloc[:a], snaps.iloc[a:b], snaps.iloc[b:]


def fit_high_value_classifier(train: pd.DataFrame, spec: AccountFeatureSpec, cfg: AccountConfig,
                              cal: pd.DataFrame | None = None) -> CalibratedBoostedClassifier:
    """P(high value) fitted on ``train`` (sorted by ``as_of``): its earlier two thirds fit the trees,
    the later third calibrates (early stopping, Platt scaling), unless ``cal`` is given."""
    if cal is None:
        cut = int(len(train) * 2 / 3)
        train, cal = train.iloc[:cut], train.iloc[cut:]
    cols = spec.feature_names
    return CalibratedBoostedClassifier(spec.categorical_features, params={**ACCOUNT_PARAMS, **cfg.params},
                                       random_state=cfg.seed).fit(train[cols], train["label"].to_numpy(), cal[cols],
                                                                  cal["label"].to_numpy())


def build_high_value_model(export: Export, cfg: AccountConfig, cutoff: pd.Timestamp, progress: bool = False) -> AccountResult:
    """Snapshots, traits, the time-split evaluation and the final scorer (no MLflow)."""
    spec = AccountFeatureSpec.from_export(export, early_days=cfg.early_days, window_days=cfg.window_days)
    snaps, threshold = account_snapshots(export, cutoff, spec, quantile=cfg.quantile, progress=progress)
    cols = spec.feature_names
    fit, cal, ev = _split(snaps)
    clf = fit_high_value_classifier(fit, spec, cfg, cal=cal)
    p = clf.predict_proba(ev[cols])
    metrics = classification_metrics(ev["label"].to_numpy(), p)
    # baseline: the first deal's amount alone (what a CRM report would sort by)
    amount = ev["first_deal_amount"].fillna(ev["first_deal_amount"].median()).to_numpy(dtype=float)
    baseline = classification_metrics(ev["label"].to_numpy(), (amount.argsort().argsort() + 0.5) / len(amount))
    reg = ValueRegressor(random_state=cfg.seed).fit(clf._matrix(pd.concat([fit, cal])[cols]),
                                                    pd.concat([fit, cal])["value"].to_numpy())
    pred = reg.predict(clf._matrix(ev[cols]))
    metrics["value_mae"] = float(np.mean(np.abs(pred - ev["value"].to_numpy())))
    metrics["value_spearman"] = float(pd.Series(pred).corr(pd.Series(ev["value"].to_numpy()), method="spearman"))
    evaluation = ev[["account_id", "as_of", "value", "label"]].assign(probability=p, expected_value=pred)

    final_fit, final_cal = pd.concat([fit, cal]), ev
    final = fit_high_value_classifier(final_fit, spec, cfg, cal=final_cal)
    final_reg = ValueRegressor(random_state=cfg.seed).fit(final._matrix(snaps[cols]), snaps["value"].to_numpy())
    contrib = log_odds_contributions(final.contributions(snaps[cols]), cols, final.calib_slope_, final.calib_intercept_)
    importance = global_importance(contrib.values, snaps[cols], cols)
    miner = mine_traits(snaps, spec, cfg)
    traits = miner.table()
    scorer = AccountScorer(
        spec=spec, classifier=final, regressor=final_reg, threshold=threshold, trained_until=cutoff,
        traits=[t.as_dict() for t in miner.traits_], importance=importance.to_dict("records"),
        metadata={"train_from": str(snaps["as_of"].min()), "trained_until": str(cutoff), "customers": len(snaps),
                  "threshold": threshold, "quantile": cfg.quantile, "window_days": cfg.window_days,
                  "train_config": asdict(cfg), "data_fingerprint": export_fingerprint(export)},
    )
    return AccountResult(scorer=scorer, metrics=metrics, baseline_metrics=baseline, snapshots=snaps, traits=traits,
                         importance=importance, evaluation=evaluation, extra={"contributions": contrib})


def write_traits_report(result: AccountResult, out: Path) -> list[Path]:
    """The traits table (CSV, JSON), the global importance (CSV) and plots into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "traits.csv", out / "traits.json", out / "importance.csv", out / "traits.png", out / "shap_summary.png"]
    result.traits.to_csv(paths[0], index=False)
    paths[1].write_text(json.dumps({"threshold": result.scorer.threshold, "traits": result.scorer.traits}, indent=2,
                                   default=float) + "\n")
    result.importance.to_csv(paths[2], index=False)
    t = result.traits
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(len(t), 1)))
    if len(t):
        y = np.arange(len(t))[::-1]
        ax.barh(y, t["heldout_lift"], color="#3b7dd8", alpha=0.8)
        ax.errorbar(t["heldout_lift"], y, xerr=[t["heldout_lift"] - t["heldout_low"], t["heldout_high"] - t["heldout_lift"]],
                    fmt="none", ecolor="black", capsize=3)
        ax.set_yticks(y, t["trait"])
        ax.axvline(1.0, color="grey", ls="--")
    ax.set_xlabel("customer value lift on held-out accounts (95% CI)")
    ax.set_title("High-value traits")
    fig.tight_layout()
    fig.savefig(paths[3], dpi=110)
    plt.close(fig)
    cols = result.scorer.spec.feature_names
    shap_summary_plot(result.extra["contributions"], result.snapshots[cols], str(paths[4]))
    return paths


def log_and_register(result: AccountResult, client: MlflowClient, *, experiment: str, artifact_location: str | None,
                     cfg: AccountConfig, data_source: str, alias: str = "champion",
                     challenger_alias: str = "challenger") -> AccountResult:
    """Log params, metrics, traits, plots and the pyfunc; register ``high_value`` as ``challenger_alias``.

    The first registered version also becomes ``alias`` (the champion) directly; later ones
    wait for ``funnelcast promote --task high_value`` to compare them with the champion.
    """
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    scorer, name = result.scorer, Task.HIGH_VALUE.value
    cols = scorer.spec.feature_names
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{name}-{scorer.trained_until.date()}") as run:
        mlflow.set_tags({"task": name, "data_source": data_source})
        mlflow.set_tags(provenance_tags(cfg.seed, scorer.metadata.get("data_fingerprint")))  # type: ignore[arg-type]
        mlflow.log_params({"task": name, **{k: str(v) for k, v in scorer.metadata.items() if k != "train_config"},
                           "early_days": cfg.early_days, "n_features": len(cols), "calibration": "platt",
                           "seed": cfg.seed,
                           **{f"lgbm_{k}": v for k, v in {**DEFAULT_PARAMS, **ACCOUNT_PARAMS, **cfg.params}.items()}})
        mlflow.log_metrics({f"eval_{k}": v for k, v in result.metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"baseline_first_deal_{k}": v for k, v in result.baseline_metrics.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            write_traits_report(result, d / "traits")
            mlflow.log_artifacts(str(d / "traits"), artifact_path="traits")
            joblib.dump(scorer, d / "scorer.joblib")
            example = result.snapshots[cols].head(5)
            signature = infer_signature(example, pd.DataFrame({"probability": scorer.predict_proba(example)}))
            info = mlflow.pyfunc.log_model(name=name, python_model=ScorerModel(),
                                           artifacts={"scorer": str(d / "scorer.joblib")}, signature=signature,
                                           input_example=example, registered_model_name=name)
        version = str(info.registered_model_version)
        aliases = [challenger_alias]
        if alias not in client.get_registered_model(name).aliases:
            aliases.append(alias)  # a first model becomes champion directly
        for a in aliases:
            client.set_registered_model_alias(name, a, version)
        client.set_model_version_tag(name, version, "trained_until", str(scorer.trained_until))
        result.run_id, result.version, result.aliases = run.info.run_id, version, aliases
    return result
