"""Lead scoring: ``POST /v1/leads/score``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Header, Request, Response

from features.contract import Export
from serving import routes_ops
from serving.deps import LeadModelDep, SettingsDep
from serving.errors import RequestProblem
from serving.fastpath import fast_lead_scores
from serving.records import RequestRecords, check_batch, unique_ids, utc_timestamp
from serving.schemas.common import ModelRef, error_responses, served_reasons
from serving.schemas.leads import LeadScore, LeadScoreItem, LeadScoreRequest, LeadScoreResponse
from serving.security import ApiKeyDep, CallerDep

router = APIRouter(prefix="/v1", tags=["leads"], dependencies=[ApiKeyDep])
_SCORED = ("lead_id", "probability", "score", "grade", "expected_value", "base_probability", "reasons", "warnings")


def lead_export(items: list[LeadScoreItem], spec: object, open_stages: Sequence[str], as_of: pd.Timestamp) -> Export:
    """The typed leads, accounts and activities of a request (an account sent with several leads
    once); 422 naming the path of any bad field, and of a lead created at or after ``as_of``
    (it did not exist yet) at ``leads[i].lead.created_at``."""
    ids = [it.lead.lead_id.strip() for it in items]
    unique_ids(ids, "leads[{}].lead.lead_id", "lead id")
    records = RequestRecords("leads", "accounts", "activities")
    for i, (it, lead_id) in enumerate(zip(items, ids, strict=True)):
        links = {} if it.account is None else {
            "account_id": records.add_shared("accounts", it.account, f"leads[{i}].account")}
        records.add("leads", it.lead, f"leads[{i}].lead", **links)
        for j, activity in enumerate(it.activities):
            records.add("activities", activity, f"leads[{i}].activities[{j}]", lead_id=lead_id)
    export = records.export(open_stages, spec)
    late = (export.leads["created_at"] >= as_of).to_numpy()
    if late.any():
        errors = [(f"leads[{i}].lead.created_at",
                   f"{export.leads['created_at'].iloc[i].isoformat()} is not before as_of {as_of.isoformat()}")
                  for i in late.nonzero()[0]]
        raise RequestProblem(f"{len(errors)} lead(s) created at or after as_of: "
                             + "; ".join(f"{p}: {r}" for p, r in errors[:5]), errors)
    return export


def _scored_columns(items: list[LeadScoreItem], scorer: object, settings: object,
                    as_of: pd.Timestamp) -> tuple[list[list], list[tuple]]:
    """The scored columns of :data:`_SCORED` (lists in request order) and the feature rows (tuples):
    from the fast path for a small batch it covers (:mod:`serving.fastpath`), else the frame path."""
    fast = fast_lead_scores(items, scorer, as_of)
    if fast is not None:
        return [getattr(fast, c) for c in _SCORED], [tuple(r) for r in fast.rows.values]
    export = lead_export(items, scorer.spec, settings.open_stages, as_of)
    scored, features = scorer.score_with_features(export.leads, export.accounts, export.activities, as_of)
    # to_numpy(object) then tuples: ~10x cheaper than itertuples for one row
    return [scored[c].tolist() for c in _SCORED], list(map(tuple, features.to_numpy(dtype=object)))


def _replayed(request: Request, key: tuple[str, str], fingerprint: str) -> Response | None:
    """The first answer to a retried request (same caller and Idempotency-Key), if any."""
    hit = request.app.state.idempotency.get(key)
    if hit is None:
        return None
    first_fingerprint, content, status = hit
    if first_fingerprint != fingerprint:
        raise RequestProblem(
            "Idempotency-Key was already used with a different request body; use a new key for a new request",
            [("Idempotency-Key", "reused with a different body")],
        )
    return Response(content, status_code=status, media_type="application/json", headers={"Idempotent-Replayed": "true"})


@router.post("/leads/score", response_model=LeadScoreResponse, responses=error_responses(401, 413, 422, 429, 503))
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
    fingerprint = hashlib.sha256(body.model_dump_json().encode()).hexdigest() if idempotency_key else ""
    if idempotency_key and (replay := _replayed(request, (caller, idempotency_key), fingerprint)) is not None:
        return replay
    check_batch(len(body.leads), settings.max_batch, "leads")
    scorer = model.scorer
    as_of = utc_timestamp(body.as_of)
    columns, rows = _scored_columns(body.leads, scorer, settings, as_of)
    ref = ModelRef(name=model.name, version=model.version)
    scores = [
        LeadScore(lead_id=lead_id, probability=probability, score=score, grade=grade, expected_value=expected_value,
                  base_probability=base_probability, reasons=served_reasons(reasons), warnings=list(warnings), model=ref)
        for lead_id, probability, score, grade, expected_value, base_probability, reasons, warnings in zip(
            *columns, strict=True
        )
    ]
    out = LeadScoreResponse(as_of=as_of.to_pydatetime(), horizon_days=scorer.spec.horizon_days, model=ref, scores=scores)
    request.app.state.metrics.scores.labels(model.name, model.version).inc(len(scores))
    routes_ops.record_served(request, model, as_of, rows, columns[0], columns[1])  # served-score log, drift sample
    # The response is built and validated above as LeadScoreResponse (the schema OpenAPI shows
    # via response_model) and returned as its JSON: FastAPI would validate it a second time,
    # in another thread-pool hand-off for a def endpoint.
    content = out.model_dump_json().encode()
    if idempotency_key:
        request.app.state.idempotency.put((caller, idempotency_key), fingerprint, content, 200)
    return Response(content, media_type="application/json", headers={"X-Model-Version": f"{model.name}/{model.version}"})
