"""Lead scoring: ``POST /v1/leads/score``."""

from __future__ import annotations

import hashlib
import math
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from serving import routes_ops
from serving.deps import ApiKeyDep, CallerDep, LeadModelDep, SettingsDep
from serving.errors import RequestProblem
from serving.records import lead_frames, utc_timestamp
from serving.schemas import ErrorResponse, LeadScore, LeadScoreRequest, LeadScoreResponse, ModelRef, Reason

router = APIRouter(prefix="/v1", tags=["leads"], dependencies=[ApiKeyDep])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing or invalid X-API-Key"},
    413: {"model": ErrorResponse, "description": "Too many leads in one request"},
    422: {"model": ErrorResponse, "description": "Invalid records: each error names the field path and the reason"},
    429: {"model": ErrorResponse, "description": "Rate limit for this API key exceeded (see Retry-After)"},
    503: {"model": ErrorResponse, "description": "No model is loaded yet (run `funnelcast train`)"},
}


def _clean(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


@router.post("/leads/score", response_model=LeadScoreResponse, responses=_ERRORS)
def score_leads(
    body: LeadScoreRequest,
    model: LeadModelDep,
    settings: SettingsDep,
    caller: CallerDep,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(description="Retry-safe requests: a retried request with the same key gets the first answer, "
               "not a second scoring", max_length=200),
    ] = None,
):
    """Score up to 1,000 leads: probability of becoming an opportunity within the horizon,
    score 0-100, grade A-D, expected value and the top 5 reasons, each with its signed
    contribution in probability points. Send each lead with its account and activities as
    the CRM holds them; missing optional fields and unseen values are scored, with warnings."""
    cache = request.app.state.idempotency
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest() if idempotency_key else ""
    if idempotency_key:
        hit = cache.get((caller, idempotency_key))
        if hit is not None:
            first_fingerprint, content, status = hit
            if first_fingerprint != fingerprint:
                raise RequestProblem(
                    "Idempotency-Key was already used with a different request body; use a new key for a new request",
                    [("Idempotency-Key", "reused with a different body")],
                )
            return Response(content, status_code=status, media_type="application/json",
                            headers={"Idempotent-Replayed": "true"})
    if len(body.leads) > settings.max_batch:
        raise RequestProblem(
            f"batch of {len(body.leads):,} leads exceeds the limit of {settings.max_batch:,}; "
            "split it into smaller requests",
            [("leads", f"at most {settings.max_batch} items")],
            status_code=413,
        )
    scorer = model.scorer
    as_of = utc_timestamp(body.as_of)
    frames = lead_frames(body.leads, scorer.spec, settings.open_stages, as_of)
    scored, features = scorer.score_with_features(frames.leads, frames.accounts, frames.activities, as_of)
    ref = ModelRef(name=model.name, version=model.version)
    columns = {c: scored[c].tolist() for c in
               ("lead_id", "probability", "score", "grade", "expected_value", "base_probability", "reasons", "warnings")}
    scores = [
        LeadScore(
            lead_id=lead_id,
            probability=probability,
            score=score,
            grade=grade,
            expected_value=expected_value,
            base_probability=base_probability,
            reasons=[Reason(**{**r, "value": _clean(r["value"])}) for r in reasons],
            warnings=list(warnings),
            model=ref,
        )
        for lead_id, probability, score, grade, expected_value, base_probability, reasons, warnings in zip(
            *columns.values(), strict=True
        )
    ]
    out = LeadScoreResponse(as_of=as_of.to_pydatetime(), horizon_days=scorer.spec.horizon_days, model=ref, scores=scores)
    request.app.state.metrics.scores.labels(model.name, model.version).inc(len(scores))
    routes_ops.record_served(request, model, as_of, features, scored)  # served-score log and drift sample
    # The response is built and validated above as LeadScoreResponse (the schema OpenAPI shows
    # via response_model) and returned as its JSON: FastAPI would validate it a second time,
    # in another thread-pool hand-off for a def endpoint.
    content = out.model_dump_json().encode()
    if idempotency_key:
        cache.put((caller, idempotency_key), fingerprint, content, 200)
    return Response(content, media_type="application/json", headers={"X-Model-Version": f"{model.name}/{model.version}"})
