"""Deals, funnel and forecast: ``POST /v1/opportunities/score``, ``GET /v1/funnel``, ``GET /v1/forecast``.

Scoring takes deal records as a CRM sends them (the opportunity, its stage history and
activities inline, optionally its lead and account) and runs the same
:meth:`models.deals.DealScorer.score` as ``funnelcast score opportunities``. The funnel and
the forecast answer from the latest scored snapshot (serving/refresh.py); parameters it did not
store are computed on the export that snapshot read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import numpy as np
import pandas as pd
from fastapi import APIRouter, Query, Request, Response

from features.contract import Export
from serving.deps import DealModelDep, SettingsDep, analytics_slot, configured_export
from serving.errors import RequestProblem
from serving.forecasting import forecast_answer, funnel_answer
from serving.records import RequestRecords, check_batch, unique_ids, utc_timestamp
from serving.refresh import snapshot_answer
from serving.schemas.common import (
    ModelRef,
    OpportunityRecord,
    StageEntryRecord,
    Timestamp,
    error_responses,
    served_reasons,
)
from serving.schemas.deals import (
    DealScore,
    DealScoreItem,
    DealScoreRequest,
    DealScoreResponse,
    ForecastResponse,
    FunnelResponse,
    PeriodForecastResponse,
)
from serving.security import ApiKeyDep

router = APIRouter(prefix="/v1", tags=["deals"], dependencies=[ApiKeyDep])
GROUPINGS = ("none", "owner_id", "team", "industry", "product")


def _num(v: object) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _entered_when_created(opportunity: OpportunityRecord) -> StageEntryRecord:
    """The stage history of a deal sent without one: in its current stage since its creation."""
    return StageEntryRecord(stage=opportunity.stage, entered_at=opportunity.created_at, amount=opportunity.amount,
                            expected_close_date=opportunity.expected_close_date)


def deal_export(items: list[DealScoreItem], spec: object, open_stages: Sequence[str]) -> Export:
    """The typed opportunities, stage history, activities, leads and accounts of a request (a
    lead or account sent with several deals once); 422 on a bad field or a closed deal."""
    ids = [it.opportunity.opportunity_id.strip() for it in items]
    unique_ids(ids, "opportunities[{}].opportunity.opportunity_id", "opportunity id")
    records = RequestRecords("opportunities", "stage_history", "activities", "leads", "accounts")
    for i, (it, deal_id) in enumerate(zip(items, ids, strict=True)):
        at = f"opportunities[{i}]"
        links = {}
        if it.account is not None:
            links["account_id"] = records.add_shared("accounts", it.account, f"{at}.account")
        if it.lead is not None:
            links["lead_id"] = records.add_shared("leads", it.lead, f"{at}.lead")
        records.add("opportunities", it.opportunity, f"{at}.opportunity", **links)
        for j, entry in enumerate(it.stage_history or [_entered_when_created(it.opportunity)]):
            records.add("stage_history", entry, f"{at}.stage_history[{j}]", opportunity_id=deal_id)
        for j, activity in enumerate(it.activities):
            records.add("activities", activity, f"{at}.activities[{j}]", opportunity_id=deal_id)
    export = records.export(open_stages, spec)
    closed = export.opportunities["outcome"] != "open"
    if closed.any():
        errors = [(f"opportunities[{i}].opportunity.outcome", "only open deals are scored") for i in np.flatnonzero(closed)]
        raise RequestProblem(f"{len(errors)} closed deal(s) in the batch", errors)
    return export


@router.post("/opportunities/score", response_model=DealScoreResponse, responses=error_responses(401, 413, 422, 429, 503))
def score_opportunities(body: DealScoreRequest, model: DealModelDep, settings: SettingsDep, request: Request,
                        response: Response) -> DealScoreResponse:
    """Score up to 1,000 open deals: P(won), P(won within the horizon), P(next stage within the
    horizon), expected close date and value, and the top 5 reasons for P(won) in probability points."""
    check_batch(len(body.opportunities), settings.max_batch, "opportunities")
    scorer = model.scorer
    as_of = utc_timestamp(body.as_of)
    e = deal_export(body.opportunities, scorer.spec, settings.open_stages)
    scored = scorer.score(e.opportunities, e.stage_history, e.activities, e.leads, e.accounts, as_of)
    ref = ModelRef(name=model.name, version=model.version)
    scores = [
        DealScore(
            opportunity_id=r.opportunity_id, stage=r.stage, p_win=r.p_win, p_win_within_horizon=r.p_win_within_horizon,
            p_next_stage=r.p_next_stage, expected_close_date=str(pd.Timestamp(r.expected_close_date).date()),
            amount=_num(r.amount) or 0.0, amount_predicted=bool(r.amount_predicted),
            expected_value=_num(r.expected_value) or 0.0, reasons=served_reasons(r.reasons),
            warnings=list(r.warnings), model=ref,
        )
        for r in scored.itertuples(index=False)
    ]
    request.app.state.metrics.scores.labels(model.name, model.version).inc(len(scores))
    response.headers["X-Model-Version"] = f"{model.name}/{model.version}"
    return DealScoreResponse(as_of=as_of.to_pydatetime(), horizon_days=scorer.spec.horizon_days, model=ref,
                             scores=scores)


# ------------------------------------------------------------------ funnel and forecast over the configured export
def _grouping(by: str) -> None:
    if by not in GROUPINGS:
        raise RequestProblem(f"unknown grouping {by!r}", [("by", f"one of {', '.join(GROUPINGS)}")])


@router.get("/funnel", response_model=FunnelResponse, responses=error_responses(401, 422, 503))
def funnel(request: Request,
           as_of: Annotated[Timestamp | None, Query(description="End of the period (default: the export time)")] = None,
           by: Annotated[str, Query(description="none, owner_id, team, industry or product")] = "none",
           period_days: Annotated[int, Query(ge=7, le=730, description="Period length in days")] = 91) -> FunnelResponse:
    """Stage-to-stage conversion, time in stage (median, p90), drop-off and expected value lost per
    stage over the period, by group; the bottleneck stage and where it changed most. Answered from
    the latest scored snapshot (other parameters: computed on its export)."""
    _grouping(by)
    stored = snapshot_answer(request, "funnel", {"as_of": as_of, "by": by, "period_days": period_days})
    if stored is not None:
        return stored
    with analytics_slot(request.app.state):
        return funnel_answer(configured_export(request.app.state), as_of, by, period_days)


@router.get("/forecast", response_model=ForecastResponse | PeriodForecastResponse,
            responses=error_responses(401, 422, 503))
def forecast(request: Request, model: DealModelDep,
             as_of: Annotated[Timestamp | None, Query(description="Forecast time (default: the export time)")] = None,
             horizon_days: Annotated[int | None, Query(ge=1, le=730, description="Default: the model's")] = None,
             period: Annotated[str | None, Query(description="month or quarter: the calendar period holding as_of "
                                                 "(won so far + open deals + new deals); without it, a rolling horizon")] = None,
             by: Annotated[str, Query(description="none, owner_id, team, industry or product")] = "owner_id",
             sims: Annotated[int, Query(ge=100, le=20000, description="Simulations")] = 5000,
             seed: Annotated[int, Query(ge=0)] = 0) -> ForecastResponse | PeriodForecastResponse:
    """Expected bookings per group (open pipeline + deals not yet created), P10/P50/P90 from
    simulation, beside the CRM weighted pipeline and the reps' close dates: over a rolling
    horizon, or (``period``) over the calendar month or quarter, with what is won so far, the
    CRM forecast categories where the export has them and the roll-up by team. Answered from the
    latest scored snapshot (other parameters: computed on its export)."""
    _grouping(by)
    params = {"as_of": as_of, "horizon_days": horizon_days, "by": by, "sims": sims, "seed": seed, "period": period}
    stored = snapshot_answer(request, "forecast", params)
    if stored is not None:
        return stored
    with analytics_slot(request.app.state):
        return forecast_answer(model, configured_export(request.app.state), **params)
