"""Refresh: read the configured source, score everything open with the champions, store one snapshot.

One refresh reads the export (``FUNNELCAST_DATA``, a folder or a SQL URL; else the sample) with
bad rows skipped and reported, scores every open lead, open deal and owned account with the
loaded models (:mod:`models.worklist`), compares each score with the entity's previous
snapshots (trend, previous probability, new or changed for the feed), computes the funnel and
forecast answers the API and the managers' page ask for, and stores all of it as one snapshot
in one transaction (:mod:`serving.snapshots`). A refresh that fails is stored as a failed
snapshot with its error; the API keeps serving the last good one.

Entry points: ``funnelcast refresh`` (serving/cli.py), ``POST /v1/admin/refresh``, the schedule
in ``serve`` (``FUNNELCAST_REFRESH_EVERY``), the start of ``serve`` when the configured source has no
snapshot of the loaded models yet (``FUNNELCAST_REFRESH_AT_START``, in the background: meanwhile
``/readyz`` says ``refreshing`` and the routes below answer 503 at once), a model reload, and the
first request of ``/v1/worklist``, ``/v1/funnel`` or ``/v1/forecast`` when no snapshot exists yet
and none is being computed.

In the API a refresh runs in a child process (``FUNNELCAST_REFRESH_PROCESS``, on by default),
started with ``multiprocessing``'s spawn method (a fork of a threaded server is unsafe) at a lower
priority (``os.nice(FUNNELCAST_REFRESH_NICE)``): it gets the worker's loaded models and writes the
snapshot to the operations database as ``funnelcast refresh`` does; the worker only reads the new
snapshot. So a refresh takes CPU only when scoring leaves some, and the export it reads (hundreds
of MB) leaves with the child instead of staying in the worker. A child that dies is recorded as a
failed refresh, like any other.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import Request

from features.contract import Export
from features.errors import FunnelcastError
from features.io import load_export
from features.settings import Settings, redact_uri
from models.registry import LoadedModel
from models.tasks import Task
from models.worklist import WORK_COLUMNS, account_items, deal_items, effort_payload, efforts_of, lead_items, trend
from serving.errors import RequestProblem, client_safe
from serving.forecasting import forecast_answer, funnel_answer
from serving.snapshots import SnapshotRow, SnapshotStore, payload_key
from serving.deps import refuse_shrunken, state_cached
from serving.store import OperationsStore

__all__ = ["RefreshResult", "Refresher", "configured_source", "refresh", "refresher", "snapshot_answer",
           "latest_snapshot", "refresh_at_start", "PAYLOADS"]

log = logging.getLogger("funnelcast.refresh")


class ExportUnreadable(FunnelcastError):
    """The configured CRM source cannot be read (the server's data: a 503 to clients, not their 422)."""

#: The funnel and forecast answers stored with each snapshot: the routes' defaults and the groupings
#: the managers' page uses (other parameters are computed when asked).
PAYLOADS: dict[str, list[dict[str, Any]]] = {
    "funnel": [{"as_of": None, "by": by, "period_days": 91} for by in ("none", "owner_id", "team", "industry", "product")],
    "forecast": [{"as_of": None, "horizon_days": None, "by": by, "sims": sims, "seed": 0, "period": period}
                 for by, sims, period in (("owner_id", 5000, None), ("owner_id", 2000, None), ("none", 5000, None),
                                          ("team", 5000, None), ("owner_id", 2000, "quarter"),
                                          ("owner_id", 2000, "month"))],
}
#: Without any good snapshot, a request runs a refresh again only this long after a failed one.
RETRY_FAILED_SECONDS = 60.0
_ROW_TABLES = ("accounts", "leads", "opportunities", "stage_history", "activities")
_PARTS = ((Task.LEAD_QUALITY, "lead", "leads"), (Task.STAGE_CONVERSION, "deal", "deals"),
          (Task.HIGH_VALUE, "account", "accounts"))


def configured_source(settings: Settings) -> str:
    """The CRM source a refresh reads: ``FUNNELCAST_DATA`` (folder or SQL URL), else the sample."""
    return settings.data or str(settings.sample_export)


@dataclass
class RefreshResult:
    status: str
    source: str
    store: str
    snapshot_id: int | None = None
    as_of: datetime | None = None
    refreshed_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    bad_rows: int = 0
    bad_rows_summary: str | None = None
    duration_seconds: float = 0.0
    error: str | None = None
    data_problem: bool = False  # the error is the data's (a domain error), not the service's
    efforts: Any = None  # models.effort.Efforts measured on the export (the worklist's default efforts)
    rows: dict[str, int] = field(default_factory=dict)  # rows per table of the export read
    pid: int = field(default_factory=os.getpid)  # the process that ran it, and its niceness
    nice: int = field(default_factory=lambda: os.nice(0))
    export: Export | None = field(default=None, repr=False)


def _scored(export: Export, models: Mapping[str, LoadedModel],
            load_errors: Mapping[str, str]) -> tuple[pd.DataFrame, list[str]]:
    """Every item the loaded models can score, with model and version; the parts left out, named."""
    parts, missing = [], []
    by_kind: dict[str, pd.DataFrame] = {}
    for task, kind, label in _PARTS:
        model = models.get(task.value)
        if model is None:
            why = load_errors.get(task.value, f"run `funnelcast train --task {task}`")
            missing.append(f"{label}: no {task.value} model loaded ({why})")
            continue
        if kind == "account":
            opened = pd.concat([by_kind.get("lead", pd.DataFrame(columns=WORK_COLUMNS)),
                                by_kind.get("deal", pd.DataFrame(columns=WORK_COLUMNS))], ignore_index=True)
            frame = account_items(export, model.scorer, export.exported_at, opened)
        else:
            build = lead_items if kind == "lead" else deal_items
            frame = build(export, model.scorer, export.exported_at)
        by_kind[kind] = frame
        parts.append(frame.assign(model=model.name, version=str(model.version)))
    parts = [p for p in parts if len(p)]
    items = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*WORK_COLUMNS, "model", "version"])
    teams = export.reps.set_index("owner_id")["team"] if export.reps is not None and "team" in export.reps else None
    items["team"] = items["owner_id"].map(teams).astype(object) if teams is not None else None
    return items, missing


def _compared(items: pd.DataFrame, store: SnapshotStore, settings: Settings) -> pd.DataFrame:
    """Each item with its trend over the previous snapshots and this one, its previous probability,
    and whether it is new or changed for a CRM (score, grade, probability to 3 decimals, reasons)."""
    before = store.previous(list(items["kind"].unique()) if len(items) else [], settings.trend_points - 1)
    items = items.rename(columns={"id": "entity_id"})
    history: dict[tuple[str, str], list[float]] = {}
    last: dict[tuple[str, str], tuple] = {}
    for r in before.itertuples(index=False):
        key = (r.kind, r.entity_id)
        history.setdefault(key, []).append(float(r.probability))
        grade = r.grade if isinstance(r.grade, str) else None  # a database NULL reads back as NaN
        last[key] = (int(r.score), grade, round(float(r.probability), 3), list(r.reasons))
    trends, previous, changed = [], [], []
    for r in items.itertuples(index=False):
        key = (r.kind, r.entity_id)
        past = history.get(key, [])
        trends.append(trend([*past, float(r.probability)], settings.trend_points, settings.trend_threshold_points))
        previous.append(past[-1] if past else None)
        grade = r.grade if isinstance(r.grade, str) else None
        changed.append(last.get(key) != (int(r.score), grade, round(float(r.probability), 3), list(r.reasons)))
    items = items.assign(trend=trends, previous_probability=previous, changed=changed)
    items["grade"] = [g if isinstance(g, str) else None for g in items["grade"]]
    for c in ("name", "owner_id", "team"):
        items[c] = [v if isinstance(v, str) else None for v in items[c]]
    return items


def _payloads(export: Export, models: Mapping[str, LoadedModel]) -> dict[str, Any]:
    """The JSON of the funnel and forecast answers of :data:`PAYLOADS` (forecast: with a deal model)."""
    out: dict[str, Any] = {}
    for params in PAYLOADS["funnel"]:
        try:
            out[payload_key("funnel", params)] = funnel_answer(export, **params).model_dump(mode="json")
        except RequestProblem:  # no deal in the period (a leads-only export): the route answers why, live
            continue
    deal_model = models.get(Task.STAGE_CONVERSION.value)
    if deal_model is not None:
        for params in PAYLOADS["forecast"]:
            answer = forecast_answer(deal_model, export, **params)
            out[payload_key("forecast", params)] = answer.model_dump(mode="json")
    return out


def refresh(settings: Settings, models: Mapping[str, LoadedModel], store: SnapshotStore,
            load_errors: Mapping[str, str] | None = None, source: str | None = None) -> RefreshResult:
    """Read the source, score, compare, compute the answers and store one snapshot (ok or failed)."""
    source = source or configured_source(settings)
    started, now = time.perf_counter(), datetime.now(UTC)
    versions = {name: str(m.version) for name, m in models.items()}
    result = RefreshResult(status="failed", source=source, store=store.ops.url, refreshed_at=now, models=versions)
    try:
        try:
            export, report = load_export(source, open_stages=settings.open_stages, skip_bad_rows=True)
            refuse_shrunken(settings, models, export, source)  # the last good snapshot stays served
        except FunnelcastError as exc:
            raise ExportUnreadable(f"the CRM export cannot be read: {exc}") from exc
        result.bad_rows = len(report.bad_rows)
        result.bad_rows_summary = report.summary(limit=20) if report else None
        items, result.missing = _scored(export, models, load_errors or {})
        efforts = effort_payload(export, export.exported_at, items)  # the worklist's efforts, measured on this export
        result.efforts = efforts_of(efforts)[0]
        items = _compared(items, store, settings)
        payloads = {**_payloads(export, models), payload_key("efforts", {}): efforts}
        result.as_of, result.export = export.exported_at.to_pydatetime(), export
        result.rows = {t: len(export.table(t)) for t in _ROW_TABLES if export.table(t) is not None}
        result.counts = {kind: int((items["kind"] == kind).sum()) for kind in ("lead", "deal", "account")}
        result.counts["changed"] = int(items["changed"].sum())
        result.status = "ok"
    except Exception as exc:  # noqa: BLE001 - stored as a failed snapshot; the last good one stays served
        result.data_problem = isinstance(exc, FunnelcastError)
        if not result.data_problem:
            log.exception("refresh from %s failed", source)
        result.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FunnelcastError) else str(exc)
        items, payloads = None, None
    result.duration_seconds = time.perf_counter() - started
    row = {"as_of": result.as_of, "refreshed_at": now, "source": source, "status": result.status,
           "error": result.error, "models": versions, "counts": result.counts, "missing": result.missing,
           "bad_rows": result.bad_rows, "bad_rows_summary": result.bad_rows_summary,
           "duration_seconds": result.duration_seconds}
    result.snapshot_id = store.write(row, items, payloads)
    return result


# --- in the API -----------------------------------------------------------------------------------


class Refresher:
    """The app's refreshes: one at a time, against the app's loaded models and its operations store."""

    def __init__(self, state: Any):
        self.state = state
        # the one operations store of the app (outcomes and served scores use it too)
        self.store = SnapshotStore(state_cached(state, "ops_store", lambda: OperationsStore(state.settings.resolved_store_url())))
        self.lock = threading.Lock()
        self.frames: dict[int, pd.DataFrame] = {}  # a snapshot's scores, by snapshot id (new id: new frame)
        self._waiting: threading.Thread | None = None  # the background refresh not yet started, if any
        self._waiting_lock = threading.Lock()
        self.started_at: datetime | None = None  # when the refresh running now in this process started
        self.child_pid: int | None = None  # the child process of the refresh running now (refresh_process)
        self.stopping = False  # the server is shutting down: a refresh's child that ends is not a failure

    @property
    def busy(self) -> bool:
        """A refresh runs in this process, or a background one waits to start."""
        return self._waiting is not None or self.lock.locked()

    def run(self, wait: bool = True) -> RefreshResult | None:
        """Refresh now; with ``wait=False`` give up (``None``) when a refresh is already running."""
        if not self.lock.acquire(blocking=wait):
            return None
        try:
            return self._run_locked()
        finally:
            self.lock.release()

    def _run_locked(self) -> RefreshResult:
        self.started_at = datetime.now(UTC)  # /readyz: refreshing since then
        try:
            return self._refresh_locked()
        finally:
            self.started_at = None

    def _refresh_locked(self) -> RefreshResult:
        settings = self.state.settings
        if settings.refresh_process and not _in_memory(self.store.ops.url):
            result = self._in_child(settings)
            if result.status == "ok":  # the export stayed in the child: live answers read it again when asked
                self.state.configured_export = None
        else:
            result = refresh(settings, self.state.models, self.store, self.state.load_errors)
            if result.export is not None:
                self.state.configured_export = result.export  # the answers computed live read the same data
        if result.status == "ok":
            self.state.export_error = None
            self.state.export_rows = result.rows  # /readyz: the data source is readable, these rows
        elif result.error and result.error.startswith("the CRM export cannot be read"):
            self.state.export_error = client_safe(result.error)  # /readyz: the data source is unreadable
        log.info("refresh %s: snapshot %s, %s in %.1f s (process %s, nice %s)", result.status, result.snapshot_id,
                 result.counts, result.duration_seconds, result.pid, result.nice)
        return result

    def _in_child(self, settings: Settings) -> RefreshResult:
        """:func:`refresh` in a spawned child process at ``refresh_nice``; a child that dies is a failed refresh."""
        models, load_errors = dict(self.state.models), dict(self.state.load_errors)
        started, now = time.perf_counter(), datetime.now(UTC)
        context = multiprocessing.get_context("spawn")
        records = context.Queue()  # the child's log records, handled here by this process's loggers
        listener = logging.handlers.QueueListener(records, _Forward())
        listener.start()
        versions = {name: str(m.version) for name, m in models.items()}
        try:
            with ProcessPoolExecutor(1, mp_context=context, initializer=_child_started,
                                     initargs=(settings.refresh_nice, records)) as pool:
                self.child_pid = pool.submit(os.getpid).result()  # the one child, which :meth:`stop` may end
                if self.stopping:
                    raise _Stopped
                return pool.submit(_refresh_in_child, settings, models, load_errors).result()
        except Exception as exc:  # noqa: BLE001 - the child died or could not start: recorded, the last good stays
            if self.stopping:  # ended by the server's shutdown: nothing to record, the next start refreshes
                log.warning("refresh stopped: the server is shutting down")
                return RefreshResult(status="stopped", source=configured_source(settings), store=self.store.ops.url,
                                     refreshed_at=now, models=versions, error="stopped: the server shut down",
                                     duration_seconds=time.perf_counter() - started)
            log.exception("the refresh's child process failed")
            error = f"the refresh's child process failed: {type(exc).__name__}: {exc}"
            row = {"as_of": None, "refreshed_at": now, "source": configured_source(settings), "status": "failed",
                   "error": error, "models": versions, "counts": {}, "missing": [], "bad_rows": 0,
                   "bad_rows_summary": None, "duration_seconds": time.perf_counter() - started}
            snapshot_id = self.store.write(row, None, None)
            return RefreshResult(status="failed", source=row["source"], store=self.store.ops.url, refreshed_at=now,
                                 models=versions, error=error, snapshot_id=snapshot_id,
                                 duration_seconds=row["duration_seconds"])
        finally:
            self.child_pid = None
            listener.stop()
            records.close()

    def stop(self) -> None:
        """At the server's shutdown: end the refresh's child process, if one runs, instead of waiting for
        it (a first refresh of a large CRM takes minutes); its snapshot is not written. A refresh in a
        worker thread (``FUNNELCAST_REFRESH_PROCESS=false``) ends with the process."""
        self.stopping = True
        pid = self.child_pid
        if pid is not None:
            log.warning("shutting down: ending the refresh's child process %s", pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # it had just finished
                pass

    def run_in_background(self) -> threading.Thread:
        """Refresh in a thread, after the refresh running now (if any). Calls while one such refresh
        still waits to start get that one: a burst of reloads is one more refresh, not a queue of
        threads each holding a snapshot's worth of memory."""
        with self._waiting_lock:
            if self._waiting is not None:
                return self._waiting
            thread = threading.Thread(target=self._background, name="funnelcast-refresh", daemon=True)
            self._waiting = thread
        thread.start()
        return thread

    def _background(self) -> None:
        with self.lock:
            with self._waiting_lock:  # started: a change from now on needs a refresh of its own
                self._waiting = None
            try:
                self._run_locked()
            except Exception:  # noqa: BLE001 - a background refresh must not die silently
                log.exception("background refresh failed")

    def scores(self, snapshot: SnapshotRow) -> pd.DataFrame:
        frame = self.frames.get(snapshot.id)
        if frame is None:
            frame = self.store.scores(snapshot.id)
            self.frames = {snapshot.id: frame}  # keep only the latest
        return frame


class _Stopped(Exception):
    """The server shut down before the refresh's child process began the refresh."""


def _in_memory(url: str) -> bool:
    """An in-memory SQLite store: another process cannot see it, so the refresh stays in this one."""
    return url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url


class _Forward(logging.Handler):
    """Hands a record from the refresh's child process to the logger of the same name here."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _child_started(nice: int, records: Any) -> None:
    """The refresh's child process: nicer than its worker, its log records sent to the worker. Ctrl+C in
    the server's terminal reaches the whole process group: the server shuts down and ends this child
    (:meth:`Refresher.stop`), which does not fail on its own with a KeyboardInterrupt meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(nice)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    root.setLevel(logging.INFO)


def _refresh_in_child(settings: Settings, models: Mapping[str, LoadedModel],
                      load_errors: Mapping[str, str]) -> RefreshResult:
    """The child process's refresh: its own connection to the operations database; the export stays here."""
    store = SnapshotStore(OperationsStore(settings.resolved_store_url()))
    try:
        return replace(refresh(settings, models, store, load_errors), export=None)
    finally:
        store.ops.engine.dispose()


def refresher(state: Any) -> Refresher:
    """The app's :class:`Refresher` (created with the app)."""
    return state.refresher


def latest_snapshot(state: Any) -> SnapshotRow:
    """The latest good snapshot; when there is none yet, one refresh now (one at a time) or a 503.

    While a refresh runs (or waits to start) in this process, the answer is a 503 at once, not a
    request held open until the scores are there."""
    r = refresher(state)
    snap = r.store.latest()
    if snap is not None:
        return snap
    if r.busy:
        raise _being_computed(r)
    attempt = r.store.latest(ok_only=False)
    if attempt is not None and attempt.age_seconds() < RETRY_FAILED_SECONDS:  # a request does not retry it at once
        raise RequestProblem(f"no scored snapshot yet: the last refresh failed ({client_safe(attempt.error or '')}); fix it and run "
                             "`funnelcast refresh`", status_code=503, headers={"Retry-After": "60"})
    result = r.run(wait=False)
    snap = r.store.latest()
    if snap is not None:
        return snap
    if result is None:
        raise _being_computed(r)
    raise RequestProblem(f"no scored snapshot yet: the refresh failed ({client_safe(result.error or '')}); fix it and run "
                         "`funnelcast refresh`", status_code=503, headers={"Retry-After": "60"})


#: Retry-After of a request while the first scores are computed (the managers' page wakes on /readyz sooner).
COMPUTING_RETRY_SECONDS = 10


def _being_computed(r: Refresher) -> RequestProblem:
    """The 503 of a request that arrives while the first snapshot is being computed: what is happening,
    since when, and what to do (wait; /readyz says when it is done)."""
    started = r.started_at
    since = (f"started {started:%H:%M:%S} UTC, {max(0.0, (datetime.now(UTC) - started).total_seconds()):.0f} s ago"
             if started is not None else "about to start")
    return RequestProblem(
        f"no scored snapshot yet: a refresh is running to compute the first scores ({since}; about half a minute "
        "on a small CRM, minutes on a large one); retry after the Retry-After seconds, or watch GET /readyz, whose "
        "snapshot.status turns from refreshing to ok when the scores are there", status_code=503,
        headers={"Retry-After": str(COMPUTING_RETRY_SECONDS)})


def _has_source(settings: Settings) -> bool:
    """A CRM source is configured: ``FUNNELCAST_DATA``, or the sample export under home."""
    return bool(settings.data) or settings.sample_export.is_dir()


def refresh_at_start(state: Any) -> threading.Thread | None:
    """At the app's start: the first refresh in the background (its thread), when a source is configured
    and no good snapshot scored by the loaded models' versions from that source exists yet; else ``None``
    (the latest snapshot is current: it is served until the next refresh)."""
    settings: Settings = state.settings
    if not _has_source(settings):
        return None
    r = refresher(state)
    try:
        snap = r.store.latest()
    except Exception:  # noqa: BLE001 - a store that cannot be read at start: the first request tries again
        log.exception("cannot read the latest snapshot at start; the first request will refresh")
        return None
    versions = {name: str(m.version) for name, m in state.models.items()}
    if snap is not None and snap.models == versions and snap.source == configured_source(settings):
        return None
    why = ("no scored snapshot yet" if snap is None else
           f"snapshot {snap.id} was scored by {snap.models or 'no model'} from {redact_uri(snap.source)}")
    log.info("refreshing at start in the background: %s", why)
    return r.run_in_background()


def snapshot_answer(request: Request, name: str, params: dict[str, Any]) -> Any | None:
    """The stored answer of route ``name`` with ``params`` from the latest good snapshot (``None``:
    not stored, compute it). Answers as of another time are never stored."""
    if params.get("as_of") is not None:
        return None
    snap = latest_snapshot(request.app.state)
    return refresher(request.app.state).store.payload(snap.id, payload_key(name, params))


async def refresh_every(state: Any, seconds: float) -> None:
    """Refresh at start and then every ``seconds`` (skipped while one runs); failures are stored, logged."""
    while True:
        try:
            await asyncio.to_thread(refresher(state).run, False)
        except Exception:  # noqa: BLE001 - the schedule must not stop the API
            log.exception("scheduled refresh failed")
        await asyncio.sleep(seconds)
