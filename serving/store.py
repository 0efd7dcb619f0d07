"""Durable operations data: the scores the API served and the outcomes the CRM reports.

SQLAlchemy Core on any URL (SQLite under the project home by default; PostgreSQL is tested
in CI). Outcomes are keyed by ``(task, record_id)``: reporting the same record again is
idempotent, and concurrent reports cannot race: each record is one ``INSERT ... ON CONFLICT DO
NOTHING`` (the SQLite and PostgreSQL dialects' ``insert``; a savepoint elsewhere) followed, when
it was there already, by an ``UPDATE`` only where the stored outcome differs. Each record gets
its own result: ``accepted`` (new), ``duplicate`` (the same outcome and time were stored) or
``corrected`` (another outcome or time was stored: the CRM's correction replaces it); a
collision never rolls back the rest of the batch. Served scores are appended with the model version
that produced them; live performance joins each version's first score of a record with the
record's outcome decided after it ("scored, then decided").

The API logs served scores off the request path (:meth:`OperationsStore.log_scores`): a request
appends its rows to a queue and a writer thread inserts whatever has queued in one transaction,
so a busy worker pays one commit per batch instead of one per request, and the request does not
wait for the database. Reads of the served scores in the same process
(:meth:`OperationsStore.scored_then_decided`) and the app's shutdown wait for the queue to be
written first. A failed insert is retried; the queue is bounded (a request finding it full writes
its own rows). The rows of a process killed with SIGKILL that were still queued (at most one
batch interval's worth) are lost: a scoring answer does not acknowledge its log, an outcome's
answer does, and outcomes are written before they are answered.

Also here, in memory: a bounded sample of the most recent scoring requests, from which
``GET /v1/monitoring`` computes feature drift against the model's training reference.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from serving.errors import RequestProblem

log = logging.getLogger("funnelcast.serving")

#: Outcomes that count as the positive class of their task.
POSITIVE = {"converted", "won"}
OUTCOMES = ("converted", "disqualified", "won", "lost")

_meta = MetaData()
served_scores = Table(
    "served_scores",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task", String(64), nullable=False, index=True),
    Column("model_version", String(32), nullable=False),
    Column("record_id", String(256), nullable=False, index=True),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("probability", Float, nullable=False),
    Column("served_at", DateTime(timezone=True), nullable=False),
)
outcomes = Table(
    "outcomes",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task", String(64), nullable=False),
    Column("record_id", String(256), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("task", "record_id", name="uq_outcome_record"),
)


def _utc(ts: Any) -> datetime:
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.to_pydatetime()


def _sqlite_wal(dbapi_connection, _record) -> None:
    """Write-ahead log, synced at checkpoints rather than on every commit.

    The API logs each request's scores in its own transaction; in SQLite's default mode each
    commit waits for an fsync (about 20 ms on our disks, as much as scoring a lead). With a
    WAL and ``synchronous=NORMAL`` the database stays consistent after a crash, and at worst
    the last commits before a power loss are lost. Several uvicorn workers can also write
    while the monitoring endpoints read.
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


_create_lock = threading.Lock()


def create_tables(engine: Engine) -> None:
    """Create the operations tables not there yet. Stores of one process opening the same database
    take turns; another process creating a table between the check and the CREATE (``already
    exists``) is waited out by checking again."""
    with _create_lock:
        for attempt in range(3):
            try:
                _meta.create_all(engine)  # checkfirst
                return
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                if not any(w in str(exc) for w in ("already exists", "duplicate key")) or attempt == 2:
                    raise


#: What :meth:`FilePresence.status` says of a store's file.
PRESENT, NOT_YET, GONE = "present", "none", "gone"


class FilePresence:
    """Whether a store's file is there, by one ``stat`` per call: ``present``, ``none`` (never seen
    by this process: nothing created it yet) or ``gone`` (seen, then deleted while the process ran).
    ``path`` None (a server database, an in-memory one) is always present. ``replaced`` says the
    file now there is another one than the one seen before (restored from a backup, recreated by
    another process): connections opened on the old one must be dropped."""

    def __init__(self, path: Path | None):
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._missed = False
        self.replaced = False
        # the stat and the bookkeeping as one step: a thread whose stat ran before another thread's
        # first write created the file must not then read that write's "seen" and call the file gone
        self._lock = threading.Lock()

    def status(self) -> str:
        if self.path is None:
            return PRESENT
        with self._lock:
            return self._status()

    def _status(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._seen is None:
                return NOT_YET
            self._missed = True
            return GONE
        ident = (st.st_dev, st.st_ino)  # a file system may give a new file the inode of a deleted one:
        if self._seen is not None and (ident != self._seen or self._missed):  # seen missing between counts too
            self.replaced = True
        self._seen, self._missed = ident, False
        return PRESENT


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for an in-memory database, a SQLite URI or another database)."""
    try:
        u = make_url(url)
    except ArgumentError:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:" or u.query.get("uri"):
        return None
    return Path(u.database)


class OperationsStoreGone(RequestProblem):
    """The operations database this process had open was deleted while it ran: refused (503), never
    silently recreated empty (the outcomes and the score history would vanish without a word)."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"the operations database {name} was deleted while the server ran: outcomes, served "
                         "scores and snapshots cannot be stored or read; restore the file, or restart the server "
                         "to start an empty one (the server log has the path)", status_code=503,
                         headers={"Retry-After": "60"})


class OperationsStore:
    """Served scores and outcomes in one database; the engine is created on first use.

    Reads never create the database: while its SQLite file does not exist (a fresh project home),
    they answer as an empty store (no outcome, no snapshot); the first write (an outcome, a refresh,
    a served score) creates it. A file deleted while the process runs is :data:`GONE`: reads and
    writes raise :class:`OperationsStoreGone` (``/readyz`` answers 503 naming it) instead of writing
    into the deleted file or a new empty one. A file replaced under the process (restored) is
    followed: the engine is opened again on it."""

    def __init__(self, url: str):
        self.url = url
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._writer: _ScoreWriter | None = None
        self.presence = FilePresence(sqlite_file(url))

    @property
    def name(self) -> str:
        """The database's name for clients: its file name, or its kind (no server path, no password)."""
        path = self.presence.path
        return path.name if path is not None else self.url.split(":", 1)[0]

    def status(self) -> str:
        """:data:`PRESENT`, :data:`NOT_YET` or :data:`GONE` (one ``stat`` of the SQLite file)."""
        status = self.presence.status()
        if self.presence.replaced:
            with self._lock:
                self.presence.replaced = False
                if self._engine is not None:
                    log.warning("the operations database %s was replaced: opening the new file", self.presence.path)
                    self._engine.dispose()
                    self._engine = None
        return status

    @property
    def engine(self) -> Engine:
        """The engine for writing: creates the database when it does not exist yet."""
        return self._open(self.status())

    def read_engine(self) -> Engine | None:
        """The engine for reading, ``None`` while the database does not exist yet (never created by a read)."""
        status = self.status()
        return None if status == NOT_YET else self._open(status)  # raises OperationsStoreGone when gone

    def _open(self, status: str) -> Engine:
        """The engine, given this access's one :meth:`status`; a file not there yet is created (and then
        stat'ed once more, so that it counts as seen and a later deletion as gone)."""
        if status == GONE:
            log.error("the operations database %s was deleted while the server ran", self.presence.path)
            raise OperationsStoreGone(self.name)
        with self._lock:
            if self._engine is None:
                if self.presence.path is not None:
                    self.presence.path.parent.mkdir(parents=True, exist_ok=True)
                self._engine = create_engine(self.url, future=True)
                if self._engine.dialect.name == "sqlite":
                    event.listen(self._engine, "connect", _sqlite_wal)
                create_tables(self._engine)
            engine = self._engine
        if status == NOT_YET:
            self.presence.status()  # created now (by this access or another thread's): seen
        return engine

    def record_scores(self, task: str, version: str, as_of: Any, record_ids: list[str], probabilities: list[float]) -> None:
        """Insert served scores now, in one transaction."""
        self._insert_scores(_score_rows(task, version, as_of, record_ids, probabilities))

    def log_scores(self, task: str, version: str, as_of: Any, record_ids: list[str], probabilities: list[float]) -> None:
        """Queue served scores for the writer thread (see the module docstring); returns at once."""
        rows = _score_rows(task, version, as_of, record_ids, probabilities)
        with self._lock:
            if self._writer is None:
                self._writer = _ScoreWriter(self._insert_scores)
            writer = self._writer
        writer.put(rows)

    def flush_scores(self, timeout: float = 30.0) -> bool:
        """Wait until every queued served score is written (or ``timeout``); whether it was."""
        writer = self._writer
        return True if writer is None else writer.flush(timeout)

    def _insert_scores(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self.engine.begin() as conn:
                conn.execute(served_scores.insert(), rows)

    def upsert_outcomes(self, items: list[dict[str, Any]]) -> StoredOutcomes:
        """Store outcomes ``{task, record_id, outcome, occurred_at}``; each record's result, in order.

        Records are written in key order (two batches with the same records cannot deadlock on
        PostgreSQL), in one transaction that no collision aborts."""
        statuses: list[str] = [""] * len(items)
        now = datetime.now(UTC)
        order = sorted(range(len(items)), key=lambda i: (items[i]["task"], items[i]["record_id"]))
        with self.engine.begin() as conn:
            for i in order:
                statuses[i] = _upsert_outcome(conn, items[i], now)
        return StoredOutcomes(statuses)

    def outcome_count(self, task: str) -> int:
        engine = self.read_engine()
        if engine is None:
            return 0
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(outcomes).where(outcomes.c.task == task)).scalar_one())

    def scored_then_decided(self, task: str) -> pd.DataFrame:
        """Per model version, each record's first served score before its outcome, with the label
        (the scores this process has queued are written first)."""
        self.flush_scores()
        first = (
            select(
                served_scores.c.model_version,
                served_scores.c.record_id,
                func.min(served_scores.c.id).label("first_id"),
            )
            .where(served_scores.c.task == task)
            .group_by(served_scores.c.model_version, served_scores.c.record_id)
            .subquery()
        )
        q = (
            select(
                served_scores.c.model_version,
                served_scores.c.record_id,
                served_scores.c.probability,
                served_scores.c.as_of,
                outcomes.c.outcome,
                outcomes.c.occurred_at,
            )
            .join(first, served_scores.c.id == first.c.first_id)
            .join(outcomes, (outcomes.c.task == task) & (outcomes.c.record_id == served_scores.c.record_id))
        )
        engine = self.read_engine()
        rows = [] if engine is None else None
        if engine is not None:
            with engine.connect() as conn:
                rows = conn.execute(q).mappings().all()
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=["model_version", "record_id", "probability", "as_of", "outcome", "label"])
        as_of = frame["as_of"].map(_utc)
        occurred = frame["occurred_at"].map(_utc)
        frame = frame[occurred.to_numpy() > as_of.to_numpy()].copy()  # decided after it was scored
        frame["label"] = frame["outcome"].isin(POSITIVE).astype(int)
        return frame


def _score_rows(task: str, version: str, as_of: Any, record_ids: list[str], probabilities: list[float]) -> list[dict]:
    now = datetime.now(UTC)
    at = _utc(as_of)
    return [{"task": task, "model_version": version, "record_id": r, "as_of": at, "probability": float(p),
             "served_at": now} for r, p in zip(record_ids, probabilities, strict=True)]


class _ScoreWriter:
    """A daemon thread inserting queued rows in batches: whatever queued while the last insert ran.

    ``put`` never waits for the database unless ``max_queued`` rows are already waiting (then the
    caller inserts its own rows: back-pressure instead of unbounded memory). A failed insert is
    retried ``retries`` times with a growing pause, then logged with the number of rows lost."""

    def __init__(self, insert, max_queued: int = 50_000, retries: int = 5):
        self._insert = insert
        self.max_queued = max_queued
        self.retries = retries
        self._rows: list[dict] = []
        self._busy = False  # a batch taken from the queue is being inserted
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="funnelcast-score-log", daemon=True).start()

    def put(self, rows: list[dict]) -> None:
        with self._cond:
            if len(self._rows) < self.max_queued:
                self._rows.extend(rows)
                self._cond.notify_all()
                return
        self._insert(rows)  # full: this request writes its own rows

    def flush(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self._cond:
            while self._rows or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._rows:
                    self._cond.wait()
                batch, self._rows, self._busy = self._rows, [], True
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: list[dict]) -> None:
        for attempt in range(self.retries + 1):
            try:
                self._insert(batch)
                return
            except OperationsStoreGone:  # no retry brings a deleted file back
                log.error("logging %d served scores: the operations database is gone; they are lost", len(batch))
                return
            except Exception:  # noqa: BLE001 - the log must not take the worker down
                if attempt == self.retries:
                    log.exception("logging %d served scores failed %d times: they are lost", len(batch), attempt + 1)
                    return
                time.sleep(0.05 * 2**attempt)


#: The result of each reported outcome (see the module docstring).
ACCEPTED, DUPLICATE, CORRECTED = "accepted", "duplicate", "corrected"


@dataclass
class StoredOutcomes:
    """What ``upsert_outcomes`` did with each record, in the order given."""

    statuses: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """``created`` / ``updated`` / ``unchanged`` totals (accepted / corrected / duplicate)."""
        return {"created": self.statuses.count(ACCEPTED), "updated": self.statuses.count(CORRECTED),
                "unchanged": self.statuses.count(DUPLICATE)}


def _insert_if_absent(conn: Connection, row: dict[str, Any]) -> bool:
    """Insert ``row`` unless its ``(task, record_id)`` is stored; whether it was inserted. Never raises
    on the unique key: ``ON CONFLICT DO NOTHING`` where the dialect has it, else a savepoint."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(outcomes).values(**row).on_conflict_do_nothing(index_elements=["task", "record_id"])
        # RETURNING says whether the row went in (rowcount is not reliable once the driver returns the new id)
        return conn.execute(stmt.returning(outcomes.c.id)).first() is not None
    try:
        with conn.begin_nested():
            conn.execute(outcomes.insert().values(**row))
        return True
    except IntegrityError:
        return False


def _upsert_outcome(conn: Connection, item: dict[str, Any], now: datetime) -> str:
    occurred = _utc(item["occurred_at"])
    row = {"task": item["task"], "record_id": item["record_id"], "outcome": item["outcome"], "occurred_at": occurred,
           "received_at": now}
    if _insert_if_absent(conn, row):
        return ACCEPTED
    key = (outcomes.c.task == item["task"]) & (outcomes.c.record_id == item["record_id"])
    changed = (outcomes.c.outcome != item["outcome"]) | (outcomes.c.occurred_at != occurred)
    done = conn.execute(outcomes.update().where(key & changed).values(outcome=item["outcome"], occurred_at=occurred,
                                                                      received_at=now))
    return CORRECTED if done.rowcount else DUPLICATE


@dataclass
class _Request:
    version: str
    as_of: pd.Timestamp
    rows: list[tuple]  # the scored feature rows, as plain tuples (a few KB per lead)
    n: int


class RecentTraffic:
    """The latest scoring requests (up to ``max_records`` leads) kept in memory, per task."""

    def __init__(self, max_records: int = 5000):
        self.max_records = max_records
        self._items: dict[str, deque[_Request]] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, task: str, version: str, as_of: pd.Timestamp, rows: list[tuple], n: int) -> None:
        """Keep a request's feature rows (tuples in the order of the model's features)."""
        with self._lock:
            q = self._items.setdefault(task, deque())
            q.append(_Request(version, as_of, rows, n))
            self._counts[task] = self._counts.get(task, 0) + n
            while self._counts[task] > self.max_records and len(q) > 1:
                self._counts[task] -= q.popleft().n

    def requests(self, task: str) -> list[_Request]:
        with self._lock:
            return list(self._items.get(task, ()))
