"""Lead scoring: ``POST /v1/leads/score``."""

from __future__ import annotations

import math

from fastapi import APIRouter

from serving.deps import ApiKeyDep, LeadModelDep, SettingsDep
from serving.errors import RequestProblem
from serving.records import lead_frames, utc_timestamp
from serving.schemas import ErrorResponse, LeadScore, LeadScoreRequest, LeadScoreResponse, ModelRef, Reason

router = APIRouter(prefix="/v1", tags=["leads"], dependencies=[ApiKeyDep])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing or invalid X-API-Key"},
    413: {"model": ErrorResponse, "description": "Too many leads in one request"},
    422: {"model": ErrorResponse, "description": "Invalid records: each error names the field path and the reason"},
    503: {"model": ErrorResponse, "description": "No model is loaded yet (run `funnelcast train`)"},
}


def _clean(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


@router.post("/leads/score", response_model=LeadScoreResponse, responses=_ERRORS)
def score_leads(body: LeadScoreRequest, model: LeadModelDep, settings: SettingsDep) -> LeadScoreResponse:
    """Score up to 1,000 leads: probability of becoming an opportunity within the horizon,
    score 0-100, grade A-D, expected value and the top 5 reasons, each with its signed
    contribution in probability points. Send each lead with its account and activities as
    the CRM holds them; missing optional fields and unseen values are scored, with warnings."""
    if len(body.leads) > settings.max_batch:
        raise RequestProblem(
            f"batch of {len(body.leads):,} leads exceeds the limit of {settings.max_batch:,}; "
            "split it into smaller requests",
            [("leads", f"at most {settings.max_batch} items")],
            status_code=413,
        )
    scorer = model.scorer
    as_of = utc_timestamp(body.as_of)
    frames = lead_frames(body.leads, scorer.spec, settings.open_stages)
    scored = scorer.score(frames.leads, frames.accounts, frames.activities, as_of)
    ref = ModelRef(name=model.name, version=model.version)
    scores = [
        LeadScore(
            lead_id=row.lead_id,
            probability=row.probability,
            score=row.score,
            grade=row.grade,
            expected_value=row.expected_value,
            base_probability=row.base_probability,
            reasons=[Reason(**{**r, "value": _clean(r["value"])}) for r in row.reasons],
            warnings=list(row.warnings),
            model=ref,
        )
        for row in scored.itertuples(index=False)
    ]
    return LeadScoreResponse(as_of=as_of.to_pydatetime(), horizon_days=scorer.spec.horizon_days, model=ref, scores=scores)
