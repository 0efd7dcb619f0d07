"""Champion / challenger: move ``@champion`` only when the challenger is better on the same window.

Every ``train`` registers a version as ``@challenger`` (a first model becomes ``@champion``
directly). :func:`promote` compares the two on the **most recent labelled window** of an export:
the evaluation window of the time fold (the latest ``evaluate`` days of snapshot times whose
horizon ended by the export time), and what happened within the horizon. One code path for
every task (:func:`compare`); what is a task's own (its recipe, its window's rows, how a model
is refitted and scored) is its :class:`Comparison`, the ``comparison`` of its task definition.

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
it booked; see :func:`training.deals.owner_forecast_accuracy`): the challenger must not be worse by more
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
from features.errors import ModelNotAvailable
from models.registry import load_scorer
from models.tasks import Task

COMPARED = ("roc_auc", "brier", "calibration_error", "log_loss", "pr_auc", "top_decile_capture", "n", "positive_rate",
            "wape", "bias")


@dataclass(frozen=True)
class Margins:
    auc: float = 0.002
    brier: float = 0.01
    calibration: float = 0.005
    #: stage_conversion (``training.deals.FORECAST_CHECK``): largest increase of the forecast's WAPE by owner accepted
    wape: float = 0.02


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


#: How many standard errors below the best baseline a model's AUC must be to count as worse.
FLOOR_Z = 1.0


def auc_standard_error(auc: float, n: float, positive_rate: float) -> float:
    """The standard error of an ROC AUC from its value and the counts of positives and negatives
    (Hanley & McNeil, 1982), NaN when either class is absent. Snapshot rows repeat entities, so
    the rows are not all independent: the error is a lower bound and the floor, if anything, strict."""
    n1, n0 = n * positive_rate, n * (1 - positive_rate)
    if not (np.isfinite(auc) and n1 >= 1 and n0 >= 1):
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return float(np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) / (n1 * n0)))


#: An evaluation is "small data" when its ROC AUC's standard error exceeds this, or a class has fewer
#: entities than SMALL_CLASS: candidates closer than about twice the error cannot be told apart.
SMALL_SE, SMALL_CLASS = 0.025, 30


@dataclass(frozen=True)
class Reliability:
    """How reliable an evaluation window's ROC AUC is: its standard error from ``n`` independent entities."""

    auc: float
    se: float
    n: int
    positives: int
    entity: str

    @property
    def small(self) -> bool:
        return not np.isfinite(self.se) or self.se > SMALL_SE or min(self.positives, self.n - self.positives) < SMALL_CLASS

    def describe(self) -> str:
        return (f"ROC AUC {self.auc:.3f} +/- {self.se:.3f} (one standard error, Hanley-McNeil) from {self.n:,} "
                f"{self.entity}, {self.positives:,} positive" + (" (small data)" if self.small else ""))

    def warning(self) -> str:
        return (f"small data: the evaluation window holds {self.n:,} {self.entity} ({self.positives:,} positive); its "
                f"ROC AUC {self.auc:.3f} has a standard error of {self.se:.3f}, so models closer than about "
                f"{2 * self.se:.2f} cannot be told apart on it")


def reliability(metrics: dict[str, float], entity: str, n: int | None = None,
                positives: int | None = None) -> Reliability:
    """The :class:`Reliability` of ``metrics`` (``roc_auc``, ``positive_rate``, ``n``); ``n`` and ``positives``:
    the independent entities (and the positive ones) when the rows repeat them (snapshot rows of one lead)."""
    count = int(metrics.get("n", 0) if n is None else n)
    if positives is None:
        positives = int(round(count * np.nan_to_num(float(metrics.get("positive_rate", np.nan)))))
    auc = float(metrics.get("roc_auc", np.nan))
    rate = positives / count if count else float("nan")
    return Reliability(auc, auc_standard_error(auc, count, rate), count, int(positives), entity)


@dataclass(frozen=True)
class Floor:
    """The baseline floor of one model on its evaluation window (see :func:`floor`)."""

    metric: str
    window: str
    model: float
    baselines: dict[str, float]
    best: str | None
    allowance: float
    passed: bool

    def describe(self) -> str:
        if self.best is None:
            return f"no baseline figure of {self.metric} on the evaluation window {self.window}: nothing to hold the model to"
        others = ", ".join(f"{k} {v:.4f}" for k, v in sorted(self.baselines.items(), key=lambda kv: -kv[1]))
        verdict = "below" if not self.passed else "not below"
        return (f"{self.metric} on the evaluation window {self.window}: model {self.model:.4f}, baselines {others}; "
                f"{verdict} the best ({self.best}) by more than the noise allowance {self.allowance:.4f} "
                f"({FLOOR_Z:g} standard error of the model's AUC)")

    def metrics(self) -> dict[str, float]:
        """``floor_*`` MLflow metrics (``floor_passed`` 1/0)."""
        if self.best is None:
            return {"floor_model": self.model}
        return {"floor_model": self.model, "floor_baseline": self.baselines[self.best], "floor_allowance": self.allowance,
                "floor_passed": float(self.passed)}


def floor(metrics: dict[str, float], baselines: dict[str, dict[str, float]], metric: str, window: str) -> Floor:
    """The baseline floor: a model is **worse** than the best simple baseline when its ``metric``
    (an ROC AUC) on the evaluation window is below the best baseline's by more than ``FLOOR_Z``
    standard errors of its own AUC (:func:`auc_standard_error`, from the window's rows): a gap
    inside that is noise, not evidence. Read from figures only (a training result, or the run's
    logged metrics at promotion), so every task and every path applies the same rule."""
    prefix = metric[: -len("roc_auc")] if metric.endswith("roc_auc") else ""
    model = float(metrics.get(metric, np.nan))
    figures = {k: float(b[metric]) for k, b in baselines.items() if np.isfinite(b.get(metric, np.nan))}
    if not figures or not np.isfinite(model):
        return Floor(metric, window, model, figures, None, float("nan"), True)
    best = max(figures, key=figures.get)
    se = auc_standard_error(model, metrics.get(f"{prefix}n", np.nan), metrics.get(f"{prefix}positive_rate", np.nan))
    allowance = FLOOR_Z * se if np.isfinite(se) else 0.0
    return Floor(metric, window, model, figures, best, allowance, model >= figures[best] - allowance)


def logged_baselines(run_metrics: dict[str, float], metric: str) -> dict[str, dict[str, float]]:
    """The baselines' figures of ``metric`` in a training run's metrics (``baseline_<name>_<metric>``)."""
    out: dict[str, dict[str, float]] = {}
    for key, value in run_metrics.items():
        if key.startswith("baseline_") and key.endswith(f"_{metric}"):
            out[key[: -len(metric) - 1]] = {metric: value}
    return out


def run_floor(client: MlflowClient, task: str, version: str, metric: str) -> Floor | None:
    """The floor of a registered version from its training run's logged metrics (None: no run)."""
    mv = client.get_model_version(task, version)
    if not mv.run_id:
        return None
    run = client.get_run(mv.run_id)
    m = run.data.metrics
    evaluation = {k.removeprefix("eval_"): v for k, v in m.items() if k.startswith("eval_")}
    return floor(evaluation, logged_baselines(m, metric), metric, run.data.params.get("split_evaluate", "?"))


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


def window_label(window: list[pd.Timestamp], what: str = "snapshots", n: int | None = None) -> str:
    return f"{window[0].date()}..{window[-1].date()} ({len(window) if n is None else n} {what})"


def config_from(scorer: Any, config: type, **fallback: Any) -> Any:
    """The ``config`` dataclass logged with ``scorer`` (``train_config`` metadata), else ``config(**fallback)``."""
    meta = scorer.metadata if isinstance(getattr(scorer, "metadata", None), dict) else {}
    cfg = meta.get("train_config")
    if not isinstance(cfg, dict):
        return config(**fallback)
    known = {k: v for k, v in cfg.items() if k in config.__dataclass_fields__}
    if "exclude" in known:
        known["exclude"] = tuple(known["exclude"])
    return config(**known)


@dataclass
class Compared:
    """Champion and challenger on the same window: ``same`` when their recipes (hence refits) are equal."""

    mode: str
    window: str
    champion: dict[str, float]
    challenger: dict[str, float]
    same: bool


def task_comparison(task: Task | str) -> Comparison:
    """What ``task``'s definition gives promotion (its ``comparison``)."""
    from training.tasks import task_definition

    return task_definition(task).comparison


def compare(task: Task | str, export: Export, champ: Any, chall: Any, evaluate: str | int | pd.Timedelta = "91d") -> Compared:
    """Champion vs challenger of ``task`` on the latest labelled window of ``evaluate`` days: the
    registered models when neither learned from it, else their recipes refitted before it."""
    c = task_comparison(task)
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
    force: bool = False,
) -> Decision:
    """Compare ``@challenger`` with ``@champion`` on the latest labelled window; move the alias if it
    wins and it is not below the baseline floor (:func:`floor`, on its training run's evaluation
    window) unless ``force``."""
    task = Task(task).value
    margins = margins or Margins()
    champ_v, chall_v = _version(client, task, champion_alias), _version(client, task, challenger_alias)
    if chall_v is None:
        raise ModelNotAvailable(task, f"no version has the alias {challenger_alias!r}: run `funnelcast train --task {task}` first")
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
            ok, reason = decide(cmp.champion, cmp.challenger, margins, task_comparison(task).checks)
        decision = Decision(task, ok, reason, cmp.mode, cmp.window, champ_v, chall_v, cmp.champion, cmp.challenger,
                            margins)
    if decision.promote:
        _apply_floor(client, decision, force)
    decision.run_id = _log(client, decision, experiment)
    if decision.promote and not dry_run:
        if champ_v is not None:
            client.set_registered_model_alias(task, f"previous_{champion_alias}", champ_v)
        client.set_registered_model_alias(task, champion_alias, chall_v)
        client.delete_registered_model_alias(task, challenger_alias)
    return decision


def _apply_floor(client: MlflowClient, decision: Decision, force: bool) -> None:
    """Keep the champion when the challenger is below the baseline floor (unless ``force``)."""
    from training.tasks import task_definition

    fl = run_floor(client, decision.task, decision.challenger_version, task_definition(decision.task).floor_metric)
    if fl is None or fl.passed:
        return
    if force:
        decision.reason += f"; below the baseline floor, forced (--force): {fl.describe()}"
        return
    decision.promote = False
    decision.reason = (f"below the baseline floor: {fl.describe()}; `funnelcast promote --task {decision.task} --force` "
                       f"promotes it anyway (otherwise: {decision.reason})")


def _log(client: MlflowClient, d: Decision, experiment: str) -> str:
    from training.pipeline import experiment_id  # the pipeline imports the task modules, which import this one

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
