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
from datetime import datetime
from typing import Annotated

import numpy as np
import pandas as pd
from fastapi import APIRouter, Query, Request, Response

from features.contract import Export
from models.registry import LoadedModel
from serving.deps import DealModelDep, SettingsDep, analytics_slot, configured_export
from serving.errors import RequestProblem
from serving.forecasting import forecast_payload
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
    ForecastGroup,
    ForecastResponse,
    FunnelResponse,
    FunnelStage,
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
def _as_of(value: datetime | None, export: Export) -> pd.Timestamp:
    return utc_timestamp(value) if value is not None else export.exported_at


def _stages(frame: pd.DataFrame) -> list[FunnelStage]:
    out = []
    for r in frame.to_dict("records"):
        out.append(FunnelStage(**{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()
                                  if k in FunnelStage.model_fields}))
    return out


def funnel_answer(export: Export, as_of: datetime | None = None, by: str = "none",
                  period_days: int = 91) -> FunnelResponse:
    """The funnel over ``export`` (what ``GET /v1/funnel`` answers; the refresh stores it)."""
    from models.funnel import funnel_report

    report = funnel_report(export, _as_of(as_of, export), period_days=period_days, by=by)
    if not report.bottleneck:  # no stage had a deal in the period: nothing to report on
        entered = export.stage_history["entered_at"]
        span = f"{entered.min().date()} to {entered.max().date()}" if len(entered) else "empty"
        raise RequestProblem(
            f"no deal was in the funnel from {report.start.date()} to {report.end.date()}: choose as_of within the "
            f"export's stage history ({span})", [("as_of", f"the export's stage history is {span}")])
    return FunnelResponse(start=report.start.to_pydatetime(), end=report.end.to_pydatetime(), by=by,
                          bottleneck=report.bottleneck, most_changed=report.most_changed, summary=report.summary(),
                          stages=_stages(report.table), overall=_stages(report.overall))


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


def forecast_answer(model: LoadedModel, export: Export, as_of: datetime | None = None, horizon_days: int | None = None,
                    by: str = "owner_id", sims: int = 5000, seed: int = 0,
                    period: str | None = None) -> ForecastResponse | PeriodForecastResponse:
    """The forecast over ``export`` (what ``GET /v1/forecast`` answers; the refresh stores it)."""
    from models.forecast import PERIODS, forecast_bookings

    t = _as_of(as_of, export)
    ref = ModelRef(name=model.name, version=model.version)
    if period is not None:
        if period not in PERIODS:
            raise RequestProblem(f"unknown period {period!r}", [("period", f"one of {', '.join(PERIODS)}")])
        if horizon_days is not None:
            raise RequestProblem("period and horizon_days exclude each other", [("horizon_days", "leave it out with period")])
        return forecast_payload(export, model.scorer, t, by, period, ref, n_sims=sims, seed=seed)
    h = horizon_days or model.scorer.spec.horizon_days
    table = forecast_bookings(export, model.scorer, t, by=by, horizon_days=h, n_sims=sims, seed=seed)
    table = table.rename(columns={table.columns[0]: "group"})
    groups = [ForecastGroup(**{k: (str(v) if k == "group" else v) for k, v in r.items() if k in ForecastGroup.model_fields})
              for r in table.to_dict("records")]
    return ForecastResponse(as_of=t.to_pydatetime(), horizon_days=h, by=by, model=ref, groups=groups)


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
