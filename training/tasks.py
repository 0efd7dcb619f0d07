"""The registry of tasks: each :class:`~models.tasks.Task` and the module that defines it."""

from __future__ import annotations

from models.tasks import Task, TaskDefinition
from training.accounts import HIGH_VALUE
from training.deals import STAGE_CONVERSION
from training.train import LEAD_QUALITY

__all__ = ["TASKS", "task_definition"]

#: Every task, in the order `funnelcast train` trains them.
TASKS: dict[Task, TaskDefinition] = {d.task: d for d in (LEAD_QUALITY, HIGH_VALUE, STAGE_CONVERSION)}


def task_definition(task: Task | str) -> TaskDefinition:
    """The definition of ``task`` (a Task or its value); an unknown name raises ValueError naming it."""
    return TASKS[Task(task)]
