"""The living product over HTTP: ``POST /v1/admin/refresh``, the score feed ``GET /v1/scores`` and an
entity's history ``GET /v1/scores/{kind}/{id}/history``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from features.errors import FunnelcastError
from models.worklist import trend
from serving.errors import RequestProblem
from serving.refresh import refresher
from serving.schemas.common import error_responses
from serving.schemas.live import FeedResponse, FeedScore, HistoryPoint, HistoryResponse, RefreshResponse
from serving.security import AdminKeyDep, ApiKeyDep
from serving.snapshots import KINDS

router = APIRouter(prefix="/v1")


def _kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise RequestProblem(f"unknown kind {kind!r}", [("kind", f"one of {', '.join(KINDS)}")])


@router.post("/admin/refresh", response_model=RefreshResponse, dependencies=[AdminKeyDep], tags=["admin"],
             responses=error_responses(401, 403, 422, 503))
def refresh_now(request: Request) -> RefreshResponse:
    """Read the configured source now, score every open lead, deal and account with the served
    models and store one snapshot (waits for a refresh already running, then runs its own). A
    refresh that fails is recorded (see ``/readyz``) and the last good snapshot stays served:
    422 when the data is the problem, 503 otherwise."""
    result = refresher(request.app.state).run(wait=True)
    body = RefreshResponse(**{k: getattr(result, k) for k in RefreshResponse.model_fields})
    if result.status != "ok":
        raise RequestProblem(f"refresh failed: {result.error}; the last good snapshot is still served",
                             status_code=422 if result.data_problem else 503)
    return body


@router.get("/scores", response_model=FeedResponse, dependencies=[ApiKeyDep], tags=["scores"],
            responses=error_responses(401, 422))
def score_feed(request: Request,
               since: Annotated[datetime | None, Query(description="Scores of snapshots refreshed after this time "
                                                                   "(ISO 8601; default: all)")] = None,
               kind: Annotated[str | None, Query(description="lead, deal or account (default: all)")] = None,
               limit: Annotated[int, Query(ge=1, le=5000, description="Scores per page")] = 1000,
               page_token: Annotated[str | None, Query(description="next_page_token of the previous page")] = None,
               ) -> FeedResponse:
    """Every score that appeared or changed (score, grade, probability to 3 decimals or reasons) in
    a snapshot refreshed after ``since``, in the order they were stored: the feed a CRM syncs
    from. Keep the time of your last sync and pass it as ``since``; page with ``page_token``."""
    _kind(kind)
    try:
        rows, token = refresher(request.app.state).store.feed(since, kind, page_token, limit)
    except FunnelcastError as exc:
        raise RequestProblem(str(exc), [("page_token", "not a token from a previous page")]) from exc
    scores = [FeedScore(kind=r["kind"], id=r["entity_id"], name=r["name"], owner_id=r["owner_id"],
                        snapshot_id=r["snapshot_id"], as_of=r["as_of"], refreshed_at=r["refreshed_at"], model=r["model"],
                        model_version=r["version"], probability=r["probability"], score=r["score"], grade=r["grade"],
                        expected_value=r["expected_value"], trend=r["trend"],
                        previous_probability=r["previous_probability"], reasons=list(r["reasons"]))
              for r in rows]
    return FeedResponse(scores=scores, next_page_token=token)


@router.get("/scores/{kind}/{entity_id}/history", response_model=HistoryResponse, dependencies=[ApiKeyDep],
            tags=["scores"], responses=error_responses(401, 404, 422))
def score_history(kind: str, entity_id: str, request: Request,
                  limit: Annotated[int, Query(ge=1, le=1000, description="Latest snapshots")] = 100) -> HistoryResponse:
    """One lead's, deal's or account's score over the snapshots that scored it (oldest first), with
    its trend: the change of probability over the latest ``FUNNELCAST_TREND_POINTS`` snapshots
    beyond ``FUNNELCAST_TREND_THRESHOLD_POINTS`` points."""
    _kind(kind)
    rows = refresher(request.app.state).store.history(kind, entity_id, limit)
    if not rows:
        raise RequestProblem(f"no {kind} {entity_id!r} in any scored snapshot", [("entity_id", "not scored yet")], 404)
    settings = request.app.state.settings
    points = [HistoryPoint(snapshot_id=r["snapshot_id"], as_of=r["as_of"], refreshed_at=r["refreshed_at"],
                           probability=r["probability"], score=r["score"], grade=r["grade"],
                           expected_value=r["expected_value"], model_version=r["version"]) for r in rows]
    return HistoryResponse(kind=kind, id=entity_id, points=points,
                           trend=trend([p.probability for p in points], settings.trend_points,
                                       settings.trend_threshold_points))
