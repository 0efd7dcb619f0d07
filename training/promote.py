"""Champion / challenger: move ``@champion`` only when the challenger is better on the same window.

Every ``train`` registers a version as ``@challenger`` (a first model becomes ``@champion``
directly). :func:`promote` compares the two on the **most recent labelled window** of an export:
the evaluation window of the time fold (the latest ``evaluate`` days of snapshot times whose
horizon ended by the export time), and what happened within the horizon. One code path for
every task (:func:`compare`); what is a task's own (its recipe, its window's rows, how a model
is refitted and scored) is its :class:`Comparison` in :data:`COMPARISONS`.

Both models must be judged on rows neither has learned from, with the same information:

* **registered** mode: when neither model learned from the window (lead_quality and
  stage_conversion: both training cutoffs at or before its start; high_value: none of its
  customers complete at either cutoff), the registered models themselves score it (exactly
  what they would have served);
* **refit** mode: otherwise each model's *recipe* (its training config: parameters,
  exclusions, seed) is refitted on the history before the window and scores it. When both
  recipes are identical the challenger differs only by newer data, which a window before
  its cutoff cannot show: it is promoted as the newer fit of the same recipe, and says so.

The challenger is promoted when it is **better by a margin** (ROC AUC up by at least
``auc`` or Brier down by at least ``brier`` relative), **not worse** on the other one
(AUC not down by more than ``auc``, Brier not up) and **not worse calibrated** (calibration
error up by at most ``calibration``). What is compared is each task's own: lead_quality,
"converts within the horizon"; stage_conversion, "won within the horizon" (next-stage and
decided-deal win metrics alongside) and, as a timing model, also the **forecast's WAPE by
owner** on the window (expected bookings of the open pipeline within the horizon against what
it booked; see :func:`owner_forecast_accuracy`): the challenger must not be worse by more
than ``wape``; high_value, P(high value) on the latest customers. The figures and the decision
go to MLflow (a ``promote`` run; tags on the challenger's version) and are printed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.contract import Export
from features.errors import FunnelcastError, ModelNotAvailable
from models.folds import TimeFold
from models.metrics import classification_metrics
from models.registry import load_scorer
from models.tasks import Task
from training.backtest import accuracy
from training.pipeline import experiment_id

COMPARED = ("roc_auc", "brier", "calibration_error", "log_loss", "pr_auc", "top_decile_capture", "n", "positive_rate",
            "wape", "bias")


@dataclass(frozen=True)
class Margins:
    auc: float = 0.002
    brier: float = 0.01
    calibration: float = 0.005
    wape: float = 0.02  # stage_conversion (FORECAST_CHECK): largest increase of the forecast's WAPE by owner accepted


@dataclass
class Decision:
    task: str
    promote: bool
    reason: str
    mode: str
    window: str
    champion_version: str | None
    challenger_version: str | None
    champion: dict[str, float] = field(default_factory=dict)
    challenger: dict[str, float] = field(default_factory=dict)
    margins: Margins = field(default_factory=Margins)
    run_id: str | None = None

    def table(self) -> pd.DataFrame:
        rows = [r for r in COMPARED if r in self.champion or r in self.challenger]
        out = pd.DataFrame(
            {
                f"champion v{self.champion_version}": [self.champion.get(r, np.nan) for r in rows],
                f"challenger v{self.challenger_version}": [self.challenger.get(r, np.nan) for r in rows],
            },
            index=rows,
        )
        out["difference"] = out.iloc[:, 1] - out.iloc[:, 0]
        return out


@dataclass(frozen=True)
class Check:
    """A task's own check on top of the rule: the challenger's ``metric`` may not rise by more than the
    margin named ``tolerance`` (a :class:`Margins` field); ``what`` names it in the reason."""

    metric: str
    tolerance: str
    what: str


#: stage_conversion is a timing model: its forecast by owner must not get worse.
FORECAST_CHECK = Check("wape", "wape", "forecast WAPE by owner")


def decide(champion: dict[str, float], challenger: dict[str, float], margins: Margins,
           checks: tuple[Check, ...] = ()) -> tuple[bool, str]:
    """The promotion rule on two metric dicts, with the task's ``checks`` (see the module docstring)."""
    d_auc = challenger["roc_auc"] - champion["roc_auc"]
    brier_change = (challenger["brier"] - champion["brier"]) / champion["brier"]
    d_cal = challenger["calibration_error"] - champion["calibration_error"]
    rises = {c: challenger[c.metric] - champion[c.metric] for c in checks}
    figures = ", ".join([f"AUC {d_auc:+.4f}", f"Brier {brier_change:+.2%}", f"calibration error {d_cal:+.4f}",
                         *(f"{c.what} {d:+.4f}" for c, d in rises.items())])
    if not (np.isfinite(d_auc) and np.isfinite(brier_change)):
        return False, f"metrics undefined on the window ({figures}): one outcome class only"
    if d_cal > margins.calibration:
        return False, f"worse calibrated ({figures}; tolerance {margins.calibration})"
    for c, d in rises.items():
        if d > getattr(margins, c.tolerance):
            return False, f"worse {c.what} ({figures}; tolerance {getattr(margins, c.tolerance)})"
    if d_auc < -margins.auc or brier_change > 0:
        return False, f"worse on AUC or Brier ({figures})"
    if d_auc >= margins.auc or brier_change <= -margins.brier:
        return True, f"better by the margin ({figures}; margins AUC +{margins.auc}, Brier -{margins.brier:.0%})"
    return False, f"not better by the margin ({figures}; margins AUC +{margins.auc}, Brier -{margins.brier:.0%})"


@dataclass(frozen=True)
class Window:
    """The rows both models are scored on: ``start`` is the first snapshot time (a refit learns
    from before it), ``label`` how it is printed; ``data`` is what the task's comparison needs."""

    start: pd.Timestamp
    label: str
    data: Any


class Comparison(Protocol):
    """What promotion needs from a task (see the module docstring)."""

    task: Task
    #: The task's checks on top of the promotion rule.
    checks: tuple[Check, ...]

    def recipe(self, scorer: Any) -> Any:
        """The training config a registered scorer was built with (defaults for older models)."""
        ...

    def window(self, export: Export, recipe: Any, evaluate: str | int | pd.Timedelta) -> Window:
        """The latest labelled window of ``evaluate`` days at the export time."""
        ...

    def learned_from(self, export: Export, model: Any, window: Window) -> bool:
        """Whether ``model`` learned from any row of ``window`` (then only refits can be compared)."""
        ...

    def refit(self, export: Export, recipe: Any, window: Window) -> Any:
        """``recipe`` fitted on the history before ``window``."""
        ...

    def evaluate(self, export: Export, model: Any, window: Window) -> dict[str, float]:
        """``model``'s metrics on ``window`` (``roc_auc``, ``brier``, ``calibration_error``, ...)."""
        ...


def _times(window: list[pd.Timestamp], what: str = "snapshots", n: int | None = None) -> str:
    return f"{window[0].date()}..{window[-1].date()} ({len(window) if n is None else n} {what})"


def _config_from(scorer: Any, config: type, **fallback: Any) -> Any:
    """The ``config`` dataclass logged with ``scorer`` (``train_config`` metadata), else ``config(**fallback)``."""
    meta = scorer.metadata if isinstance(getattr(scorer, "metadata", None), dict) else {}
    cfg = meta.get("train_config")
    if not isinstance(cfg, dict):
        return config(**fallback)
    known = {k: v for k, v in cfg.items() if k in config.__dataclass_fields__}
    if "exclude" in known:
        known["exclude"] = tuple(known["exclude"])
    return config(**known)


class _LeadComparison:
    """lead_quality: every lead open at each snapshot time of the window, converted within the horizon."""

    task = Task.LEAD_QUALITY
    checks: tuple[Check, ...] = ()

    def recipe(self, scorer: Any) -> Any:
        from training.train import TrainConfig

        return _config_from(scorer, TrainConfig, horizon_days=scorer.spec.horizon_days,
                            exclude=tuple(scorer.spec.excluded))

    def window(self, export: Export, recipe: Any, evaluate: str | int | pd.Timedelta) -> Window:
        from features.leads import snapshot_times

        start = export.leads["created_at"].min() + pd.Timedelta(days=recipe.warmup_days)
        times = snapshot_times(start, export.exported_at - pd.Timedelta(days=recipe.horizon_days),
                               recipe.snapshot_every_days)
        fold = TimeFold(horizon=recipe.horizon_days, evaluate=evaluate, calibrate=recipe.calib_days)
        window = fold.split(times, export.exported_at).evaluate
        return Window(window[0], _times(window), window)

    def learned_from(self, export: Export, model: Any, window: Window) -> bool:
        return model.trained_until > window.start

    def refit(self, export: Export, recipe: Any, window: Window) -> Any:
        from training.train import build_lead_model

        return build_lead_model(export, recipe, window.start).scorer

    def evaluate(self, export: Export, model: Any, window: Window) -> dict[str, float]:
        preds = window_predictions(model, export, window.data)
        return classification_metrics(preds["label"].to_numpy(), preds["p"].to_numpy())


def window_predictions(scorer: Any, export: Export, times: list[pd.Timestamp]) -> pd.DataFrame:
    """``lead_id, as_of, label, p``: the scorer on every lead open at each time of the window."""
    from features.leads import converted_within_horizon
    from features.pit import open_leads

    parts = []
    for t in times:
        leads = open_leads(export.leads, t)
        if leads.empty:
            continue
        X = scorer.features(leads, export.accounts, export.activities, t)
        label = converted_within_horizon(leads, t, scorer.spec.horizon_days).reindex(X.index)
        parts.append(pd.DataFrame({"lead_id": X.index, "as_of": t, "label": label.to_numpy(), "p": scorer.predict_proba(X)}))
    return pd.concat(parts, ignore_index=True)


class _DealComparison:
    """stage_conversion: the deal snapshots of the window, on "won within the horizon" (plain metric
    names, as for leads), the next-stage and decided-deal win metrics alongside (``next_*``,
    ``win_*``) and the forecast's WAPE by owner. A refit is fitted with its labels censored at the
    window's start, the way ``training.deals`` evaluates."""

    task = Task.STAGE_CONVERSION
    checks = (FORECAST_CHECK,)

    def recipe(self, scorer: Any) -> Any:
        from training.deals import DealTrainConfig

        return _config_from(scorer, DealTrainConfig, horizon_days=scorer.spec.horizon_days)

    def window(self, export: Export, recipe: Any, evaluate: str | int | pd.Timedelta) -> Window:
        from training.deals import build_snapshots

        spec, snaps = build_snapshots(export, export.exported_at, recipe)
        fold = TimeFold(horizon=recipe.horizon_days, evaluate=evaluate, calibrate=recipe.calib_days)
        window = fold.split(snaps["as_of"], export.exported_at).evaluate
        return Window(window[0], _times(window), (spec, snaps, window))

    def learned_from(self, export: Export, model: Any, window: Window) -> bool:
        return model.trained_until > window.start

    def refit(self, export: Export, recipe: Any, window: Window) -> Any:
        from features.deals import DealFeatureSpec
        from training.deals import build_snapshots, fit_deal_scorer

        s = DealFeatureSpec.from_export(export, horizon_days=recipe.horizon_days, exclude=recipe.exclude,
                                        as_of=window.start)
        _, sn = build_snapshots(export, export.exported_at, recipe, spec=s)
        return fit_deal_scorer(export, sn, s, window.start, recipe, surrogate=False)

    def evaluate(self, export: Export, model: Any, window: Window) -> dict[str, float]:
        from training.deals import build_snapshots, deal_metrics, evaluation_frame

        spec, snaps, times = window.data
        if model.spec.feature_names != spec.feature_names:  # each model's own features (a refit or registered spec may differ)
            _, snaps = build_snapshots(export, export.exported_at, self.recipe(model), spec=model.spec)
        rows = snaps[snaps["as_of"].isin(times)]
        ev = evaluation_frame(model, rows, export.exported_at)
        metrics, _ = deal_metrics(ev)
        plain = {k.removeprefix("win_h_"): v for k, v in metrics.items() if k.startswith("win_h_")}
        return {**plain, **{k: v for k, v in metrics.items() if not k.startswith("win_h_")},
                **owner_forecast_accuracy(export, ev, rows["won_amount"].to_numpy())}


def owner_forecast_accuracy(export: Export, ev: pd.DataFrame, won_amount: np.ndarray) -> dict[str, float]:
    """The forecast's accuracy by owner on an evaluation frame of deal snapshots (``ev`` from
    ``training.deals.evaluation_frame``; ``won_amount`` of the same rows, as the export knows it).

    At each snapshot time of the window and for each owner: the expected bookings of the open
    pipeline within the horizon (sum of P(won within the horizon) x amount) against what those
    deals booked within it (the won amount of the deals won within the horizon, as in the
    forecast backtest). ``wape`` = sum |expected - booked| / sum booked over every (time, owner),
    ``bias`` = sum (expected - booked) / sum booked. Deals created later are left out: their
    part of the forecast does not depend on the deal model, so it cannot tell two models apart.
    """
    from models.forecast import group_keys

    opps = export.opportunities.drop_duplicates("opportunity_id").set_index("opportunity_id")
    owner = group_keys(opps.reindex(ev["opportunity_id"].to_numpy()), export, "owner_id").to_numpy()
    booked = np.where(ev["won_within_horizon"].to_numpy() == 1, np.nan_to_num(np.asarray(won_amount, dtype=float)), 0.0)
    expected = ev["p_win_within_horizon"].to_numpy() * np.nan_to_num(ev["amount_filled"].to_numpy(dtype=float))
    per = pd.DataFrame({"as_of": ev["as_of"].to_numpy(), "owner": owner, "expected": expected, "booked": booked})
    per = per.groupby(["as_of", "owner"], sort=True)[["expected", "booked"]].sum()
    acc = accuracy(per["expected"].to_numpy(), per["booked"].to_numpy())
    return {"wape": acc["wape"], "bias": acc["bias"]}


class _AccountComparison:
    """high_value: the customers whose snapshot is in the window, among those whose value is complete
    at the export time; high value by the challenger recipe's quantile, the same for both models.
    A refit fits P(high value) on the customers before the window (the earlier two thirds fit, the
    later third calibrates)."""

    task = Task.HIGH_VALUE
    checks: tuple[Check, ...] = ()

    def recipe(self, scorer: Any) -> Any:
        from training.accounts import AccountConfig

        meta = scorer.metadata if isinstance(getattr(scorer, "metadata", None), dict) else {}
        return _config_from(scorer, AccountConfig, window_days=int(meta.get("window_days", 365)),
                            quantile=float(meta.get("quantile", 0.8)), early_days=scorer.spec.early_days)

    def window(self, export: Export, recipe: Any, evaluate: str | int | pd.Timedelta) -> Window:
        from features.customers import AccountFeatureSpec, account_snapshots

        spec = AccountFeatureSpec.from_export(export, early_days=recipe.early_days, window_days=recipe.window_days)
        snaps, threshold = account_snapshots(export, export.exported_at, spec, quantile=recipe.quantile)
        # one snapshot per customer, each value complete at the export: a day apart is enough between windows
        times = TimeFold(horizon="1d", evaluate=evaluate).split(snaps["as_of"]).evaluate
        rows = snaps[snaps["as_of"].isin(times)]
        if len(rows) < 20 or rows["label"].nunique() < 2:
            raise FunnelcastError(
                f"only {len(rows)} customer(s) ({int(rows['label'].sum())} high value) have their snapshot in "
                f"{_times(times, 'snapshot times')}: too few to compare the models; pass a longer --evaluate"
            )
        return Window(times[0], _times(times, "customers", len(rows)),
                      (spec, snaps, threshold, recipe.window_days))

    def learned_from(self, export: Export, model: Any, window: Window) -> bool:
        from features.customers import customer_value

        _, snaps, _, window_days = window.data
        ids = snaps.loc[snaps["as_of"] >= window.start, "account_id"]
        done = customer_value(export.opportunities, model.trained_until, window_days)
        return bool(done.index[done["complete"]].isin(list(ids)).any())

    def refit(self, export: Export, recipe: Any, window: Window) -> Any:
        from training.accounts import fit_high_value_classifier

        spec, snaps, _, _ = window.data
        return fit_high_value_classifier(snaps[snaps["as_of"] < window.start], spec, recipe)

    def evaluate(self, export: Export, model: Any, window: Window) -> dict[str, float]:
        from features.customers import account_snapshots

        spec, snaps, threshold, _ = window.data
        own = getattr(model, "spec", spec)  # a refit is a classifier on the window's features
        if own.feature_names != spec.feature_names:
            snaps = account_snapshots(export, export.exported_at, own, threshold=threshold)[0]
        rows = snaps[snaps["as_of"] >= window.start]
        return classification_metrics(rows["label"].to_numpy(), model.predict_proba(rows[own.feature_names]))


#: What each task gives promotion.
COMPARISONS: dict[Task, Comparison] = {c.task: c for c in (_LeadComparison(), _DealComparison(), _AccountComparison())}


@dataclass
class Compared:
    """Champion and challenger on the same window: ``same`` when their recipes (hence refits) are equal."""

    mode: str
    window: str
    champion: dict[str, float]
    challenger: dict[str, float]
    same: bool


def compare(task: Task | str, export: Export, champ: Any, chall: Any, evaluate: str | int | pd.Timedelta = "91d") -> Compared:
    """Champion vs challenger of ``task`` on the latest labelled window of ``evaluate`` days: the
    registered models when neither learned from it, else their recipes refitted before it."""
    c = COMPARISONS[Task(task)]
    r_champ, r_chall = c.recipe(champ), c.recipe(chall)
    window = c.window(export, r_chall, evaluate)
    same = False
    if not (c.learned_from(export, champ, window) or c.learned_from(export, chall, window)):
        mode, models = "registered", (champ, chall)
    else:
        mode, same = "refit", asdict(r_champ) == asdict(r_chall)
        fit_champ = c.refit(export, r_champ, window)
        models = (fit_champ, fit_champ if same else c.refit(export, r_chall, window))
    m_champ = c.evaluate(export, models[0], window)
    m_chall = m_champ if models[1] is models[0] else c.evaluate(export, models[1], window)
    return Compared(mode, window.label, m_champ, m_chall, same)


def _version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def promote(
    export: Export,
    client: MlflowClient,
    *,
    task: Task | str = Task.LEAD_QUALITY,
    experiment: str = "funnelcast",
    evaluate: str | int | pd.Timedelta = "91d",
    margins: Margins | None = None,
    champion_alias: str = "champion",
    challenger_alias: str = "challenger",
    dry_run: bool = False,
) -> Decision:
    """Compare ``@challenger`` with ``@champion`` on the latest labelled window; move the alias if it wins."""
    task = Task(task).value
    margins = margins or Margins()
    champ_v, chall_v = _version(client, task, champion_alias), _version(client, task, challenger_alias)
    if chall_v is None:
        raise ModelNotAvailable(task, f"no version has the alias {challenger_alias!r}: run `funnelcast train` first")
    if champ_v is None or champ_v == chall_v:
        reason = "no champion yet: the challenger becomes champion" if champ_v is None else "the challenger is the champion already"
        decision = Decision(task, champ_v is None, reason, "none", "", champ_v, chall_v, margins=margins)
    else:
        champ = load_scorer(client, task, champion_alias).scorer
        chall = load_scorer(client, task, challenger_alias).scorer
        cmp = compare(task, export, champ, chall, evaluate)
        if cmp.same:
            newer = chall.trained_until > champ.trained_until
            ok, reason = newer, (
                "same recipe as the champion, trained on newer data (up to "
                f"{chall.trained_until.date()} vs {champ.trained_until.date()}): promoted as its refresh"
                if newer else "same recipe and no newer data than the champion: nothing to gain"
            )
        else:
            ok, reason = decide(cmp.champion, cmp.challenger, margins, COMPARISONS[Task(task)].checks)
        decision = Decision(task, ok, reason, cmp.mode, cmp.window, champ_v, chall_v, cmp.champion, cmp.challenger,
                            margins)
    decision.run_id = _log(client, decision, experiment)
    if decision.promote and not dry_run:
        if champ_v is not None:
            client.set_registered_model_alias(task, f"previous_{champion_alias}", champ_v)
        client.set_registered_model_alias(task, champion_alias, chall_v)
        client.delete_registered_model_alias(task, challenger_alias)
    return decision


def _log(client: MlflowClient, d: Decision, experiment: str) -> str:
    with mlflow.start_run(experiment_id=experiment_id(client, experiment), run_name=f"promote-{d.task}") as run:
        mlflow.set_tags({"task": d.task, "kind": "promotion", "decision": "promote" if d.promote else "keep"})
        mlflow.log_params(
            {
                "champion_version": d.champion_version,
                "challenger_version": d.challenger_version,
                "mode": d.mode,
                "window": d.window,
                "reason": d.reason[:500],
                **{f"margin_{k}": v for k, v in asdict(d.margins).items()},
            }
        )
        for who, metrics in (("champion", d.champion), ("challenger", d.challenger)):
            mlflow.log_metrics({f"{who}_{k}": v for k, v in metrics.items() if np.isfinite(v)})
    if d.challenger_version:
        client.set_model_version_tag(d.task, d.challenger_version, "promotion", "promoted" if d.promote else "kept challenger")
        client.set_model_version_tag(d.task, d.challenger_version, "promotion_reason", d.reason[:500])
    return run.info.run_id
