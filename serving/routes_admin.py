"""Health, readiness and the registered models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from models.registry import configure, describe_versions
from models.tasks import Task
from serving.deps import SettingsDep
from serving.schemas.ops import FloorOutcome, Health, ModelsResponse, ModelVersion, Readiness
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


@router.get("/v1/models", response_model=ModelsResponse, dependencies=[ApiKeyDep], tags=["models"])
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
