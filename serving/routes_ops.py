"""Model operations over HTTP: live reload, outcome feedback, live performance, drift monitoring.

* ``POST /v1/admin/reload`` (admin key): load the models now registered at the serving alias
  beside the ones in use, then swap ``app.state.models`` in one assignment; a request holds
  the dict it started with, so every request is answered by one model version, named in it.
  With ``FUNNELCAST_RELOAD_POLL_SECONDS`` > 0 a background task of the app checks the alias
  every so often and, when it points at another version, does the same load-beside and swap.
* ``POST /v1/outcomes``: what happened to scored records, idempotent by record id.
* ``GET /v1/models/{task}/performance``: AUC and calibration per model version, on records
  scored and then decided.
* ``GET /v1/monitoring``: feature drift (PSI, missing rates) and score shift of recent
  scoring traffic against the loaded model's training reference.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
from typing import Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Request

from features.settings import StoreNotFound
from models.drift import drift_report
from models.metrics import classification_metrics
from models.registry import LoadedModel, alias_versions
from models.tasks import Task
from serving.deps import registry_client, state_cached
from serving.errors import RequestProblem
from serving.schemas.common import error_responses
from serving.schemas.ops import (
    OutcomesRequest,
    OutcomesResponse,
    PerformanceResponse,
    ReloadedModel,
    ReloadResponse,
    VersionPerformance,
)
from serving.security import AdminKeyDep, ApiKeyDep
from serving.store import OperationsStore, RecentTraffic

log = logging.getLogger("funnelcast.serving")
router = APIRouter(prefix="/v1", tags=["model operations"])
_reload_lock = threading.Lock()

#: Which outcomes each task accepts (the first is the positive class).
TASK_OUTCOMES = {
    Task.LEAD_QUALITY.value: ("converted", "disqualified"),
}
_DEAL_OUTCOMES = ("won", "lost")
_ERRORS = error_responses(401, 422)


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def operations_store(request: Request) -> OperationsStore:
    state = request.app.state
    return state_cached(state, "ops_store", lambda: OperationsStore(state.settings.resolved_store_url()))


def recent_traffic(request: Request) -> RecentTraffic:
    return state_cached(request.app.state, "recent_traffic", RecentTraffic)


def record_served(request: Request, model: LoadedModel, as_of: pd.Timestamp, rows: list[tuple],
                  record_ids: list, probabilities: list[float]) -> None:
    """Log served scores with their model version, and keep the request's feature rows (tuples in
    the order of the model's features) for drift monitoring.

    A failure here is logged, never turned into a failed scoring request."""
    try:
        operations_store(request).log_scores(model.name, model.version, as_of, [str(x) for x in record_ids],
                                             [float(p) for p in probabilities])
        recent_traffic(request).add(model.name, model.version, as_of, rows, len(record_ids))
    except Exception:  # noqa: BLE001 - monitoring must not break scoring
        log.exception("logging served scores failed")


# --- reload -----------------------------------------------------------------------------------


@router.post("/admin/reload", response_model=ReloadResponse, dependencies=[AdminKeyDep], tags=["admin"],
             responses=error_responses(401, 403, 422))
def reload_models(request: Request) -> ReloadResponse:
    """Load the models now registered at the serving alias (e.g. a newly promoted champion)
    beside the ones in use and swap them in atomically; in-flight requests finish on the old
    version. A model that fails to load leaves the previous one in place."""
    old, swapped, problems = swap_in_registered(request.app.state)
    fresh = {k: v for k, v in swapped.items() if old.get(k) is not v}
    names = sorted(set(old) | set(fresh) | set(problems))
    out = {}
    for name in names:
        before = old[name].version if name in old else None
        now = swapped[name].version if name in swapped else None
        out[name] = ReloadedModel(version=now, previous=before, changed=before != now)
        if before != now:
            log.info("reloaded %s: version %s -> %s", name, before, now)
    return ReloadResponse(models=out, problems=problems)


def swap_in_registered(state: Any) -> tuple[dict[str, LoadedModel], dict[str, LoadedModel], dict[str, str]]:
    """Load the models at the serving alias beside those in use and swap ``state.models`` in
    one assignment (a model that fails to load keeps its previous version): old, new, problems."""
    with _reload_lock:  # one reload at a time; scoring is never blocked
        fresh, problems = state.model_loader()
        old: dict[str, LoadedModel] = state.models
        swapped = {**old, **fresh}
        errors = {k: v for k, v in state.load_errors.items() if k not in fresh}
        errors.update({k: v for k, v in problems.items() if k not in swapped})
        state.models = swapped  # one assignment: a request sees the old dict or the new one
        state.load_errors = errors
    if any(old.get(k) is not v for k, v in swapped.items()):
        gc.freeze()  # the new models join the objects the collector no longer scans (serving.app.freeze_heap)
    if any(old.get(k) is not v for k, v in swapped.items()) and getattr(state, "after_models_swapped", None):
        state.after_models_swapped()  # new champions: refresh the scored snapshot (serving/refresh.py)
    return old, swapped, problems


def poll_alias_once(state: Any) -> bool:
    """Swap in the registered models when the alias now points at versions not being served."""
    settings = state.settings
    names = sorted(set(state.models) | set(state.load_errors))
    try:
        client = registry_client(settings)  # never creates a missing store
    except StoreNotFound as exc:
        log.error("alias poll: %s", exc)
        return False
    wanted = alias_versions(client, names, settings.model_alias)
    served = {name: m.version for name, m in state.models.items()}
    if all(served.get(name) == version for name, version in wanted.items()):
        return False
    old, swapped, problems = swap_in_registered(state)
    for name in sorted(swapped):
        before = old[name].version if name in old else None
        if before != swapped[name].version:
            log.info("alias poll: %s version %s -> %s", name, before, swapped[name].version)
    for name, problem in problems.items():
        if name in wanted:
            log.warning("alias poll: %s@%s could not load: %s", name, settings.model_alias, problem)
    return True


async def poll_alias(state: Any, seconds: float) -> None:
    """Every ``seconds``, check the serving alias in the registry (in a worker thread) and swap
    in a newly promoted version; a failing check is logged and retried at the next tick."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(poll_alias_once, state)
        except Exception:  # noqa: BLE001 - the registry being down must not stop the API
            log.exception("alias poll failed")


def start_alias_polling(state: Any, seconds: float) -> asyncio.Task | None:
    """The polling task (``None`` when ``seconds`` is 0: polling off); the app cancels it at shutdown."""
    return asyncio.create_task(poll_alias(state, seconds)) if seconds > 0 else None


# --- outcomes ---------------------------------------------------------------------------------


@router.post("/outcomes", response_model=OutcomesResponse, dependencies=[ApiKeyDep], tags=["model operations"],
             responses=_ERRORS)
def report_outcomes(body: OutcomesRequest, request: Request) -> OutcomesResponse:
    """Report what happened to scored records. Idempotent by (task, record_id): sending the
    same outcome again changes nothing; sending a different one corrects it."""
    errors = []
    seen: dict[tuple[str, str], int] = {}
    for i, o in enumerate(body.outcomes):
        allowed = TASK_OUTCOMES.get(o.task, _DEAL_OUTCOMES if o.task in {t.value for t in Task} else None)
        if allowed is None:
            errors.append((f"outcomes[{i}].task", f"unknown task {o.task!r}; one of {', '.join(t.value for t in Task)}"))
        elif o.outcome not in allowed:
            errors.append((f"outcomes[{i}].outcome", f"{o.outcome!r} is not an outcome of {o.task}: {' or '.join(allowed)}"))
        key = (o.task, o.record_id.strip())
        if key in seen:
            errors.append((f"outcomes[{i}].record_id", f"{o.record_id!r} also at outcomes[{seen[key]}] in this request"))
        seen.setdefault(key, i)
    if errors:
        raise RequestProblem(f"{len(errors)} invalid outcome(s): " + "; ".join(f"{p}: {r}" for p, r in errors[:5]), errors)
    items = [{"task": o.task, "record_id": o.record_id.strip(), "outcome": o.outcome, "occurred_at": o.occurred_at}
             for o in body.outcomes]
    stored = operations_store(request).upsert_outcomes(items)
    return OutcomesResponse(received=len(items), **stored.counts(), results=stored.statuses)


# --- performance ------------------------------------------------------------------------------


@router.get("/models/{task}/performance", response_model=PerformanceResponse, dependencies=[ApiKeyDep],
            tags=["model operations"], responses=error_responses(401, 404, 422))
def model_performance(task: str, request: Request) -> PerformanceResponse:
    """Live performance per model version: each record's first score from that version,
    against the outcome the CRM reported after it (AUC needs both outcomes among them)."""
    if task not in {t.value for t in Task}:
        raise RequestProblem(f"unknown task {task!r}", [("task", f"one of {', '.join(t.value for t in Task)}")], 404)
    store = operations_store(request)
    joined = store.scored_then_decided(task)
    loaded = request.app.state.models.get(task)
    versions = []
    for version, g in sorted(joined.groupby("model_version"), key=lambda kv: -int(kv[0]) if kv[0].isdigit() else 0):
        y, p = g["label"].to_numpy(), g["probability"].to_numpy(dtype=float)
        m = classification_metrics(y, p)
        versions.append(VersionPerformance(
            version=str(version), loaded=loaded is not None and loaded.version == str(version), n=len(g),
            positives=int(y.sum()), roc_auc=_finite(m["roc_auc"]), brier=_finite(m["brier"]),
            calibration_error=_finite(m["calibration_error"]), mean_probability=float(p.mean()),
            observed_rate=float(y.mean()),
        ))
    return PerformanceResponse(task=task, outcomes_stored=store.outcome_count(task), versions=versions)


# --- monitoring -------------------------------------------------------------------------------


@router.get("/monitoring", dependencies=[ApiKeyDep], tags=["model operations"], responses=_ERRORS)
def monitoring(request: Request, top: int = 20) -> dict[str, Any]:
    """Drift of recent scoring traffic (this process, the latest requests up to 5,000 leads)
    against each loaded model's training reference: per feature PSI (> 0.1 moderate, > 0.25
    major) and missing-rate change, and the shift of the score distribution."""
    out = []
    for name, model in request.app.state.models.items():
        scorer = model.scorer
        reference = getattr(scorer, "metadata", {}).get("reference")
        entry: dict[str, Any] = {"name": name, "version": model.version}
        if name == Task.STAGE_CONVERSION.value:
            out.append({**entry, "rows": 0, "note": "deal scoring traffic is not kept for monitoring: run "
                        "`funnelcast drift --task stage_conversion` on a fresh export"})
            continue
        if not reference:
            out.append({**entry, "rows": 0, "note": "this model has no reference distributions: retrain it"})
            continue
        rows = [r for req in recent_traffic(request).requests(name) if req.version == model.version for r in req.rows]
        columns = list(reference["features"]) if not rows else scorer.spec.feature_names
        X = pd.DataFrame(rows, columns=columns)
        for c in X.columns:
            if c not in scorer.spec.categorical_features:
                X[c] = pd.to_numeric(X[c], errors="coerce")
        scores = scorer.predict_proba(X) if len(X) else np.array([])
        report = drift_report(reference, X, scores)
        feats = [{k: _finite(v) for k, v in r.items()} for r in report["features"]]
        score = {k: _finite(v) for k, v in (report["score"] or {}).items()}
        out.append({
            **entry,
            "rows": report["rows"],
            "reference_rows": report["reference_rows"],
            "score": score,
            "drifted": [r["feature"] for r in feats if r["level"] in ("moderate", "major")],
            "features": feats[:top],
        })
    return {"models": out}
