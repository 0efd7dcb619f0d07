"""Health, readiness and the registered models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from models.registry import configure, describe_versions
from models.tasks import Task
from serving.deps import SettingsDep
from serving.schemas.ops import Health, ModelsResponse, ModelVersion, Readiness
from serving.security import ApiKeyDep

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (no key needed)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(request: Request):
    """Ready when the lead-quality model is loaded (no key needed)."""
    loaded = {name: m.version for name, m in request.app.state.models.items()}
    if Task.LEAD_QUALITY.value in loaded:
        return Readiness(ready=True, models=loaded)
    reason = request.app.state.load_errors.get(Task.LEAD_QUALITY.value, "model not loaded")
    return JSONResponse(Readiness(ready=False, models=loaded, reason=reason).model_dump(), status_code=503)


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
