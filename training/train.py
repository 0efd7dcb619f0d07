"""Train the lead-quality model on point-in-time snapshots and register it in MLflow.

The split is by time. With ``cutoff`` the training cutoff (``--as-of``, default the export
time) and ``h`` the horizon, labelled snapshots have ``as_of <= cutoff - h``:

* **evaluate**: the latest ``eval_days`` of labelled snapshots;
* **calibrate**: the ``calib_days`` of snapshots ending ``h`` before the evaluation window
  (so no training label looks into the evaluation period), used for early stopping and
  Platt scaling;
* **fit**: everything earlier.

The registered model is then refitted the same way on all labelled snapshots (its
calibration window being the latest ``calib_days``), with the context of ``cutoff``.
The metrics logged are those of the held-out evaluation, for the model and for the
naive-Bayes baseline (Odoo's approach) on the same rows.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from features.contract import Export
from features.leads import (
    LeadFeatureSpec,
    converted_lead_value,
    lead_context,
    lead_snapshots,
    snapshot_times,
)
from models.baselines import NaiveBayesLeadScore
from models.drift import reference_profile
from models.estimators import DEFAULT_PARAMS, CalibratedBoostedClassifier
from models.explain import log_odds_contributions, shap_summary_plot
from models.metrics import classification_metrics
from models.plots import calibration_plot
from models.registry import ScorerModel
from models.scorer import LeadScorer, grade_cuts_from
from models.tasks import Task
from training.outcomes import OutcomeLabels, apply_outcomes
from training.provenance import export_fingerprint, provenance_tags

DAY = pd.Timedelta(days=1)
#: Fewest conversions a fit or calibration window may hold before training refuses.
MIN_POSITIVES = 10


@dataclass
class TrainConfig:
    horizon_days: int = 91
    snapshot_every_days: int = 14
    eval_days: int = 91
    calib_days: int = 91
    warmup_days: int = 30
    params: dict[str, Any] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class SplitPlan:
    fit: list[pd.Timestamp]
    calibrate: list[pd.Timestamp]
    evaluate: list[pd.Timestamp]

    def describe(self) -> dict[str, str]:
        def span(ts: list[pd.Timestamp]) -> str:
            return f"{ts[0].date()}..{ts[-1].date()} ({len(ts)})" if ts else "none"

        return {"fit": span(self.fit), "calibrate": span(self.calibrate), "evaluate": span(self.evaluate)}


@dataclass
class TrainResult:
    scorer: LeadScorer
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    plan: SplitPlan
    evaluation: pd.DataFrame
    snapshots: pd.DataFrame
    outcome_labels: OutcomeLabels | None = None  # None: trained without stored outcomes
    run_id: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)


def split_times(times: list[pd.Timestamp], horizon_days: int, eval_days: int, calib_days: int) -> SplitPlan:
    """Time split of snapshot times into fit / calibrate / evaluate (see module docstring)."""
    if not times:
        raise ValueError("no snapshot time to split")
    last = times[-1]
    h = pd.Timedelta(days=horizon_days)
    eval_start = last - pd.Timedelta(days=eval_days) + DAY
    evaluate = [t for t in times if t >= eval_start] if eval_days else []
    cal_end = eval_start - h if eval_days else last
    cal_start = cal_end - pd.Timedelta(days=calib_days)
    calibrate = [t for t in times if cal_start < t <= cal_end]
    fit = [t for t in times if t <= cal_start]
    if not fit or not calibrate:
        raise ValueError(
            f"not enough history for a time split: snapshots {times[0].date()}..{last.date()}, "
            f"horizon {horizon_days}d, evaluation {eval_days}d, calibration {calib_days}d"
        )
    return SplitPlan(fit=fit, calibrate=calibrate, evaluate=evaluate)


def _rows(snaps: pd.DataFrame, times: list[pd.Timestamp]) -> pd.DataFrame:
    return snaps[snaps["as_of"].isin(times)]


def _fit(snaps: pd.DataFrame, plan: SplitPlan, spec: LeadFeatureSpec, cfg: TrainConfig) -> CalibratedBoostedClassifier:
    fit, cal = _rows(snaps, plan.fit), _rows(snaps, plan.calibrate)
    cols = spec.feature_names
    return CalibratedBoostedClassifier(spec.categorical_features, params=cfg.params, random_state=cfg.seed).fit(
        fit[cols], fit["label"].to_numpy(), cal[cols], cal["label"].to_numpy()
    )


def _naive_bayes_columns(spec: LeadFeatureSpec) -> list[str]:
    return spec.categorical_features


def build_lead_model(
    export: Export,
    cfg: TrainConfig,
    cutoff: pd.Timestamp,
    progress: bool = False,
    outcomes: pd.DataFrame | None = None,
) -> TrainResult:
    """Snapshots, time-split evaluation against naive Bayes, and the final scorer (no MLflow).

    ``outcomes`` (``record_id``, ``outcome``, ``occurred_at``; see ``training.outcomes``):
    outcomes the CRM reported through the API, which decide the label of every snapshot
    whose label window they fall in; those after ``cutoff`` are ignored.
    """
    h = pd.Timedelta(days=cfg.horizon_days)
    start = export.leads["created_at"].min() + pd.Timedelta(days=cfg.warmup_days)
    times = snapshot_times(start, cutoff - h, cfg.snapshot_every_days)
    spec = LeadFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, exclude=cfg.exclude, as_of=cutoff)
    snaps = lead_snapshots(export, times, spec, progress=progress)
    outcome_labels = None
    if outcomes is not None:
        known = outcomes[pd.to_datetime(outcomes["occurred_at"], utc=True) <= cutoff]
        snaps, outcome_labels = apply_outcomes(snaps, known, "lead_id", cfg.horizon_days)
    cols = spec.feature_names

    plan = split_times(times, cfg.horizon_days, cfg.eval_days, cfg.calib_days)
    for window, ts in (("fit", plan.fit), ("calibration", plan.calibrate)):
        positives = int(_rows(snaps, ts)["label"].sum())
        if positives < MIN_POSITIVES:
            raise ValueError(
                f"only {positives} conversion(s) in the {window} window {plan.describe()[window if window == 'fit' else 'calibrate']}: "
                f"too few to learn from (at least {MIN_POSITIVES}); the history may start before outcomes were "
                "recorded, so train with --as-of later or on a longer export"
            )
    clf = _fit(snaps, plan, spec, cfg)
    ev = _rows(snaps, plan.evaluate)
    y_ev = ev["label"].to_numpy()
    p_model = clf.predict_proba(ev[cols])
    train_rows = _rows(snaps, plan.fit + plan.calibrate)
    nb = NaiveBayesLeadScore(_naive_bayes_columns(spec)).fit(train_rows[cols], train_rows["label"].to_numpy())
    p_nb = nb.predict_proba(ev[cols])
    metrics = classification_metrics(y_ev, p_model)
    baseline = classification_metrics(y_ev, p_nb)
    evaluation = ev[["lead_id", "as_of", "label"]].assign(p_model=p_model, p_naive_bayes=p_nb)

    final_plan = split_times(times, cfg.horizon_days, 0, cfg.calib_days)
    final = _fit(snaps, final_plan, spec, cfg)
    every = _rows(snaps, final_plan.fit + final_plan.calibrate)
    # drift reference: the final model's latest training rows (its calibration window) and their scores
    recent = _rows(snaps, final_plan.calibrate)[cols]
    reference = reference_profile(recent, final.predict_proba(recent), spec.categorical_features)
    value_map, value_overall = converted_lead_value(export, cutoff)
    scorer = LeadScorer(
        spec=spec,
        context=lead_context(export, cutoff, cfg.horizon_days),
        classifier=final,
        value_if_converted=value_map,
        value_overall=value_overall,
        grade_cuts=grade_cuts_from(final.predict_proba(every[cols])),
        metadata={
            "train_from": str(times[0]),
            "trained_until": str(cutoff),
            "horizon_days": cfg.horizon_days,
            "snapshots": len(times),
            "rows": len(snaps),
            "train_config": asdict(cfg),
            "data_fingerprint": export_fingerprint(export),
            "reference": reference,
            "outcome_labels": outcome_labels.__dict__ if outcome_labels else None,
        },
    )
    return TrainResult(
        scorer=scorer, metrics=metrics, baseline_metrics=baseline, plan=plan, evaluation=evaluation, snapshots=snaps,
        outcome_labels=outcome_labels,
    )


def log_and_register(
    result: TrainResult,
    client: MlflowClient,
    *,
    experiment: str,
    artifact_location: str | None,
    cfg: TrainConfig,
    data_source: str,
    alias: str = "champion",
    challenger_alias: str = "challenger",
) -> TrainResult:
    """Log params, metrics, plots and the pyfunc to MLflow; register it as ``challenger_alias``.

    The first registered version also becomes ``alias`` (the champion) directly; later ones
    wait for ``funnelcast promote`` to compare them with the champion.
    """
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    scorer = result.scorer
    name = Task.LEAD_QUALITY.value
    snaps = result.snapshots
    cols = scorer.spec.feature_names
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{name}-{scorer.trained_until.date()}") as run:
        mlflow.set_tags({"task": name, "data_source": data_source})
        mlflow.set_tags(provenance_tags(cfg.seed, scorer.metadata.get("data_fingerprint")))  # type: ignore[arg-type]
        mlflow.log_params(
            {
                "task": name,
                "train_from": scorer.metadata["train_from"],
                "trained_until": scorer.metadata["trained_until"],
                "horizon_days": cfg.horizon_days,
                "snapshot_every_days": cfg.snapshot_every_days,
                "snapshots": scorer.metadata["snapshots"],
                "rows": scorer.metadata["rows"],
                "n_features": len(cols),
                "n_rounds": scorer.classifier.n_rounds_,
                "calibration": "platt",
                "seed": cfg.seed,
                "params_source": str(scorer.metadata.get("params_source", "default")),
                **{f"split_{k}": v for k, v in result.plan.describe().items()},
                **{f"lgbm_{k}": v for k, v in {**DEFAULT_PARAMS, **cfg.params}.items()},
            }
        )
        mlflow.log_metrics({f"eval_{k}": v for k, v in result.metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"baseline_nb_{k}": v for k, v in result.baseline_metrics.items() if np.isfinite(v)})
        mlflow.log_param("stored_outcomes", "used" if result.outcome_labels is not None else "off")
        if result.outcome_labels is not None:
            mlflow.log_metrics(result.outcome_labels.as_metrics())
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "features.json").write_text(
                json.dumps(
                    {"features": cols, "categorical": scorer.spec.categorical_features, "spec": scorer.spec.__dict__},
                    indent=2,
                    default=str,
                )
            )
            ev = result.evaluation
            calibration_plot(
                ev["label"].to_numpy(),
                {"funnelcast": ev["p_model"].to_numpy(), "naive Bayes (Odoo-style)": ev["p_naive_bayes"].to_numpy()},
                str(d / "calibration.png"),
                title="Lead quality: calibration on the evaluation window",
            )
            sample = snaps.sample(n=min(2000, len(snaps)), random_state=cfg.seed)[cols]
            clf = scorer.classifier
            contrib = log_odds_contributions(clf.contributions(sample), cols, clf.calib_slope_, clf.calib_intercept_)
            shap_summary_plot(contrib, sample, str(d / "shap_summary.png"))
            ev.to_csv(d / "evaluation_predictions.csv", index=False)
            (d / "reference_distributions.json").write_text(json.dumps(scorer.metadata.get("reference"), indent=1))
            mlflow.log_artifacts(str(d), artifact_path="report")
            joblib.dump(scorer, d / "scorer.joblib")
            example = snaps[cols].head(5)
            signature = infer_signature(example, _pyfunc_output(scorer, example))
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=ScorerModel(),
                artifacts={"scorer": str(d / "scorer.joblib")},
                signature=signature,
                input_example=example,
                registered_model_name=name,
            )
        version = str(info.registered_model_version)
        aliases = [challenger_alias]
        if alias not in client.get_registered_model(name).aliases:
            aliases.append(alias)  # a first model becomes champion directly
        for a in aliases:
            client.set_registered_model_alias(name, a, version)
        client.set_model_version_tag(name, version, "trained_until", scorer.metadata["trained_until"])
        result.run_id, result.version, result.aliases = run.info.run_id, version, aliases
    return result


def _pyfunc_output(scorer: LeadScorer, X: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"probability": scorer.predict_proba(X)})
