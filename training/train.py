"""The lead_quality task: point-in-time lead snapshots, the time-fold evaluation, the scorer.

The horizon is the user's (``horizon_days``) or chosen from the leads' decision times (created to
converted or disqualified, see :mod:`models.windows`). The split is the task's
:class:`~models.folds.TimeFold` over the labelled snapshot times (``as_of <= cutoff - h``): the
latest ``eval_days`` evaluate, the ``calib_days`` ending a horizon before them calibrate (early
stopping, the calibration map), everything earlier fits; on a short history both windows shrink (to two
snapshot steps or 14 days, whichever is longer) until every window holds at least
:data:`MIN_POSITIVES` leads of each class.

The model is chosen on the **validation** split (the same fold as known at the evaluation
window's start, :meth:`~models.folds.TimeFold.validation`), never on the evaluation window: the
ladder of :mod:`models.candidates` (naive Bayes, logistic regression, conservative and current
LightGBM, a blend), then the history length and recency weighting of the winner, then its calibration
(Platt scaling or a monotone spline of the log-odds, on the whole calibration window or its most recent
half: :func:`models.candidates.choose_calibration`; Platt on the whole window without a validation
window), logged as ``calibration_method`` and ``calibration_window``. Every candidate
is then fitted on the evaluation split and scored on the evaluation window (``result.candidates``);
``metrics`` are the chosen one's, ``baseline_metrics`` the better baseline's (naive Bayes or the
logistic regression, by evaluation log loss). The registered model is the winner refitted on the
fold's final split with the context of ``cutoff``.

**Drift of the base rate.** Every window is calibrated a horizon before its cutoff (its labels must be
known), so a conversion rate that moves is a horizon stale by the time the model scores. The leads open
in that last horizon are only partly decided at the cutoff, but what is decided says where the rate is
now (:func:`recent_leads`): the models' calibrated intercepts are moved until the conversions they
expect already decided there match those decided (:func:`models.candidates.recent_rate_shift`). Whether
to move them is chosen on the validation window (kept when it lowers the validation log loss there);
without one, when the recent rate differs sharply from the calibration window's
(:func:`models.candidates.base_rate_shift`). The evaluation split's models (every candidate) and the
registered one are moved the same way, each at its own cutoff; a sharp shift between training and
the evaluation window is warned about either way.
:data:`LEAD_QUALITY` is the task's :class:`~models.tasks.TaskDefinition`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Export
from features.errors import NothingToLearnFrom
from features.engine import lead_snapshots  # the pandas one, or per entity partition in a Dask session
from features.leads import (
    LeadFeatureSpec,
    converted_lead_value,
    converted_within_horizon,
    lead_context,
    snapshot_times,
)
from features.pit import decision_times, open_leads
from models.candidates import (
    TABLE_METRICS,
    TIE,
    Calibration,
    Candidate,
    Choice,
    RecentOutcomes,
    base_rate_shift,
    candidate_table,
    choose_on_validation,
    fit_candidate,
    fit_every,
    ladder,
    recent_outcomes,
    recent_rate_shift,
)
from models.drift import reference_profile
from models.estimators import DEFAULT_PARAMS
from models.explain import shap_summary_plot
from models.folds import NotEnoughHistory, Split, TimeFold
from models.lifetime import AgeLimit, age_limit
from models.metrics import classification_metrics
from models.plots import calibration_plot
from models.scorer import LeadScorer, grade_cuts_from
from models.tasks import Evaluation, Scored, Snapshots, Task, TrainResult, build_task
from training.audit import leak_warnings, stored_fields
from training.outcomes import apply_outcomes
from training.promote import Check, Window, config_from, reliability, window_label
from training.provenance import export_fingerprint
from training.score import score_open_leads
from training.tune import ProtocolTuning

#: Fewest leads of each class (converted, not converted) a fit or calibration window may hold, and
#: half of it an evaluation window, before the windows shrink or training refuses.
MIN_POSITIVES = 10
#: Shortest evaluation and calibration windows (days; or two snapshot steps when that is longer).
MIN_WINDOW_DAYS = 14


@dataclass
class TrainConfig:
    #: None: chosen from the data (``models.windows.choose_horizon``) when training starts.
    horizon_days: int | None = None
    snapshot_every_days: int = 14
    eval_days: int = 91
    calib_days: int = 91
    warmup_days: int = 30
    params: dict[str, Any] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    seed: int = 0
    #: Choose the model on a validation window (False: the current LightGBM, as before the ladder).
    choose: bool = True
    #: Try, on the validation window, letting the calibrated models learn again on the calibration
    #: window's rows too (:func:`models.candidates.choose_refit`). Off by default: on the generated
    #: seeds the defaults are chosen on it moved the mean AUC gap to the truth by 0.0005 (seeds 0, 5, 6:
    #: 0.0084 -> 0.0067, 0.0078 -> 0.0078, 0.0069 -> 0.0070), within noise (see docs/benchmarks.md).
    choose_refit: bool = False

    @property
    def fold(self) -> TimeFold:
        if self.horizon_days is None:
            raise NotEnoughHistory("no horizon", [], "the horizon was not resolved (models.tasks.resolve_horizon)")
        least = max(MIN_WINDOW_DAYS, 2 * self.snapshot_every_days)
        return TimeFold(horizon=self.horizon_days, evaluate=self.eval_days, calibrate=self.calib_days,
                        min_evaluate=least, min_calibrate=least)


@dataclass(kw_only=True)
class LeadTrainResult(TrainResult):
    #: The evaluation split of the snapshot times.
    plan: Split
    #: The calibration maps and windows tried on the validation window (empty: none was; see
    #: :func:`models.candidates.choose_calibration`), logged as ``report/calibration_choice.csv``.
    calibration_grid: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass
class LeadModels:
    """A fold's models: every candidate fitted on the evaluation split, and what validation chose."""

    models: dict[str, Any]
    choice: Choice | None
    roles: dict[str, str]
    validation: str = ""
    #: The candidate used when nothing was chosen: the better baseline on the calibration window when the
    #: history had no room for a validation window (:func:`_fallback`), LightGBM when choice is off.
    fallback: str = "lgbm"
    #: Whether the models are moved to the recent rate (:func:`_decide_recent`), why, and by how much (log-odds).
    recent: bool = False
    recent_why: str = ""
    shifts: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.choice.name if self.choice else self.fallback

    @property
    def chosen(self) -> Any:
        return self.models[self.name]


def _rows(snaps: pd.DataFrame, times: list[pd.Timestamp]) -> pd.DataFrame:
    return snaps[snaps["as_of"].isin(times)]


def _rungs(spec: LeadFeatureSpec, cfg: TrainConfig, lifetime: AgeLimit | None = None) -> list:
    """The ladder; with ``lifetime``, every rung corrects the leads older than its range (:mod:`models.lifetime`)."""
    rungs = ladder(spec.categorical_features, cfg.params, cfg.seed)
    if lifetime is None:
        return rungs
    return [Candidate(r.name, r.role, lambda make=r.make: _limited(make(), lifetime)) for r in rungs]


def _limited(model: Any, lifetime: AgeLimit) -> Any:
    model.lifetime_ = lifetime
    return model


def _lifetime(export: Export | None, snaps: pd.DataFrame, split: Split, spec: LeadFeatureSpec,
              cfg: TrainConfig) -> AgeLimit | None:
    """The age correction of the models fitted on ``split``'s fit window (:func:`models.lifetime.age_limit`,
    with what is known at its cutoff), or None (no export, the age feature excluded, or nothing to correct)."""
    if export is None or "lead_age_days" not in spec.feature_names:
        return None
    return age_limit(export.leads, split.cutoff, cfg.horizon_days, _rows(snaps, split.fit)["lead_age_days"])


def _enough(snaps: pd.DataFrame) -> Any:
    """What a split of ``snaps`` is missing (decided leads per class per window), or None."""
    by_time = snaps.groupby("as_of")["label"].agg(["sum", "count"])

    def missing(split: Split) -> str | None:
        if split.evaluate and len(split.fit) < len(split.calibrate):
            # a model fitted on fewer snapshot times than it is calibrated on is starved (Maven CRM: one fit time
            # and LightGBM a constant); the windows shrink until the fit window is at least as long
            return (f"the fit window {split.describe()['fit']} holds fewer snapshot times than the calibration "
                    f"window {split.describe()['calibrate']}")
        for window, key, least in (("fit", "fit", MIN_POSITIVES), ("calibration", "calibrate", MIN_POSITIVES),
                                   ("evaluation", "evaluate", MIN_POSITIVES // 2)):
            times = getattr(split, key)
            if key == "evaluate" and not times:
                continue
            part = by_time.reindex(times).fillna(0)
            pos, n = int(part["sum"].sum()), int(part["count"].sum())
            if min(pos, n - pos) < least:
                return (f"the {window} window {split.describe()[key]} holds {pos} converted and {n - pos} other "
                        f"lead snapshots (at least {least} of each are needed)")
        return None

    return missing


def _check_positives(snaps: pd.DataFrame, plan: Split) -> None:
    """Refuse a split whose windows hold too few leads of a class (NotEnoughHistory names them)."""
    missing = _enough(snaps)(plan)
    if missing:
        months = (max(plan.fit + plan.calibrate + plan.evaluate) - min(plan.fit)) / pd.Timedelta(days=30.44)
        raise NotEnoughHistory(f"{months:.1f} months of labelled snapshots", [plan.describe()["evaluate"]],
                               f"{missing}; the history may start before outcomes were recorded, so train with "
                               "--as-of later or on a longer export")


def _fit_models(snaps: pd.DataFrame, split: Split, spec: LeadFeatureSpec, cfg: TrainConfig, choice: Choice | None,
                only_chosen: bool = False, fallback: str = "lgbm", export: Export | None = None) -> dict[str, Any]:
    fit, cal = _rows(snaps, split.fit), _rows(snaps, split.calibrate)
    rungs = _rungs(spec, cfg, _lifetime(export, snaps, split, spec, cfg))
    if choice is None:  # no validation window: the current LightGBM (choice off, e.g. tuning: beside naive Bayes)
        keep = {fallback} if only_chosen else {"lgbm", "naive_bayes"} if not cfg.choose else {r.name for r in rungs}
        rungs = [r for r in rungs if r.name in keep]
        return {r.name: fit_candidate(r, fit[spec.feature_names], fit["label"].to_numpy(),
                                      cal[spec.feature_names], cal["label"].to_numpy()) for r in rungs}
    return fit_every(rungs, choice, fit, cal, spec.feature_names, split.cutoff, only_chosen=only_chosen)


def _fallback(models: dict[str, Any], cal: pd.DataFrame, cols: list[str], roles: dict[str, str]) -> str:
    """With no room for a validation window, the baseline (naive Bayes or the logistic regression) with the
    lower log loss on the calibration window. Neither learned from it but for its Platt scaling (and the
    logistic regression's strength); LightGBM stopped early on it, so it is not chosen there. The plain
    models are the safe choice on a small, young export (LightGBM on a few snapshot times scored a
    constant on Maven CRM)."""
    y = cal["label"].to_numpy()
    losses = {n: classification_metrics(y, m.predict_proba(cal[cols]))["log_loss"]
              for n, m in models.items() if roles.get(n) == "baseline"}
    return min(losses, key=losses.get)


def _choose(snaps: pd.DataFrame, split: Split, spec: LeadFeatureSpec, cfg: TrainConfig,
            export: Export | None = None) -> tuple[Choice | None, str, Split | None]:
    """The candidate, history and weighting chosen on the validation split before ``split``'s evaluation
    window, and that split (None, and why, when the history has no room for one)."""
    if not cfg.choose:
        return None, "off", None
    try:
        val = cfg.fold.validation(sorted(set(snaps["as_of"])), split, _enough(snaps))
    except NotEnoughHistory as exc:
        return None, f"no validation window ({exc.missing})", None
    fit, cal, ev = (_rows(snaps, t) for t in (val.fit, val.calibrate, val.evaluate))
    # groups: a lead open for weeks is one observation, not several
    choice = choose_on_validation(_rungs(spec, cfg, _lifetime(export, snaps, val, spec, cfg)), fit, cal, ev,
                                  spec.feature_names, val.cutoff,
                                  groups="lead_id", refit=cfg.choose_refit)
    return choice, val.describe()["evaluate"], val


# ---------------------------------------------------------------- calibration under a drifting base rate
def recent_leads(export: Export, recent: pd.DataFrame, calibrated: pd.DataFrame, cutoff: pd.Timestamp,
                 horizon_days: int, cols: list[str]) -> RecentOutcomes | None:
    """What the lead snapshots ``recent`` (times in the last horizon before ``cutoff``, after the calibration
    window; their labels are not known yet) say about the conversion rate at ``cutoff``: the conversions
    of them decided by ``cutoff``, against the share of a decided window's conversions (those of the
    snapshots ``calibrated``) that come this soon after the snapshot (:class:`models.candidates.RecentOutcomes`).
    Only conversions before ``cutoff`` are read."""
    h = pd.Timedelta(days=horizon_days)
    conv = export.leads.drop_duplicates("lead_id", keep="last").set_index("lead_id")["converted_at"]
    conv = conv.where(conv < cutoff)
    pos = calibrated[calibrated["label"] == 1]
    delays = (conv.reindex(pos["lead_id"]).to_numpy() - pos["as_of"].to_numpy()) / pd.Timedelta(days=1)
    delays = np.asarray(delays, dtype=float)
    at = recent["as_of"]
    follow_up = ((cutoff - at).clip(upper=h) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    converted = conv.reindex(recent["lead_id"]).set_axis(recent.index)
    decided = ((converted >= at) & (converted < (at + h).clip(upper=cutoff))).to_numpy(dtype=bool)
    return recent_outcomes(recent[cols], follow_up, decided, delays[np.isfinite(delays)], recent["lead_id"])


def _recent_rows(snaps: pd.DataFrame, split: Split) -> pd.DataFrame:
    """The snapshots after ``split``'s calibration window up to its cutoff (labels not yet known there)."""
    return snaps[(snaps["as_of"] > split.calibrate[-1]) & (snaps["as_of"] <= split.cutoff)]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _decide_recent(export: Export, snaps: pd.DataFrame, spec: LeadFeatureSpec, cfg: TrainConfig, split: Split,
                   val: Split | None, choice: Choice | None) -> tuple[bool, str]:
    """Whether models are moved to the recent rate (:func:`recent_leads`) and why. With a validation window:
    when that lowers the validation log loss of the candidate chosen there (moved to the rate of the leads
    in the horizon before the validation window). Without one: when the recent rate differs sharply from
    the calibration window's (:func:`models.candidates.base_rate_shift`, over distinct leads)."""
    cols, h = spec.feature_names, cfg.horizon_days
    if not cfg.choose:
        return False, "off (choice off)"
    if val is not None and choice is not None and choice.model is not None:
        recent = recent_leads(export, _recent_rows(snaps, val), _rows(snaps, val.calibrate), val.cutoff, h, cols)
        if recent is None:
            return False, "off: too few conversions decided in the horizon before the validation window"
        ev = _rows(snaps, val.evaluate)
        y, p = ev["label"].to_numpy(), choice.model.predict_proba(ev[cols])
        b = recent_rate_shift(choice.model, recent)
        before = classification_metrics(y, p)["log_loss"]
        after = classification_metrics(y, 1 / (1 + np.exp(-(_logit(p) + b))))["log_loss"]
        on = after < before - TIE
        return on, (f"{'on' if on else 'off'}: validation log loss {before:.4f} as calibrated, {after:.4f} moved "
                    f"{b:+.3f} log-odds to the recent rate")
    recent = recent_leads(export, _recent_rows(snaps, split), _rows(snaps, split.calibrate), split.cutoff, h, cols)
    if recent is None:
        return False, "off: no validation window, and too few conversions decided in the last horizon"
    cal = _rows(snaps, split.calibrate)
    n, n_recent = cal["lead_id"].nunique(), recent.effective_n
    sharp = base_rate_shift(cal.loc[cal["label"] == 1, "lead_id"].nunique(), n,
                            min(n_recent, round(recent.rate * n_recent)), n_recent)
    if sharp is None:
        return False, f"off: no validation window, and the recent rate {recent.rate:.1%} is close to calibration's"
    return True, f"on: no validation window, and {sharp.replace('in training', 'in calibration')} recently"


#: The largest move to the recent rate, in log-odds (odds x20): beyond it the recent leads do not look
#: like the calibration window's to the model (a field that reads differently on open leads, such as one
#: filled in at the outcome), and moving would only make every score extreme; the model is left as calibrated.
MAX_RATE_SHIFT = 3.0


def _move_to_recent(models: dict[str, Any], recent: RecentOutcomes | None) -> dict[str, float]:
    """Each model's calibrated intercept moved to the recent rate (the blend last: it reads its members);
    the shift of each, or the one refused (beyond :data:`MAX_RATE_SHIFT`, not applied) under ``"<name> refused"``."""
    if recent is None:
        return {}
    shifts = {}
    for name in sorted(models, key=lambda n: n == "blend"):
        b = recent_rate_shift(models[name], recent)
        if abs(b) > MAX_RATE_SHIFT:
            shifts[f"{name} refused"] = b
            continue
        shifts[name] = b
        models[name].calib_intercept_ += b
    return shifts


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


def _final_recent(export: Export, snaps: pd.DataFrame, times: list[pd.Timestamp], spec: LeadFeatureSpec,
                  cfg: TrainConfig, cutoff: pd.Timestamp, final_plan: Split) -> RecentOutcomes | None:
    """:func:`recent_leads` for the final model: the leads open at the snapshot times of the last horizon
    before ``cutoff`` (after the labelled ones, same step), against its calibration window."""
    step = pd.Timedelta(days=cfg.snapshot_every_days)
    later = [times[-1] + k * step for k in range(1, cfg.horizon_days // cfg.snapshot_every_days + 2)]
    later = [t for t in later if t <= cutoff]
    if not later:
        return None
    try:
        recent = lead_snapshots(export, later, spec)
    except ValueError:  # no lead open at those times
        return None
    return recent_leads(export, recent, _rows(snaps, final_plan.calibrate), cutoff, cfg.horizon_days,
                        spec.feature_names)


def _final_scorer(export: Export, snaps: pd.DataFrame, times: list[pd.Timestamp], spec: LeadFeatureSpec,
                  cfg: TrainConfig, cutoff: pd.Timestamp, split: Split, fold_models: LeadModels,
                  ) -> tuple[LeadScorer, dict[str, object]]:
    """The registered model: the chosen candidate refitted on the fold's final split (its calibration window
    as long as the evaluation split's), with the context of ``cutoff``; its intercept moved to the recent
    rate (:func:`recent_leads` of the last horizon before ``cutoff``) when the fold's models were."""
    cols = spec.feature_names
    final_plan = cfg.fold.final(times, calibrate=split.calibrate_days or None)
    choice = fold_models.choice
    models = _fit_models(snaps, final_plan, spec, cfg, choice, only_chosen=True, fallback=fold_models.fallback,
                         export=export)
    final = models[fold_models.name]
    chosen: dict[str, object] = {"recent_rate": fold_models.recent_why}
    limit = next((m.lifetime_ for m in [final, *getattr(final, "members", [])] if m.lifetime_ is not None), None)
    if limit is not None:
        chosen["age_limit"] = limit.describe()
    recent = _final_recent(export, snaps, times, spec, cfg, cutoff, final_plan) if fold_models.recent else None
    if recent is not None:
        moved = _move_to_recent({"final": final}, recent)
        if "final" in moved:
            chosen["recent_rate_shift"] = round(moved["final"], 4)
        else:
            chosen["recent_rate_shift_refused"] = round(moved["final refused"], 4)
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
            "candidate": fold_models.name,
        },
    ), chosen


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
        least = max(MIN_WINDOW_DAYS, 2 * recipe.snapshot_every_days)
        fold = TimeFold(horizon=recipe.horizon_days, evaluate=evaluate, calibrate=recipe.calib_days,
                        min_evaluate=least, min_calibrate=least)
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


class LeadQuality:
    """The lead_quality :class:`~models.tasks.TaskDefinition`: P(a lead converts within the horizon)."""

    task = Task.LEAD_QUALITY
    #: the better of naive Bayes and the logistic regression on the evaluation window (its name: param baseline_name)
    baseline = "baseline"
    floor_metric = "roc_auc"
    tuning = ProtocolTuning(Task.LEAD_QUALITY, _tuning_params, (10, 1000))
    comparison = LeadComparison()
    drift_population = "leads open"

    def config(self, *, horizon_days: int | None, snapshot_every_days: int, seed: int,
               exclude: tuple[str, ...] = ()) -> TrainConfig:
        return TrainConfig(horizon_days=horizon_days, snapshot_every_days=snapshot_every_days, exclude=exclude,
                           seed=seed)

    def population(self, export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
        return open_leads(export.leads, as_of)

    def snapshots(self, export: Export, cutoff: pd.Timestamp, config: TrainConfig, *, progress: bool = False,
                  outcomes: pd.DataFrame | None = None) -> Snapshots:
        h = pd.Timedelta(days=config.horizon_days)
        if export.leads.empty:
            raise NothingToLearnFrom("lead_quality needs leads open at the snapshot times", "no leads")
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

    def decision_durations(self, export: Export, cutoff: pd.Timestamp) -> pd.Series:
        """Created to converted, of the leads converted before ``cutoff`` (indexed by creation time).

        The label is "converted within the horizon", so the horizon is to hold most conversions.
        Disqualifications are left out: CRMs often disqualify in bulk clean-ups of stale leads (the
        sample after a year), which would say more about the clean-up than about when leads decide."""
        if export.leads.empty:  # a deals-only export: say so, not "0 decided records"
            raise NothingToLearnFrom("lead_quality needs leads", "no leads")
        return decision_times(export.leads, "converted_at", cutoff)

    def enough(self, snapshots: Snapshots, config: TrainConfig | None = None) -> Any:
        """What a split of the snapshots is missing (leads of each class per window), for the fold to shrink."""
        return _enough(snapshots.frame)

    def fit(self, export: Export, snapshots: Snapshots, split: Split, config: TrainConfig) -> LeadModels:
        """The candidates chosen on the validation window, every one fitted on the split's fit window."""
        snaps, spec = snapshots.frame, snapshots.spec
        _check_positives(snaps, split)
        choice, validation, val = _choose(snaps, split, spec, config, export)
        models = _fit_models(snaps, split, spec, config, choice, export=export)
        roles = {r.name: r.role for r in _rungs(spec, config)} | {"blend": "model"}
        fallback = "lgbm"
        if config.choose and choice is None:
            fallback = _fallback(models, _rows(snaps, split.calibrate), spec.feature_names, roles)
            validation = f"{validation}: the better baseline on the calibration window, {fallback}"
        on, why = _decide_recent(export, snaps, spec, config, split, val, choice)
        shifts = _move_to_recent(models, recent_leads(export, _recent_rows(snaps, split), _rows(snaps, split.calibrate),
                                                      split.cutoff, config.horizon_days, spec.feature_names)
                                 if on else None)
        return LeadModels(models, choice, roles, validation, fallback, on, why, shifts)

    def evaluate(self, model: LeadModels, snapshots: Snapshots, split: Split, config: TrainConfig) -> Evaluation:
        """Every candidate on the evaluation window; the chosen one against the better baseline."""
        snaps, cols = snapshots.frame, snapshots.spec.feature_names
        ev = _rows(snaps, split.evaluate)
        y_ev = ev["label"].to_numpy()
        preds = {name: m.predict_proba(ev[cols]) for name, m in model.models.items()}
        metrics = {name: classification_metrics(y_ev, p) for name, p in preds.items()}
        baselines = [n for n in metrics if model.roles.get(n) == "baseline"]
        best_baseline = min(baselines, key=lambda n: metrics[n]["log_loss"])
        chosen = model.name
        frame = ev[["lead_id", "as_of", "label"]].assign(
            p_model=preds[chosen], **{f"p_{n}": p for n, p in preds.items()})
        return Evaluation(metrics[chosen], metrics[best_baseline], frame,
                          extra={"models": model, "metrics": metrics, "baseline_name": best_baseline})

    def final(self, export: Export, snapshots: Snapshots, split: Split, evaluation: Evaluation,
              config: TrainConfig) -> LeadTrainResult:
        fold_models, metrics = evaluation.extra["models"], evaluation.extra["metrics"]
        best_baseline = evaluation.extra["baseline_name"]
        snaps = snapshots.frame
        train_rows, ev = _rows(snaps, split.fit + split.calibrate), _rows(snaps, split.evaluate)
        # snapshot rates, with the distinct leads as the sample sizes (a lead's rows are not independent)
        n_train, n_ev = train_rows["lead_id"].nunique(), ev["lead_id"].nunique()
        shift = base_rate_shift(round(train_rows["label"].mean() * n_train), n_train, round(ev["label"].mean() * n_ev),
                                n_ev)
        scorer, chosen = _final_scorer(export, snaps, snapshots.times, snapshots.spec, config, snapshots.cutoff, split,
                                       fold_models)
        labels = snapshots.outcome_labels
        scorer.metadata["outcome_labels"] = labels.__dict__ if labels else None
        result = LeadTrainResult(scorer=scorer, metrics=evaluation.metrics, baseline_metrics=evaluation.baseline,
                                 plan=split, windows={**split.describe(), "validate": fold_models.validation},
                                 evaluation=evaluation.frame, snapshots=snaps,
                                 candidates=candidate_table(fold_models.choice, fold_models.roles,
                                                           fold_models.name, metrics))
        choice = fold_models.choice
        if choice is not None:
            result.calibration_grid = choice.calibration.grid
        unchosen = {"candidate": fold_models.name, "chosen_on": "the calibration window (no room for a validation window)"
                    if config.choose else "no window (choice off)"}
        calibration = choice.calibration if choice else Calibration()
        result.chosen = {**(choice.params() if choice else {**unchosen, **calibration.params()}),
                         "baseline_name": best_baseline, "evaluate_days": split.evaluate_days,
                         "calibrate_days": split.calibrate_days,
                         "calibration_window_days": round(min(calibration.share, 1.0) * split.calibrate_days),
                         **chosen}
        if "recent_rate_shift_refused" in chosen:
            result.warnings.append(
                f"the recent conversions would move the registered model by {chosen['recent_rate_shift_refused']:+.3f} "
                f"log-odds, beyond +/-{MAX_RATE_SHIFT:g}: the leads open now do not look like the calibration window's "
                "to it (often a field that reads differently on open leads, filled in at the outcome); left as "
                "calibrated")
        if shift or "recent_rate_shift" in chosen:
            moved = (f"the models' intercepts were moved to the recent rate (the registered one's by "
                     f"{chosen['recent_rate_shift']:+.3f} log-odds), estimated from the conversions decided so far "
                     "of the leads open in the last horizon" if "recent_rate_shift" in chosen else
                     "the evaluation window's models were moved to the recent rate, the registered one was left as "
                     "calibrated (above)" if "recent_rate_shift_refused" in chosen else
                     f"not corrected for ({fold_models.recent_why})")
            result.warnings.append(f"base-rate shift: {shift or 'the recent rate differs from calibration'}; {moved}")
        if split.evaluate_days < config.eval_days:
            result.warnings.append(f"short history: evaluation window {split.evaluate_days}d and calibration window "
                                   f"{split.calibrate_days}d (asked {config.eval_days}d and {config.calib_days}d); "
                                   f"{metrics[result.chosen['candidate']]['n']:.0f} evaluation rows, so the figures "
                                   "are less reliable")
        spec = snapshots.spec
        result.warnings += leak_warnings(train_rows, train_rows["label"].to_numpy(), ev, ev["label"].to_numpy(),
                                         stored_fields(spec), set(spec.categorical_features))
        note = reliability(evaluation.metrics, "distinct leads", n=ev["lead_id"].nunique(),
                           positives=ev.loc[ev["label"] == 1, "lead_id"].nunique())
        if note.small:
            result.warnings.append(note.warning())
        return result

    def run_params(self, result: TrainResult, config: TrainConfig) -> dict[str, object]:
        meta = result.scorer.metadata
        return {
            "horizon_days": config.horizon_days,
            "snapshot_every_days": config.snapshot_every_days,
            "snapshots": meta["snapshots"],
            "rows": meta["rows"],
            "n_rounds": getattr(result.scorer.classifier, "n_rounds_", 0),
            "calibration": getattr(result.scorer.classifier, "calibration_method_", "platt"),
            **{f"lgbm_{k}": v for k, v in {**DEFAULT_PARAMS, **config.params}.items()},
        }

    def write_report(self, result: TrainResult, config: TrainConfig, folder: Path) -> None:
        d = folder / "report"
        ev = result.evaluation
        baseline = str(result.chosen.get("baseline_name", "naive_bayes"))
        if result.candidates is not None:
            result.candidates.to_csv(d / "candidates.csv")
        grid = getattr(result, "calibration_grid", None)
        if grid is not None and not grid.empty:
            grid.to_csv(d / "calibration_choice.csv", index=False)
        calibration_plot(
            ev["label"].to_numpy(),
            {f"funnelcast ({result.chosen.get('candidate', 'lgbm')})": ev["p_model"].to_numpy(),
             f"best baseline ({baseline})": ev[f"p_{baseline}"].to_numpy()},
            str(d / "calibration.png"),
            title="Lead quality: calibration on the evaluation window",
        )
        snaps, cols = result.snapshots, result.scorer.spec.feature_names
        sample = snaps.sample(n=min(2000, len(snaps)), random_state=config.seed)[cols]
        shap_summary_plot(result.scorer.explain(sample), sample, str(d / "shap_summary.png"))

    def summary(self, result: TrainResult) -> str:
        """The candidates (chosen on the validation window) and their figures on the evaluation window."""
        table = result.candidates
        if table is None:
            m, b = result.metrics, result.baseline_metrics
            table = pd.DataFrame({"funnelcast": m, "baseline": b}).T[list(TABLE_METRICS)]
        cols = ["role", "chosen", "validation_log_loss", "roc_auc", "brier", "log_loss", "calibration_error"]
        shown = table[[c for c in cols if c in table]]
        with pd.option_context("display.width", 160):
            text = shown.round(4).to_string()
        ev = result.evaluation
        note = reliability(result.metrics, "distinct leads", n=ev["lead_id"].nunique(),
                           positives=ev.loc[ev["label"] == 1, "lead_id"].nunique())
        chosen = result.chosen
        calibration = (f"; calibration {chosen['calibration_method']} on the "
                       f"{'whole' if chosen['calibration_window'] == 'all' else chosen['calibration_window']} "
                       f"calibration window ({chosen['calibration_window_days']}d of {chosen['calibrate_days']}d)"
                       if "calibration_method" in chosen else "")
        if chosen.get("refit_on_calibration") == "yes":
            calibration += "; the models refitted on the calibration window too (chosen on validation)"
        return (f"validation window {result.windows.get('validate') or 'none'}, evaluation window "
                f"{result.windows['evaluate']}{calibration}\n{text}\n{note.describe()}")

    def score(self, scorer: LeadScorer, export: Export, as_of: pd.Timestamp) -> Scored:
        return Scored(score_open_leads(export, scorer, as_of), "leads")

    def drift_features(self, scorer: LeadScorer, export: Export, population: pd.DataFrame,
                       as_of: pd.Timestamp) -> tuple[pd.DataFrame, np.ndarray]:
        X = scorer.features(population, export.accounts, export.activities, as_of)
        return X, scorer.predict_proba(X)


LEAD_QUALITY = LeadQuality()
