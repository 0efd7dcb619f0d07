"""Typed dependencies: the settings, a model per task, the configured export, and the app's
lazily built shared objects.

``model_dependency(task)`` is the one way a route gets a model: it reads the models the app
serves (swapped in one assignment on reload) and answers 503 with the reason when the task's
model is not loaded. It is ``async def`` because it only reads the app's state: FastAPI runs
a plain ``def`` dependency in its thread pool, one hand-off per request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends, Request

from features.contract import Export
from features.errors import FunnelcastError, ModelNotAvailable
from features.io import load_export
from features.profile import ExportShrunk, export_profile, shrinkage, source_key
from features.settings import Settings, StoreNotFound
from models.registry import LoadedModel, configure
from models.tasks import Task
from serving.errors import RequestProblem, client_safe
from serving.middleware import Busy

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger("funnelcast.serving")

T = TypeVar("T")

#: Models the API serves; each is loaded by alias at start (only lead_quality is needed to be ready).
SERVED_TASKS = (Task.LEAD_QUALITY, Task.HIGH_VALUE, Task.STAGE_CONVERSION)
#: How the reason of a registered model that failed to load starts (``/readyz`` says ``failed``).
LOAD_FAILED = "loading failed"


def load_failure(exc: BaseException) -> str:
    """The reason a model failed to load: never empty (the type when the message is)."""
    text = str(exc).strip()
    return f"{LOAD_FAILED}: {type(exc).__name__}" + (f": {text}" if text else "")


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


@cache
def model_dependency(task: Task) -> Callable[[Request], Awaitable[LoadedModel]]:
    """The dependency giving ``task``'s loaded model (503 naming why when it is not loaded).

    One function per task (cached), so tests can swap it with ``app.dependency_overrides``."""

    async def loaded_model(request: Request) -> LoadedModel:
        loaded = request.app.state.models.get(task.value)
        if loaded is None:
            reason = request.app.state.load_errors.get(task.value, f"not loaded; run `funnelcast train --task {task}`")
            # starting up, or a store that could not be read, may pass; a model never registered does not
            raise ModelNotAvailable(task.value, reason, transient=reason == "starting" or LOAD_FAILED in reason)
        return loaded

    loaded_model.__name__ = f"{task.value}_model"
    return loaded_model


# --- the MLflow store: opened, never created ---------------------------------------------------


def _home_found(settings: Settings) -> str:
    """How the project home was found, in words without the server's paths."""
    origin = settings.home_origin
    if origin.startswith("found from"):
        return "found walking up from the server's working folder"
    if origin.startswith("marked by"):
        return "marked by a funnelcast.toml above the server's working folder"
    if origin.startswith("the per-user default"):
        return "the per-user default folder: no .funnelcast/ or funnelcast.toml above the server's working folder"
    return "set by FUNNELCAST_HOME"


def store_missing_reason(settings: Settings) -> str:
    """What a client reads when the SQLite MLflow store is missing: which store (its file name and
    how it was chosen, no server path) and what to run. The server log has the full path."""
    db = settings.local_tracking_db()
    name = db.name if db is not None else "mlflow.db"
    if db is not None and db.parent == settings.home:
        where = f"{name} in the project home ({_home_found(settings)})"
    else:
        where = f"{name}, the SQLite file FUNNELCAST_TRACKING_URI (or MLFLOW_TRACKING_URI) names"
    return (f"no MLflow store: {where} does not exist, and the server never creates one; train first "
            "(`funnelcast train`, or `funnelcast run`), or point FUNNELCAST_HOME at the project that holds the models")


class StoreMissing(RequestProblem):
    """The MLflow store the server is configured with does not exist: the server's fault (503)."""

    def __init__(self, settings: Settings):
        super().__init__(store_missing_reason(settings), status_code=503, headers={"Retry-After": "60"})


def registry_client(settings: Settings) -> MlflowClient:
    """A client of the configured MLflow store, for every use on the serving side (loading at start,
    reload, alias polling, ``/v1/models``). It never creates a store: MLflow makes an empty SQLite file
    as soon as a client is built on a missing one, so a missing file is refused first
    (:class:`~features.settings.StoreNotFound`, naming the path for the log). A home moved since the
    store was last opened is followed (:func:`models.registry.follow_home`)."""
    settings.require_tracking_store()
    return configure(settings.resolved_tracking_uri(), home=settings.home)


def store_present(settings: Settings) -> bool:
    """Whether the configured MLflow store can be opened without creating it (a server URI: yes)."""
    try:
        settings.require_tracking_store()
    except StoreNotFound:
        return False
    return True


LeadModelDep = Annotated[LoadedModel, Depends(model_dependency(Task.LEAD_QUALITY))]
DealModelDep = Annotated[LoadedModel, Depends(model_dependency(Task.STAGE_CONVERSION))]
HighValueModelDep = Annotated[LoadedModel, Depends(model_dependency(Task.HIGH_VALUE))]

_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


def state_cached(state: Any, name: str, build: Callable[[], T]) -> T:
    """``state.<name>``, built by ``build()`` on first use, once even under concurrent requests
    (a lock per name: building one never waits for building another)."""
    value = getattr(state, name, None)
    if value is not None:
        return value
    with _locks_guard:
        lock = _locks.setdefault(name, threading.Lock())
    with lock:
        value = getattr(state, name, None)
        if value is None:
            value = build()
            setattr(state, name, value)
        return value


class ExportUnavailable(RequestProblem):
    """The server's configured export cannot be read: a fault of the server (503), not of the request."""

    def __init__(self, reason: str):
        super().__init__(f"the server's CRM export cannot be read: {reason}; the operator has the details in the log",
                         status_code=503, headers={"Retry-After": "60"})


def _scrub(message: str, source: str) -> str:
    """A load error without the server's paths or URL (the log line keeps them)."""
    for text in {source, str(Path(source).resolve())}:
        message = message.replace(text, "<the configured export>")
    return message


#: What the reason of a refused (shrunken) export says; ``/readyz`` reports its data as ``shrunken``.
SHRANK = "it shrank since"


def refuse_shrunken(settings: Settings, models: Mapping[str, LoadedModel], export: Export, source: str) -> None:
    """Raise :class:`~features.profile.ExportShrunk` (and log an error) when ``export``, read from
    ``source``, lost more than ``FUNNELCAST_MIN_EXPORT_SHARE`` of a table's rows, or its newest
    events, since a served model was trained on the same source. The reason names the model, the
    tables and both counts, never the source's path."""
    key = source_key(source)
    now = export_profile(export)
    for name, model in sorted(models.items()):
        then = model.scorer.metadata.get("export_profile") if isinstance(model.scorer.metadata, dict) else None
        if not isinstance(then, dict) or then.get("source") != key:
            continue  # trained on another source (or before profiles were recorded): nothing to compare
        short = shrinkage(now, then, settings.min_export_share)
        if short:
            reason = (f"{SHRANK} {name} version {model.version} was trained on it ({'; '.join(short)}; "
                      f"FUNNELCAST_MIN_EXPORT_SHARE={settings.min_export_share:g}): check the CRM sync, or retrain "
                      "on this export")
            log.error("refusing the CRM export %s: %s", source, reason)
            raise ExportShrunk(reason)


def _load_configured(state: Any) -> Export:
    settings: Settings = state.settings
    source = settings.data or str(settings.sample_export)
    try:
        export = load_export(source, open_stages=settings.open_stages, skip_bad_rows=True)[0]
        refuse_shrunken(settings, state.models, export, source)
    except ExportShrunk as exc:
        state.export_error = str(exc)
        raise ExportUnavailable(state.export_error) from exc
    except (FunnelcastError, OSError, ValueError) as exc:
        log.exception("the configured export %s cannot be read", source)
        state.export_error = client_safe(_scrub(str(exc) or type(exc).__name__, source))
        raise ExportUnavailable(state.export_error) from exc
    state.export_error = None
    return export


def configured_export(state: Any) -> Export:
    """The configured export (``FUNNELCAST_DATA``, else the sample), loaded once per process with
    bad rows skipped; the funnel, the forecast and the worklist all read this one copy. One that
    cannot be read is a 503 naming why (it is the server's data, not the client's)."""
    return state_cached(state, "configured_export", lambda: _load_configured(state))


def get_configured_export(request: Request) -> Export:
    # a plain def: the first call reads the export (seconds), in the thread pool, not on the event loop
    return configured_export(request.app.state)


ExportDep = Annotated[Export, Depends(get_configured_export)]


@contextmanager
def analytics_slot(state: Any) -> Iterator[None]:
    """A slot of the expensive analytics (funnel, forecast computed on the export, not read from a
    snapshot); 503 with Retry-After when ``FUNNELCAST_ANALYTICS_CONCURRENCY`` of them are already
    running. Answers read from the latest scored snapshot take no slot: they cost milliseconds."""
    guard = state.analytics
    try:
        guard.acquire()
    except Busy as exc:
        raise RequestProblem(f"busy: {exc}; retry after the Retry-After seconds", status_code=503,
                             headers={"Retry-After": "5"}) from exc
    try:
        yield
    finally:
        guard.release()
