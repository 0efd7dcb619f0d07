"""Scored snapshots in the operations database: what every refresh scored, kept as history.

SQLAlchemy Core tables on the same metadata and engine as :mod:`serving.store` (SQLite under the
project home by default, PostgreSQL by URL):

* ``snapshots``: one row per refresh (as_of, refreshed_at, source, status ok|failed, error, the
  models and versions used, counts, bad rows of the source);
* ``snapshot_scores``: a row per scored lead, deal and account (probability, score 0-100, grade,
  value still to be won, reasons, trend, the previous snapshot's probability, whether it is new
  or changed for a CRM);
* ``snapshot_payloads``: the JSON of the funnel and forecast answers the API serves from it.

A refresh writes its snapshot, scores and payloads in one transaction: readers see all of it
or none. The API serves the latest snapshot whose status is ok.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    func,
    select,
)

from features.errors import FunnelcastError
from serving.store import OperationsStore, create_tables, served_scores

__all__ = ["SnapshotStore", "SnapshotRow", "BadPageToken", "KINDS", "snapshots", "snapshot_scores",
           "snapshot_payloads", "payload_key"]

_meta = served_scores.metadata  # the operations store's metadata: one database, one create_all
KINDS = ("lead", "deal", "account")

snapshots = Table(
    "snapshots", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("as_of", DateTime(timezone=True), nullable=True),
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
    Column("source", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("models", JSON, nullable=False),
    Column("counts", JSON, nullable=False),
    Column("missing", JSON, nullable=False),
    Column("bad_rows", Integer, nullable=False, default=0),
    Column("bad_rows_summary", Text, nullable=True),
    Column("duration_seconds", Float, nullable=True),
    Index("ix_snapshots_status_id", "status", "id"),
    Index("ix_snapshots_refreshed_at", "refreshed_at"),
)
snapshot_scores = Table(
    "snapshot_scores", _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("snapshot_id", Integer, ForeignKey("snapshots.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("entity_id", String(256), nullable=False),
    Column("name", Text, nullable=True),
    Column("owner_id", String(256), nullable=True),
    Column("team", String(256), nullable=True),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("model", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("probability", Float, nullable=False),
    Column("score", Integer, nullable=False),
    Column("grade", String(8), nullable=True),
    Column("expected_value", Float, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("trend", String(32), nullable=False),
    Column("previous_probability", Float, nullable=True),
    Column("changed", Boolean, nullable=False),
    Index("ix_scores_latest", "snapshot_id", "kind", "entity_id"),   # a snapshot's list
    Index("ix_scores_history", "kind", "entity_id", "snapshot_id"),  # one entity over snapshots
    Index("ix_scores_feed", "changed", "id"),                        # new or changed, in order
)
snapshot_payloads = Table(
    "snapshot_payloads", _meta,
    Column("snapshot_id", Integer, ForeignKey("snapshots.id"), primary_key=True),
    Column("key", String(512), primary_key=True),
    Column("payload", JSON, nullable=False),
)

_SCORE_FIELDS = ("kind", "entity_id", "name", "owner_id", "team", "model", "version", "probability", "score", "grade",
                 "expected_value", "reasons", "trend", "previous_probability", "changed")


class BadPageToken(FunnelcastError):
    """A ``page_token`` that this server did not hand out."""

    def __init__(self, token: str):
        self.token = token
        super().__init__(f"page_token {token!r} is not a token from a previous page of this feed")


def payload_key(name: str, params: dict[str, Any]) -> str:
    """The key of an answer stored with a snapshot: the route and its parameters, canonical."""
    return name + "?" + json.dumps({k: params[k] for k in sorted(params)}, default=str, separators=(",", ":"))


def _sql(value: Any) -> Any:
    """A missing value as SQL NULL. pandas gives NaN for a missing string or float; SQLite stores a
    NaN as NULL, but PostgreSQL stores the float NaN and the text 'NaN' (an unchanged deal without a
    grade then read back 'NaN' and was fed again as changed)."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    t = pd.Timestamp(value)
    return (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")).to_pydatetime()


@dataclass(frozen=True)
class SnapshotRow:
    id: int
    as_of: datetime | None
    refreshed_at: datetime
    source: str
    status: str
    error: str | None
    models: dict[str, str]
    counts: dict[str, int]
    missing: list[str]
    bad_rows: int
    bad_rows_summary: str | None
    duration_seconds: float | None

    @classmethod
    def of(cls, row: Any) -> SnapshotRow:
        m = dict(row._mapping)
        return cls(**{**m, "as_of": _utc(m["as_of"]), "refreshed_at": _utc(m["refreshed_at"])})

    def age_seconds(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.refreshed_at).total_seconds()


class SnapshotStore:
    """Snapshots in the operations database of ``ops`` (its engine; tables created on first use)."""

    def __init__(self, ops: OperationsStore):
        self.ops = ops
        self._ready = False
        self._lock = threading.Lock()

    @property
    def engine(self):
        """The engine for writing (creates the operations database when there is none yet)."""
        engine = self.ops.engine
        with self._lock:
            if not self._ready:
                create_tables(engine)  # only the tables not there yet
                self._ready = True
        return engine

    def _reader(self):
        """The engine for reading, ``None`` while there is no operations database (a read never creates it)."""
        return None if self.ops.read_engine() is None else self.engine

    # --- writing -----------------------------------------------------------------------------
    def write(self, snapshot: dict[str, Any], scores: pd.DataFrame | None = None,
              payloads: dict[str, Any] | None = None) -> int:
        """Store one snapshot with its scores and payloads in one transaction; its id."""
        row = {**snapshot, "as_of": _utc(snapshot.get("as_of")), "refreshed_at": _utc(snapshot["refreshed_at"])}
        with self.engine.begin() as conn:
            sid = int(conn.execute(snapshots.insert().values(**row)).inserted_primary_key[0])
            if scores is not None and len(scores):
                at = row["as_of"]
                records = [{**{k: _sql(r[k]) for k in _SCORE_FIELDS}, "snapshot_id": sid, "as_of": at}
                           for r in scores.to_dict("records")]
                for i in range(0, len(records), 5000):
                    conn.execute(snapshot_scores.insert(), records[i:i + 5000])
            if payloads:
                conn.execute(snapshot_payloads.insert(),
                             [{"snapshot_id": sid, "key": k, "payload": v} for k, v in payloads.items()])
        return sid

    # --- reading -----------------------------------------------------------------------------
    def latest(self, ok_only: bool = True) -> SnapshotRow | None:
        q = select(snapshots).order_by(snapshots.c.id.desc()).limit(1)
        if ok_only:
            q = q.where(snapshots.c.status == "ok")
        if (engine := self._reader()) is None:
            return None
        with engine.connect() as conn:
            row = conn.execute(q).first()
        return SnapshotRow.of(row) if row is not None else None

    def scores(self, snapshot_id: int) -> pd.DataFrame:
        """Every score of a snapshot, in the order it was stored."""
        q = select(snapshot_scores).where(snapshot_scores.c.snapshot_id == snapshot_id).order_by(snapshot_scores.c.id)
        if (engine := self._reader()) is None:
            return pd.DataFrame(columns=[c.name for c in snapshot_scores.columns])
        with engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return pd.DataFrame(rows, columns=[c.name for c in snapshot_scores.columns])

    def payload(self, snapshot_id: int, key: str) -> Any | None:
        q = select(snapshot_payloads.c.payload).where(
            and_(snapshot_payloads.c.snapshot_id == snapshot_id, snapshot_payloads.c.key == key))
        if (engine := self._reader()) is None:
            return None
        with engine.connect() as conn:
            return conn.execute(q).scalar_one_or_none()

    def previous(self, kinds: Sequence[str], points: int) -> pd.DataFrame:
        """Per entity, its probabilities in the latest ``points`` ok snapshots (oldest first), its last
        score, grade, probability and reasons: what a new snapshot compares itself with."""
        engine = self._reader()
        with engine.connect() if engine is not None else nullcontext() as conn:
            ids = [] if conn is None else conn.execute(select(snapshots.c.id).where(snapshots.c.status == "ok")
                                                       .order_by(snapshots.c.id.desc()).limit(points)).scalars().all()
            if not ids:
                return pd.DataFrame(columns=["kind", "entity_id", "snapshot_id", "probability", "score", "grade",
                                             "reasons"])
            q = (select(snapshot_scores.c.kind, snapshot_scores.c.entity_id, snapshot_scores.c.snapshot_id,
                        snapshot_scores.c.probability, snapshot_scores.c.score, snapshot_scores.c.grade,
                        snapshot_scores.c.reasons)
                 .where(snapshot_scores.c.snapshot_id.in_(ids), snapshot_scores.c.kind.in_(list(kinds)))
                 .order_by(snapshot_scores.c.snapshot_id))
            return pd.DataFrame(conn.execute(q).mappings().all(),
                                columns=["kind", "entity_id", "snapshot_id", "probability", "score", "grade", "reasons"])

    def history(self, kind: str, entity_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """One entity's scores over the ok snapshots, oldest first (the latest ``limit``)."""
        q = (select(snapshot_scores.c.as_of, snapshots.c.refreshed_at, snapshot_scores.c.probability,
                    snapshot_scores.c.score, snapshot_scores.c.grade, snapshot_scores.c.expected_value,
                    snapshot_scores.c.model, snapshot_scores.c.version, snapshot_scores.c.snapshot_id)
             .join(snapshots, snapshots.c.id == snapshot_scores.c.snapshot_id)
             .where(snapshot_scores.c.kind == kind, snapshot_scores.c.entity_id == entity_id, snapshots.c.status == "ok")
             .order_by(snapshot_scores.c.snapshot_id.desc()).limit(limit))
        if (engine := self._reader()) is None:
            return []
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings().all()]
        for r in rows:
            r["as_of"], r["refreshed_at"] = _utc(r["as_of"]), _utc(r["refreshed_at"])
        return rows[::-1]

    def feed(self, since: datetime | None, kind: str | None, page_token: str | None,
             limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Scores that appeared or changed in snapshots refreshed after ``since``, in the order they
        were stored; the next page's token (``None`` on the last page)."""
        after = _decode(page_token) if page_token else 0
        q = (select(snapshot_scores, snapshots.c.refreshed_at)
             .join(snapshots, snapshots.c.id == snapshot_scores.c.snapshot_id)
             .where(snapshot_scores.c.changed.is_(True), snapshot_scores.c.id > after, snapshots.c.status == "ok")
             .order_by(snapshot_scores.c.id).limit(limit + 1))
        if since is not None:
            q = q.where(snapshots.c.refreshed_at > _utc(since))
        if kind is not None:
            q = q.where(snapshot_scores.c.kind == kind)
        if (engine := self._reader()) is None:
            return [], None
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings().all()]
        more = len(rows) > limit
        rows = rows[:limit]
        for r in rows:
            r["as_of"], r["refreshed_at"] = _utc(r["as_of"]), _utc(r["refreshed_at"])
        return rows, (_encode(rows[-1]["id"]) if more else None)

    def count(self) -> int:
        if (engine := self._reader()) is None:
            return 0
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(snapshots)).scalar_one())


def _encode(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": int(last_id)}).encode()).decode().rstrip("=")


def _decode(token: str) -> int:
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(value["after"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BadPageToken(token) from exc
