"""Health, readiness and the registered models."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from features.settings import Settings, StoreNotFound
from models.registry import NOT_TRAINED_PREFIX, describe_versions
from models.tasks import Task
from serving.deps import (
    LOAD_FAILED,
    SERVED_TASKS,
    SHRANK,
    SettingsDep,
    StoreMissing,
    registry_client,
    store_missing_reason,
    store_present,
)
from serving.errors import client_safe
from serving.records import EXPORT_TABLES
from serving.schemas.common import error_responses
from serving.schemas.live import SnapshotState
from serving.schemas.ops import (
    DataReadiness,
    FloorOutcome,
    Health,
    ModelsResponse,
    OperationsReadiness,
    ModelVersion,
    Readiness,
    StoreReadiness,
    TaskReadiness,
)
from serving.security import ApiKeyDep
from serving.store import GONE, NOT_YET, PRESENT

log = logging.getLogger("funnelcast.serving")
router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no key needed)."""
    return Health(status="ok")


def _task_states(state: Any) -> dict[str, TaskReadiness]:
    out = {}
    for task in SERVED_TASKS:
        model = state.models.get(task.value)
        reason = state.load_errors.get(task.value)
        if model is not None:
            out[task.value] = TaskReadiness(state="loaded", version=model.version)
        elif reason is not None and reason.startswith(LOAD_FAILED):
            out[task.value] = TaskReadiness(state="failed", reason=client_safe(reason))
        elif reason is not None and reason.startswith(NOT_TRAINED_PREFIX):  # the export cannot train it (yet)
            out[task.value] = TaskReadiness(state="not_trained", reason=client_safe(reason))
        else:
            out[task.value] = TaskReadiness(state="not_registered", reason=client_safe(reason or "not registered"))
    return out


def _data_state(state: Any) -> DataReadiness:
    problem = getattr(state, "export_error", None)
    if problem is not None and SHRANK in problem:  # refused: the answers come from the last good export
        return DataReadiness(state="shrunken", reason=problem)
    export = getattr(state, "configured_export", None)
    if export is not None:
        rows = {t: len(export.table(t)) for t in EXPORT_TABLES if export.table(t) is not None}
        return DataReadiness(state="readable", rows=rows)
    if (rows := getattr(state, "export_rows", None)) and problem is None:  # read by the last refresh's child process
        return DataReadiness(state="readable", rows=rows)
    problem = getattr(state, "export_error", None)
    if problem is not None:
        return DataReadiness(state="unreadable", reason=problem)
    return DataReadiness(state="not_read_yet")


def _store_state(state: Any) -> StoreReadiness:
    """The MLflow store, by one ``stat`` of its file per call: present, missing (never there: refused,
    never created) or gone (there when this process looked before, deleted since)."""
    settings: Settings = state.settings
    db = settings.local_tracking_db()
    kind, name = ("sqlite", db.name) if db is not None else (settings.resolved_tracking_uri().split(":", 1)[0], None)
    presence = getattr(state, "mlflow_presence", None)
    status = presence.status() if presence is not None else (PRESENT if store_present(settings) else NOT_YET)
    if status == PRESENT:
        return StoreReadiness(state="present", kind=kind, name=name)
    if status == GONE:
        log.error("the MLflow store %s was deleted while the server ran", db)
        served = ", ".join(f"{n} version {m.version}" for n, m in sorted(state.models.items())) or "none"
        reason = (f"the MLflow store {name} was deleted while the server ran: the models already loaded ({served}) "
                  "keep scoring, but no reload, alias poll or model listing can read the registry; restore the file "
                  "(or retrain) and reload")
        return StoreReadiness(state="gone", kind=kind, name=name, reason=reason)
    return StoreReadiness(state="missing", kind=kind, name=name, reason=store_missing_reason(settings))


def _operations_state(state: Any) -> OperationsReadiness:
    """The operations database, by one ``stat`` of its file per call; never created here."""
    ops = state.refresher.store.ops
    kind = "sqlite" if ops.presence.path is not None else ops.name
    name = ops.presence.path.name if ops.presence.path is not None else None
    status = ops.status()
    if status == PRESENT:
        return OperationsReadiness(state="present", kind=kind, name=name)
    if status == NOT_YET:
        return OperationsReadiness(state="none", kind=kind, name=name, reason=(
            f"no operations store yet: {name} is created by the first write (an outcome, a refresh, a served score)"))
    return OperationsReadiness(state="gone", kind=kind, name=name, reason=(
        f"the operations database {name} was deleted while the server ran: scoring with the loaded models "
        "continues, but outcomes, served scores and snapshots cannot be stored or read; restore the file, or "
        "restart the server to start an empty one"))


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request):
    """Ready when the lead-quality model is loaded and no registered model failed to load (no key
    needed). Every served task says loaded (its version), failed (why) or not registered; the
    configured export says readable (rows per table), unreadable (why) or not read yet; ``store``
    says whether the MLflow store is there (missing: which one and what to run; it is checked on
    every call and never created; gone: deleted while the server ran, not ready though the loaded
    models keep scoring); ``operations`` the same of the operations database (none: no operations
    store yet, a read never creates one; gone: not ready); ``snapshot`` says which scored snapshot is served, its age,
    why the latest refresh failed if it did, and since when a refresh runs (``refreshing`` while there is no
    snapshot yet: the first scores are being computed)."""
    state = request.app.state
    loaded = {name: m.version for name, m in state.models.items()}
    tasks = _task_states(state)
    store, operations = _store_state(state), _operations_state(state)
    snapshot = snapshot_state(state) if operations.state != "gone" else None
    parts = dict(models=loaded, tasks=tasks, data=_data_state(state), store=store, operations=operations,
                 snapshot=snapshot)
    failed = [f"{name}: {t.reason}" for name, t in tasks.items() if t.state == "failed"]
    gone = [s.reason or "" for s in (store, operations) if s.state == "gone"]
    lead = tasks[Task.LEAD_QUALITY.value]
    if lead.state == "loaded" and not failed and not gone:
        return Readiness(ready=True, **parts)
    if lead.state != "loaded" and store.state == "missing":
        reason = "; ".join([store.reason or "", *failed, *gone])  # one reason, not the same one per task
    else:
        reason = "; ".join(([] if lead.state == "loaded" else [f"lead_quality: {lead.reason}"]) + failed + gone)
    body = Readiness(ready=False, reason=reason, **parts)
    return JSONResponse(body.model_dump(mode="json"), status_code=503)


def snapshot_state(state) -> SnapshotState | None:
    """The served snapshot (the latest good one), the latest refresh's status and error, and when the
    refresh running now started; ``refreshing`` while the first snapshot is being computed."""
    try:
        store = state.refresher.store
        good, latest = store.latest(), store.latest(ok_only=False)
    except Exception as exc:  # noqa: BLE001 - readiness must answer even when the database does not
        return SnapshotState(status="failed", error=f"cannot read the operations database: {client_safe(str(exc))}")
    started = state.refresher.started_at
    if good is None and (started is not None or state.refresher.busy):
        return SnapshotState(status="refreshing", refresh_started_at=started)
    if latest is None:
        if store.ops.status() == NOT_YET:
            return SnapshotState(status="none", error="no operations store yet: no refresh has run; run "
                                 "`funnelcast refresh` or POST /v1/admin/refresh")
        return SnapshotState(status="none", error="no refresh yet: run `funnelcast refresh`")
    out = SnapshotState(status=latest.status, error=latest.error, refresh_started_at=started)
    if good is not None:
        out = out.model_copy(update={"snapshot_id": good.id, "as_of": good.as_of, "refreshed_at": good.refreshed_at,
                                     "age_seconds": good.age_seconds()})
    return out


def baselines_beside(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each baseline's figures of the evaluation metrics (``eval_<m>``), from ``baseline_<name>_<m>``."""
    evaluated = sorted((k.removeprefix("eval_") for k in metrics if k.startswith("eval_")), key=len, reverse=True)
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith("baseline_"):
            continue
        m = next((m for m in evaluated if key.endswith(f"_{m}") and len(key) > len(m) + len("baseline_") + 1), None)
        if m is not None:
            out.setdefault(key[: -len(m) - 1].removeprefix("baseline_"), {})[m] = value
    return out


def floor_outcome(metrics: dict[str, float]) -> FloorOutcome | None:
    if "floor_passed" not in metrics:
        return None
    return FloorOutcome(passed=bool(metrics["floor_passed"]), model=metrics["floor_model"],
                        baseline=metrics["floor_baseline"], allowance=metrics["floor_allowance"])


@router.get("/v1/models", response_model=ModelsResponse, dependencies=[ApiKeyDep], tags=["models"],
            responses=error_responses(401, 503))
def list_models(request: Request, settings: SettingsDep) -> ModelsResponse:
    """Registered versions of every task with their aliases, training window and evaluation metrics,
    each baseline's figures on the same window beside them, and the baseline floor's outcome.

    A missing MLflow store is a 503 naming the store and what to run (``/readyz`` says the same);
    it is never created empty."""
    try:
        client = registry_client(settings)
    except StoreNotFound as exc:
        log.error("GET /v1/models: %s", exc)
        raise StoreMissing(settings) from None
    loaded = {(m.name, m.version) for m in request.app.state.models.values()}
    out = []
    for task in Task:
        for v in describe_versions(client, task.value):
            out.append(ModelVersion(**v, loaded=(v["name"], v["version"]) in loaded,
                                    baselines=baselines_beside(v["metrics"]), floor=floor_outcome(v["metrics"])))
    return ModelsResponse(models=out)
