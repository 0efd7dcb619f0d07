"""The prediction tasks, the protocol each task implements once, and the one way a task is trained.

Each :class:`Task` value is also the registered model's name in MLflow. A task module
(``training.train`` for lead_quality, ``training.deals`` for stage_conversion,
``training.accounts`` for high_value) implements :class:`TaskDefinition`: its population,
snapshots, fold, a fold's fit and evaluation against its baseline, the final scorer, what it
logs and how it scores, and what tuning, promotion and drift need of it (``tuning``,
``comparison``, ``drift_features``). :func:`build_task` runs them in order, the same for every
task; the registry (``training.tasks``), logging and registering (``training.pipeline``),
tuning (``training.tune``), promotion (``training.promote``) and the CLI are written once over
the protocol. Adding a task is one module implementing it and one line in ``training.tasks``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from features.contract import Export
from features.profile import export_profile
from models.folds import Split, TimeFold
from models.windows import Horizon, choose_horizon

__all__ = ["Evaluation", "Scored", "Snapshots", "Task", "TaskConfig", "TaskDefinition", "TrainResult", "build_task",
           "resolve_horizon"]


class Task(StrEnum):
    LEAD_QUALITY = "lead_quality"
    STAGE_CONVERSION = "stage_conversion"
    HIGH_VALUE = "high_value"


class TaskConfig(Protocol):
    """What every task's training configuration holds (each task adds its own fields)."""

    seed: int
    params: dict[str, Any]


@dataclass(kw_only=True)
class TrainResult:
    """One trained task: the final scorer, its held-out evaluation, and where it was registered."""

    scorer: Any
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    #: Held-out predictions next to the outcomes (logged as ``report/evaluation_predictions.csv``).
    evaluation: pd.DataFrame
    snapshots: pd.DataFrame
    #: The time windows (fit, calibrate, evaluate) as logged ``split_*`` params.
    windows: dict[str, str]
    #: Labels decided by the outcomes the CRM reported (None: trained without stored outcomes).
    outcome_labels: Any = None
    #: One row per candidate (index: name): ``role`` ("model" | "baseline"), ``validation_log_loss``,
    #: ``validation_roc_auc``, ``chosen``, then the evaluation window's metrics (None: no ladder).
    candidates: pd.DataFrame | None = None
    run_id: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    #: What was chosen from the data (horizon, history, weighting, base-rate correction), logged as params.
    chosen: dict[str, object] = field(default_factory=dict)
    #: Warnings for the user (printed by `funnelcast train`, logged as the ``warnings`` tag).
    warnings: list[str] = field(default_factory=list)
    #: The configuration trained with, its horizon resolved (what promotion and tuning repeat).
    config: Any = None


@dataclass
class Snapshots:
    """A task's point-in-time examples: features and labels of its entities at snapshot ``times``."""

    spec: Any
    frame: pd.DataFrame
    #: The snapshot times (``as_of`` values, or the days of them) the fold splits.
    times: list[pd.Timestamp]
    #: What the labels know: the training cutoff.
    cutoff: pd.Timestamp
    #: Labels decided by the outcomes the CRM reported (None: the export alone).
    outcome_labels: Any = None
    #: What else the task derived with them (e.g. the high-value threshold).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """Held-out metrics of a fold's model and of the task's baseline, and the predictions they are from."""

    metrics: dict[str, float]
    baseline: dict[str, float]
    frame: pd.DataFrame
    #: The candidates on the evaluation window (see ``TrainResult.candidates``).
    candidates: pd.DataFrame | None = None
    #: What the task's :meth:`~TaskDefinition.final` needs of the evaluation besides (e.g. every candidate).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    """A batch of scored entities: one row each, best first, with reasons as text."""

    table: pd.DataFrame
    entity: str  # "leads", "deals", "accounts"


@runtime_checkable
class TaskDefinition(Protocol):
    """What a task says about itself; everything else is written once."""

    task: Task
    #: MLflow metric prefix of the task's baseline on the evaluation window (``baseline_nb``, ...).
    baseline: str
    #: What the parameter search needs (a ``training.tune.Tuning``).
    tuning: Any
    #: What promotion needs (a ``training.promote.Comparison``).
    comparison: Any
    #: What `funnelcast drift` calls the population it scores (``leads open``, ...).
    drift_population: str
    #: The evaluation metric of the baseline floor (``training.promote.floor``): no model becomes
    #: champion below the best simple baseline on it (``roc_auc``, ``win_roc_auc``).
    floor_metric: str

    def config(self, *, horizon_days: int, snapshot_every_days: int, seed: int,
               exclude: tuple[str, ...] = ()) -> TaskConfig:
        """The task's default training configuration for these shared settings."""
        ...

    def population(self, export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
        """The entities the task scores at ``as_of`` (none created at or after it)."""
        ...

    def decision_durations(self, export: Export, cutoff: pd.Timestamp) -> pd.Series:
        """Time from creation to decision (timedeltas, indexed by creation time) of the entities decided
        before ``cutoff``: what :func:`models.windows.choose_horizon` chooses the horizon from."""
        ...

    def snapshots(self, export: Export, cutoff: pd.Timestamp, config: Any, *, progress: bool = False,
                  outcomes: pd.DataFrame | None = None) -> Snapshots:
        """Features and labels known at ``cutoff`` (``outcomes``: stored outcomes that decide labels)."""
        ...

    def fold(self, config: Any, snapshots: Snapshots) -> TimeFold:
        """The time fold of the task's snapshots."""
        ...

    def fit(self, export: Export, snapshots: Snapshots, split: Split, config: Any) -> Any:
        """A model fitted on the split's fit and calibration windows (what :meth:`evaluate` scores)."""
        ...

    def evaluate(self, model: Any, snapshots: Snapshots, split: Split, config: Any) -> Evaluation:
        """The model and the task's baseline on the split's evaluation window."""
        ...

    def final(self, export: Export, snapshots: Snapshots, split: Split, evaluation: Evaluation,
              config: Any) -> TrainResult:
        """The registered scorer, fitted on everything known at the cutoff, with the evaluation."""
        ...

    def run_params(self, result: TrainResult, config: Any) -> dict[str, object]:
        """The MLflow params of a training run (besides the shared ones)."""
        ...

    def write_report(self, result: TrainResult, config: Any, folder: Path) -> None:
        """Report files into ``folder``; each subfolder is logged as the artifact path of its name."""
        ...

    def summary(self, result: TrainResult) -> str:
        """The evaluation table `funnelcast train` prints (model beside baseline)."""
        ...

    def score(self, scorer: Any, export: Export, as_of: pd.Timestamp) -> Scored:
        """Every entity of :meth:`population` at ``as_of``, scored, best first, reasons as text."""
        ...

    def drift_features(self, scorer: Any, export: Export, population: pd.DataFrame,
                       as_of: pd.Timestamp) -> tuple[pd.DataFrame, np.ndarray]:
        """The features ``scorer`` computes for ``population`` at ``as_of``, and its score of each (for drift)."""
        ...


def resolve_horizon(definition: TaskDefinition, export: Export, cutoff: pd.Timestamp, config: Any,
                    ) -> tuple[Any, Horizon | None]:
    """``config`` with its ``horizon_days`` set (None: chosen from the task's decision times before
    ``cutoff``, see :mod:`models.windows`), and the horizon; configs without a horizon pass through."""
    if not hasattr(config, "horizon_days"):
        return config, None
    if config.horizon_days is not None:
        return config, Horizon(days=int(config.horizon_days), source="user")
    durations = definition.decision_durations(export, cutoff)
    history = cutoff - durations.index.min() if len(durations) else None
    # a task may cap the horizon (stage_conversion: a quarter, the period sales leaders forecast)
    cap = getattr(definition, "max_horizon_days", None)
    horizon = choose_horizon(durations, cutoff, history=history, **({"max_days": cap} if cap else {}))
    return dataclasses.replace(config, horizon_days=horizon.days), horizon


def build_task(definition: TaskDefinition, export: Export, cutoff: pd.Timestamp, config: Any, *,
               progress: bool = False, outcomes: pd.DataFrame | None = None,
               snapshots: Snapshots | None = None) -> TrainResult:
    """The horizon (from the data unless set), snapshots (unless given), the fold's evaluation split, a
    model on it and its evaluation against the baseline, then the final scorer: the one training path of
    every task (no MLflow). ``result.config`` is ``config`` with the horizon resolved."""
    config, horizon = resolve_horizon(definition, export, cutoff, config)
    snaps = snapshots if snapshots is not None else definition.snapshots(export, cutoff, config, progress=progress,
                                                                          outcomes=outcomes)
    # a task may say what a split is missing (e.g. too few decided records per class): the fold shrinks for it
    enough = definition.enough(snaps, config) if hasattr(definition, "enough") else None
    split = definition.fold(config, snaps).split(snaps.times, snaps.cutoff, enough)
    evaluation = definition.evaluate(definition.fit(export, snaps, split, config), snaps, split, config)
    result = definition.final(export, snaps, split, evaluation, config)
    result.scorer.metadata["export_profile"] = export_profile(export)  # serving refuses an export that shrank since
    result.outcome_labels = snaps.outcome_labels
    result.config = config
    result.chosen = {**(horizon.params() if horizon else {}), **result.chosen}
    if horizon is not None and horizon.note:
        result.warnings.insert(0, horizon.describe())
    return result
