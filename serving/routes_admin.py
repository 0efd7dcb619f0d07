"""Health, readiness and the registered models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from models.registry import configure, describe_versions
from models.tasks import Task
from serving.deps import LOAD_FAILED, SERVED_TASKS, SHRANK, SettingsDep
from serving.errors import client_safe
from serving.records import EXPORT_TABLES
from serving.schemas.common import error_responses
from serving.schemas.live import SnapshotState
from serving.schemas.ops import (
    DataReadiness,
    FloorOutcome,
    Health,
    ModelsResponse,
    ModelVersion,
    Readiness,
    TaskReadiness,
)
from serving.security import ApiKeyDep

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


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request):
    """Ready when the lead-quality model is loaded and no registered model failed to load (no key
    needed). Every served task says loaded (its version), failed (why) or not registered; the
    configured export says readable (rows per table), unreadable (why) or not read yet;
    ``snapshot`` says which scored snapshot is served, its age, and why the latest refresh failed
    if it did."""
    state = request.app.state
    loaded = {name: m.version for name, m in state.models.items()}
    tasks = _task_states(state)
    snapshot = snapshot_state(state)
    failed = [f"{name}: {t.reason}" for name, t in tasks.items() if t.state == "failed"]
    lead = tasks[Task.LEAD_QUALITY.value]
    if lead.state == "loaded" and not failed:
        return Readiness(ready=True, models=loaded, tasks=tasks, data=_data_state(state), snapshot=snapshot)
    reason = "; ".join(([] if lead.state == "loaded" else [f"lead_quality: {lead.reason}"]) + failed)
    body = Readiness(ready=False, models=loaded, reason=reason, tasks=tasks, data=_data_state(state),
                     snapshot=snapshot)
    return JSONResponse(body.model_dump(mode="json"), status_code=503)


def snapshot_state(state) -> SnapshotState | None:
    """The served snapshot (the latest good one) and the latest refresh's status and error."""
    try:
        store = state.refresher.store
        good, latest = store.latest(), store.latest(ok_only=False)
    except Exception as exc:  # noqa: BLE001 - readiness must answer even when the database does not
        return SnapshotState(status="failed", error=f"cannot read the operations database: {client_safe(str(exc))}")
    if latest is None:
        return SnapshotState(status="none", error="no refresh yet: run `funnelcast refresh`")
    out = SnapshotState(status=latest.status, error=latest.error)
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
            responses=error_responses(401))
def list_models(request: Request, settings: SettingsDep) -> ModelsResponse:
    """Registered versions of every task with their aliases, training window and evaluation metrics,
    each baseline's figures on the same window beside them, and the baseline floor's outcome."""
    client = configure(settings.resolved_tracking_uri())
    loaded = {(m.name, m.version) for m in request.app.state.models.values()}
    out = []
    for task in Task:
        for v in describe_versions(client, task.value):
            out.append(ModelVersion(**v, loaded=(v["name"], v["version"]) in loaded,
                                    baselines=baselines_beside(v["metrics"]), floor=floor_outcome(v["metrics"])))
    return ModelsResponse(models=out)
