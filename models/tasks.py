"""The prediction tasks, the protocol each task implements once, and what training one returns.

Each :class:`Task` value is also the registered model's name in MLflow. A task module
(``training.train`` for lead_quality, ``training.deals`` for stage_conversion,
``training.accounts`` for high_value) implements :class:`TaskDefinition`; the machinery around
it (the time fold, training, logging and registering, the CLI) is written once over the
protocol. Adding a task is one module implementing it and one line in ``training.tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from features.contract import Export

__all__ = ["Scored", "Task", "TaskConfig", "TaskDefinition", "TrainResult"]


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
    run_id: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)


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

    def config(self, *, horizon_days: int, snapshot_every_days: int, seed: int,
               exclude: tuple[str, ...] = ()) -> TaskConfig:
        """The task's default training configuration for these shared settings."""
        ...

    def population(self, export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
        """The entities the task scores at ``as_of`` (none created at or after it)."""
        ...

    def build(self, export: Export, config: Any, cutoff: pd.Timestamp, *, progress: bool = False,
              outcomes: pd.DataFrame | None = None) -> TrainResult:
        """Snapshots, the time-fold evaluation against the baseline, and the final scorer (no MLflow)."""
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
