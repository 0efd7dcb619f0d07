"""Health, readiness and the registered models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from models.registry import configure, describe_versions
from models.tasks import Task
from serving.deps import SettingsDep
from serving.schemas.live import SnapshotState
from serving.schemas.ops import Health, ModelsResponse, ModelVersion, Readiness
from serving.security import ApiKeyDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no key needed)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request):
    """Ready when the lead-quality model is loaded (no key needed); ``snapshot`` says which scored
    snapshot is served, its age, and why the latest refresh failed if it did."""
    loaded = {name: m.version for name, m in request.app.state.models.items()}
    snapshot = snapshot_state(request.app.state)
    if Task.LEAD_QUALITY.value in loaded:
        return Readiness(ready=True, models=loaded, snapshot=snapshot)
    reason = request.app.state.load_errors.get(Task.LEAD_QUALITY.value, "model not loaded")
    return JSONResponse(Readiness(ready=False, models=loaded, reason=reason, snapshot=snapshot).model_dump(mode="json"),
                        status_code=503)


def snapshot_state(state) -> SnapshotState | None:
    """The served snapshot (the latest good one) and the latest refresh's status and error."""
    try:
        store = state.refresher.store
        good, latest = store.latest(), store.latest(ok_only=False)
    except Exception as exc:  # noqa: BLE001 - readiness must answer even when the database does not
        return SnapshotState(status="failed", error=f"cannot read the operations database: {exc}")
    if latest is None:
        return SnapshotState(status="none", error="no refresh yet: run `funnelcast refresh`")
    out = SnapshotState(status=latest.status, error=latest.error)
    if good is not None:
        out = out.model_copy(update={"snapshot_id": good.id, "as_of": good.as_of, "refreshed_at": good.refreshed_at,
                                     "age_seconds": good.age_seconds()})
    return out


@router.get("/v1/models", response_model=ModelsResponse, dependencies=[ApiKeyDep], tags=["models"])
def list_models(request: Request, settings: SettingsDep) -> ModelsResponse:
    """Registered versions of every task with their aliases, training window and evaluation metrics."""
    client = configure(settings.resolved_tracking_uri())
    loaded = {(m.name, m.version) for m in request.app.state.models.values()}
    out = []
    for task in Task:
        for v in describe_versions(client, task.value):
            out.append(ModelVersion(**v, loaded=(v["name"], v["version"]) in loaded))
    return ModelsResponse(models=out)
