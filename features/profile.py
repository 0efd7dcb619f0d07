"""What a model remembers of the export it was trained on, and whether an export served later shrank.

A training records the rows per table and the newest timestamp of the export it saw
(:func:`export_profile`), and the source it read (:func:`source_key`). Serving compares the
export it reads from the same source with that record (:func:`shrinkage`): a table holding fewer
than a share of its rows at training, or a newest event older than the training's, is a sync cut
short or an old copy restored, and serving it would give wrong funnel and forecast figures.
Exports of other sources are not compared (a model trained on one CRM says nothing about the size
of another).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from features.contract import TABLES, Export
from features.errors import FunnelcastError

__all__ = ["ExportShrunk", "export_profile", "shrinkage", "source_key"]

_PASSWORD = re.compile(r"(://[^/:@]*):[^@/]*@")


class ExportShrunk(FunnelcastError):
    """The export read lost rows (or recent events) since the served models were trained on the same source."""


def source_key(source: str) -> str:
    """The identity of a CRM source: a folder or file as an absolute path, a URL without its password."""
    text = str(source).strip()
    if "://" in text:
        return _PASSWORD.sub(r"\1:***@", text)
    return str(Path(text).expanduser().resolve())


def export_profile(export: Export, source: str | None = None) -> dict[str, Any]:
    """``{"rows": {table: n}, "latest_at": ISO text or None[, "source": source_key(source)]}``."""
    rows = {name: len(frame) for name in TABLES if (frame := export.table(name)) is not None}
    latest = export.exported_at
    out: dict[str, Any] = {"rows": rows, "latest_at": None if latest is None else pd.Timestamp(latest).isoformat()}
    if source is not None:
        out["source"] = source_key(source)
    return out


def shrinkage(now: dict[str, Any], then: dict[str, Any], least: float) -> list[str]:
    """What shrank from the profile ``then`` (at training) to ``now``, each as a phrase naming the
    figures (``"leads: 1,200 rows, 2,000 at training (60%)"``); empty when nothing did. A table counts
    as shrunk below ``least`` of its training rows; the export as stale when its newest timestamp is
    older than the training's. ``least`` 0 turns the check off."""
    if not least:
        return []
    out = []
    rows_now = now.get("rows", {})
    for name, rows in (then.get("rows") or {}).items():
        have = int(rows_now.get(name, 0))
        if rows > 0 and have < least * rows:
            out.append(f"{name}: {have:,} rows, {int(rows):,} at training ({have / rows:.0%})")
    latest_now, latest_then = now.get("latest_at"), then.get("latest_at")
    if latest_then and (latest_now is None or pd.Timestamp(latest_now) < pd.Timestamp(latest_then)):
        out.append(f"newest event {latest_now or 'none'}, {latest_then} at training")
    return out
