"""The lead_quality task: point-in-time lead snapshots, the time-fold evaluation, the scorer.

The split is the task's :class:`~models.folds.TimeFold` over the labelled snapshot times
(``as_of <= cutoff - h``): the latest ``eval_days`` evaluate, the ``calib_days`` ending a
horizon before them calibrate (early stopping, Platt scaling), everything earlier fits. The
registered model is then refitted on the fold's final split (its calibration window being
the latest ``calib_days``), with the context of ``cutoff``. The metrics are those of the
held-out evaluation, for the model and for the naive-Bayes baseline (Odoo's approach) on the
same rows. :data:`LEAD_QUALITY` is the task's :class:`~models.tasks.TaskDefinition`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Export
from features.leads import (
    LeadFeatureSpec,
    converted_lead_value,
    converted_within_horizon,
    lead_context,
    lead_snapshots,
    snapshot_times,
)
from features.pit import open_leads
from models.baselines import NaiveBayesLeadScore
from models.drift import reference_profile
from models.estimators import DEFAULT_PARAMS, CalibratedBoostedClassifier
from models.explain import shap_summary_plot
from models.folds import Split, TimeFold
from models.metrics import classification_metrics
from models.plots import calibration_plot
from models.scorer import LeadScorer, grade_cuts_from
from models.tasks import Evaluation, Scored, Snapshots, Task, TrainResult, build_task
from training.outcomes import apply_outcomes
from training.promote import Check, Window, config_from, window_label
from training.provenance import export_fingerprint
from training.score import score_open_leads
from training.tune import ProtocolTuning

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

    @property
    def fold(self) -> TimeFold:
        return TimeFold(horizon=self.horizon_days, evaluate=self.eval_days, calibrate=self.calib_days)


@dataclass(kw_only=True)
class LeadTrainResult(TrainResult):
    #: The evaluation split of the snapshot times.
    plan: Split


def _rows(snaps: pd.DataFrame, times: list[pd.Timestamp]) -> pd.DataFrame:
    return snaps[snaps["as_of"].isin(times)]


def _fit(snaps: pd.DataFrame, plan: Split, spec: LeadFeatureSpec, cfg: TrainConfig) -> CalibratedBoostedClassifier:
    fit, cal = _rows(snaps, plan.fit), _rows(snaps, plan.calibrate)
    cols = spec.feature_names
    return CalibratedBoostedClassifier(spec.categorical_features, params=cfg.params, random_state=cfg.seed).fit(
        fit[cols], fit["label"].to_numpy(), cal[cols], cal["label"].to_numpy()
    )


def _check_positives(snaps: pd.DataFrame, plan: Split) -> None:
    for window, key in (("fit", "fit"), ("calibration", "calibrate")):
        positives = int(_rows(snaps, getattr(plan, key))["label"].sum())
        if positives < MIN_POSITIVES:
            raise ValueError(
                f"only {positives} conversion(s) in the {window} window {plan.describe()[key]}: "
                f"too few to learn from (at least {MIN_POSITIVES}); the history may start before outcomes were "
                "recorded, so train with --as-of later or on a longer export"
            )


def build_lead_model(
    export: Export,
    cfg: TrainConfig,
    cutoff: pd.Timestamp,
    progress: bool = False,
    outcomes: pd.DataFrame | None = None,
) -> LeadTrainResult:
    """Snapshots, time-split evaluation against naive Bayes, and the final scorer (no MLflow).

    ``outcomes`` (``record_id``, ``outcome``, ``occurred_at``; see ``training.outcomes``):
    outcomes the CRM reported through the API, which decide the label of every snapshot
    whose label window they fall in; those after ``cutoff`` are ignored.
    """
    return build_task(LEAD_QUALITY, export, cutoff, cfg, progress=progress, outcomes=outcomes)  # type: ignore[return-value]


def _final_scorer(export: Export, snaps: pd.DataFrame, times: list[pd.Timestamp], spec: LeadFeatureSpec,
                  cfg: TrainConfig, cutoff: pd.Timestamp) -> LeadScorer:
    """The registered model: refitted on the fold's final split, with the context of ``cutoff``."""
    cols = spec.feature_names
    final_plan = cfg.fold.final(times)
    final = _fit(snaps, final_plan, spec, cfg)
    every = _rows(snaps, final_plan.fit + final_plan.calibrate)
    # drift reference: the final model's latest training rows (its calibration window) and their scores
    recent = _rows(snaps, final_plan.calibrate)[cols]
    reference = reference_profile(recent, final.predict_proba(recent), spec.categorical_features)
    value_map, value_overall = converted_lead_value(export, cutoff)
    return LeadScorer(
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
        },
    )


def _tuning_params() -> dict[str, Any]:
    """lead_quality's LightGBM parameters without tuning."""
    return dict(DEFAULT_PARAMS)


class LeadComparison:
    """lead_quality's promotion: every lead open at each snapshot time of the window, converted
    within the horizon."""

    task = Task.LEAD_QUALITY
    checks: tuple[Check, ...] = ()

    def recipe(self, scorer: Any) -> Any:
        return config_from(scorer, TrainConfig, horizon_days=scorer.spec.horizon_days,
                           exclude=tuple(scorer.spec.excluded))

    def window(self, export: Export, recipe: Any, evaluate: str | int | pd.Timedelta) -> Window:
        start = export.leads["created_at"].min() + pd.Timedelta(days=recipe.warmup_days)
        times = snapshot_times(start, export.exported_at - pd.Timedelta(days=recipe.horizon_days),
                               recipe.snapshot_every_days)
        fold = TimeFold(horizon=recipe.horizon_days, evaluate=evaluate, calibrate=recipe.calib_days)
        window = fold.split(times, export.exported_at).evaluate
        return Window(window[0], window_label(window), window)

    def learned_from(self, export: Export, model: Any, window: Window) -> bool:
        return model.trained_until > window.start

    def refit(self, export: Export, recipe: Any, window: Window) -> Any:
        return build_lead_model(export, recipe, window.start).scorer

    def evaluate(self, export: Export, model: Any, window: Window) -> dict[str, float]:
        preds = window_predictions(model, export, window.data)
        return classification_metrics(preds["label"].to_numpy(), preds["p"].to_numpy())


def window_predictions(scorer: Any, export: Export, times: list[pd.Timestamp]) -> pd.DataFrame:
    """``lead_id, as_of, label, p``: the scorer on every lead open at each time of the window."""
    parts = []
    for t in times:
        leads = open_leads(export.leads, t)
        if leads.empty:
            continue
        X = scorer.features(leads, export.accounts, export.activities, t)
        label = converted_within_horizon(leads, t, scorer.spec.horizon_days).reindex(X.index)
        parts.append(pd.DataFrame({"lead_id": X.index, "as_of": t, "label": label.to_numpy(), "p": scorer.predict_proba(X)}))
    return pd.concat(parts, ignore_index=True)


SUMMARY_METRICS = ("roc_auc", "pr_auc", "brier", "log_loss", "calibration_error", "top_decile_capture")


class LeadQuality:
    """The lead_quality :class:`~models.tasks.TaskDefinition`: P(a lead converts within the horizon)."""

    task = Task.LEAD_QUALITY
    baseline = "baseline_nb"
    floor_metric = "roc_auc"
    tuning = ProtocolTuning(Task.LEAD_QUALITY, _tuning_params, (10, 1000))
    comparison = LeadComparison()
    drift_population = "leads open"

    def config(self, *, horizon_days: int, snapshot_every_days: int, seed: int,
               exclude: tuple[str, ...] = ()) -> TrainConfig:
        return TrainConfig(horizon_days=horizon_days, snapshot_every_days=snapshot_every_days, exclude=exclude,
                           seed=seed)

    def population(self, export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
        return open_leads(export.leads, as_of)

    def snapshots(self, export: Export, cutoff: pd.Timestamp, config: TrainConfig, *, progress: bool = False,
                  outcomes: pd.DataFrame | None = None) -> Snapshots:
        h = pd.Timedelta(days=config.horizon_days)
        start = export.leads["created_at"].min() + pd.Timedelta(days=config.warmup_days)
        times = snapshot_times(start, cutoff - h, config.snapshot_every_days)
        spec = LeadFeatureSpec.from_export(export, horizon_days=config.horizon_days, exclude=config.exclude,
                                           as_of=cutoff)
        frame = lead_snapshots(export, times, spec, progress=progress)
        outcome_labels = None
        if outcomes is not None:
            known = outcomes[pd.to_datetime(outcomes["occurred_at"], utc=True) <= cutoff]
            frame, outcome_labels = apply_outcomes(frame, known, "lead_id", config.horizon_days)
        return Snapshots(spec=spec, frame=frame, times=times, cutoff=cutoff, outcome_labels=outcome_labels)

    def fold(self, config: TrainConfig, snapshots: Snapshots) -> TimeFold:
        return config.fold

    def fit(self, export: Export, snapshots: Snapshots, split: Split, config: TrainConfig,
            ) -> CalibratedBoostedClassifier:
        _check_positives(snapshots.frame, split)
        return _fit(snapshots.frame, split, snapshots.spec, config)

    def evaluate(self, model: CalibratedBoostedClassifier, snapshots: Snapshots, split: Split,
                 config: TrainConfig) -> Evaluation:
        """The model against naive Bayes (fitted on the same fit and calibration rows)."""
        snaps, cols = snapshots.frame, snapshots.spec.feature_names
        ev = _rows(snaps, split.evaluate)
        y_ev = ev["label"].to_numpy()
        p_model = model.predict_proba(ev[cols])
        train_rows = _rows(snaps, split.fit + split.calibrate)
        nb = NaiveBayesLeadScore(snapshots.spec.categorical_features).fit(train_rows[cols],
                                                                          train_rows["label"].to_numpy())
        p_nb = nb.predict_proba(ev[cols])
        frame = ev[["lead_id", "as_of", "label"]].assign(p_model=p_model, p_naive_bayes=p_nb)
        return Evaluation(classification_metrics(y_ev, p_model), classification_metrics(y_ev, p_nb), frame)

    def final(self, export: Export, snapshots: Snapshots, split: Split, evaluation: Evaluation,
              config: TrainConfig) -> LeadTrainResult:
        scorer = _final_scorer(export, snapshots.frame, snapshots.times, snapshots.spec, config, snapshots.cutoff)
        labels = snapshots.outcome_labels
        scorer.metadata["outcome_labels"] = labels.__dict__ if labels else None
        return LeadTrainResult(scorer=scorer, metrics=evaluation.metrics, baseline_metrics=evaluation.baseline,
                               plan=split, windows=split.describe(), evaluation=evaluation.frame,
                               snapshots=snapshots.frame)

    def run_params(self, result: TrainResult, config: TrainConfig) -> dict[str, object]:
        meta = result.scorer.metadata
        return {
            "horizon_days": config.horizon_days,
            "snapshot_every_days": config.snapshot_every_days,
            "snapshots": meta["snapshots"],
            "rows": meta["rows"],
            "n_rounds": result.scorer.classifier.n_rounds_,
            "calibration": "platt",
            **{f"lgbm_{k}": v for k, v in {**DEFAULT_PARAMS, **config.params}.items()},
        }

    def write_report(self, result: TrainResult, config: TrainConfig, folder: Path) -> None:
        d = folder / "report"
        ev = result.evaluation
        calibration_plot(
            ev["label"].to_numpy(),
            {"funnelcast": ev["p_model"].to_numpy(), "naive Bayes (Odoo-style)": ev["p_naive_bayes"].to_numpy()},
            str(d / "calibration.png"),
            title="Lead quality: calibration on the evaluation window",
        )
        snaps, cols = result.snapshots, result.scorer.spec.feature_names
        sample = snaps.sample(n=min(2000, len(snaps)), random_state=config.seed)[cols]
        shap_summary_plot(result.scorer.explain(sample), sample, str(d / "shap_summary.png"))

    def summary(self, result: TrainResult) -> str:
        m, b = result.metrics, result.baseline_metrics
        table = pd.DataFrame({"funnelcast": [m[r] for r in SUMMARY_METRICS],
                              "naive Bayes": [b[r] for r in SUMMARY_METRICS]}, index=list(SUMMARY_METRICS))
        return f"evaluation window {result.windows['evaluate']}\n{table.round(4).to_string()}"

    def score(self, scorer: LeadScorer, export: Export, as_of: pd.Timestamp) -> Scored:
        return Scored(score_open_leads(export, scorer, as_of), "leads")

    def drift_features(self, scorer: LeadScorer, export: Export, population: pd.DataFrame,
                       as_of: pd.Timestamp) -> tuple[pd.DataFrame, np.ndarray]:
        X = scorer.features(population, export.accounts, export.activities, as_of)
        return X, scorer.predict_proba(X)


LEAD_QUALITY = LeadQuality()
