"""The retraining loop behind ``funnelcast retrain`` and ``funnelcast run --data``.

Train every task (or ``--task``) on the configured export, then put each new version through
the promotion gate (:func:`training.promote.promote`: the same comparison as ``funnelcast
promote``) and print one table: the champion before, the new version, both models' figures on
the comparison window, and whether ``@champion`` moved and why. A running API picks moved
champions up with its alias poll (``FUNNELCAST_RELOAD_POLL_SECONDS``) or ``POST
/v1/admin/reload``. Nothing promoted is not an error (exit 0); a task that fails is reported in
the table and makes the exit status 1, after the other tasks ran.

``promote_trained`` is also how ``funnelcast run --data`` ends serving what it trained. The
training itself is the CLI's one path (``training.cli_train.train_tasks``), passed in as ``train``
by the parser (command modules do not import each other).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from features.contract import Export
from features.errors import FunnelcastError
from features.settings import Settings
from models.tasks import Task

__all__ = ["RetrainRow", "champion_of", "promote_trained", "retrain", "retrain_table"]


@dataclass
class RetrainRow:
    """What a retrain did to one task."""

    task: str
    champion_before: str | None
    new_version: str | None
    champion_after: str | None
    promoted: bool
    reason: str
    auc_before: float | None = None
    auc_new: float | None = None
    brier_before: float | None = None
    brier_new: float | None = None
    failed: bool = False


def champion_of(client: Any, task: str, alias: str) -> tuple[str | None, str | None]:
    """The version at ``alias`` and the data source its run was trained on (None, None: no champion)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(task, alias)
    except MlflowException:
        return None, None
    try:
        source = client.get_run(mv.run_id).data.tags.get("data_source") if mv.run_id else None
    except MlflowException:
        source = None
    return str(mv.version), source


def promote_trained(result: Any, export: Export, client: Any, settings: Settings, *, before: str | None,
                    before_source: str | None, source: str, replace_other_source: bool = False,
                    evaluate: str = "91d") -> RetrainRow:
    """Decide whether the freshly registered ``result`` becomes ``@champion``.

    A first version is champion already. With ``replace_other_source`` a champion trained on
    another data source is replaced without comparison (its figures on this export say nothing
    about a model of this CRM); otherwise the challenger goes through the promotion gate."""
    from training.promote import promote

    task, alias = result.scorer.task, settings.model_alias
    row = RetrainRow(str(task), before, result.version, before, False, "")
    if alias in result.aliases:
        row.champion_after, row.promoted, row.reason = result.version, True, "first version: champion directly"
        return row
    if replace_other_source and before_source is not None and before_source != source:
        client.set_registered_model_alias(task, f"previous_{alias}", before)
        client.set_registered_model_alias(task, alias, result.version)
        row.champion_after, row.promoted = result.version, True
        row.reason = f"the champion was trained on another data source ({before_source}): replaced"
        return row
    d = promote(export, client, task=task, experiment=settings.experiment, evaluate=evaluate, champion_alias=alias)
    row.promoted, row.reason = d.promote, d.reason
    row.champion_after = d.challenger_version if d.promote else d.champion_version
    row.auc_before, row.auc_new = d.champion.get("roc_auc"), d.challenger.get("roc_auc")
    row.brier_before, row.brier_new = d.champion.get("brier"), d.challenger.get("brier")
    return row


def retrain(tasks: Sequence[Task], train: Callable[..., list[Any]], export: Export, source: str, client: Any,
            settings: Settings, **train_kw: Any) -> list[RetrainRow]:
    """Train each of ``tasks`` with ``train`` (``train_tasks``) on ``source`` (loaded as ``export``) and
    promote each new version through the gate; a task that fails is a row saying why (see the module)."""
    evaluate = train_kw.pop("evaluate", "91d")
    rows = []
    for task in tasks:
        before, before_source = champion_of(client, task.value, settings.model_alias)
        try:
            (result,) = train([task], settings, source=source, **train_kw)
            rows.append(promote_trained(result, export, client, settings, before=before, before_source=before_source,
                                        source=source, evaluate=evaluate))
        except (FunnelcastError, ValueError) as exc:  # data too short for a task: the others still run
            rows.append(RetrainRow(task.value, before, None, before, False, f"failed: {exc}", failed=True))
    return rows


def retrain_table(rows: Sequence[RetrainRow]) -> pd.DataFrame:
    """The table ``retrain`` prints: one row per task."""
    def fig(a: float | None, b: float | None) -> str:
        return "" if a is None and b is None else f"{a if a is None else round(a, 4)} -> {b if b is None else round(b, 4)}"

    return pd.DataFrame({
        "task": [r.task for r in rows],
        "champion before": [f"v{r.champion_before}" if r.champion_before else "none" for r in rows],
        "new version": [f"v{r.new_version}" if r.new_version else "none" for r in rows],
        "AUC": [fig(r.auc_before, r.auc_new) for r in rows],
        "Brier": [fig(r.brier_before, r.brier_new) for r in rows],
        "champion after": [f"v{r.champion_after}" if r.champion_after else "none" for r in rows],
        "promoted": ["yes" if r.promoted else "no" for r in rows],
    })


