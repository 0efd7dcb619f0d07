"""Deals, funnel and forecast: ``POST /v1/opportunities/score``, ``GET /v1/funnel``, ``GET /v1/forecast``.

Scoring takes deal records as a CRM sends them (the opportunity, its stage history and
activities inline, optionally its lead and account) and runs the same
:meth:`models.deals.DealScorer.score` as ``funnelcast score opportunities``. The funnel and
the forecast read the configured export (``FUNNELCAST_DATA``, else the sample), loaded once.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from datetime import datetime
from typing import Annotated

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from features.contract import TABLES, Export
from features.errors import BadRow, ModelNotAvailable
from features.io import coerce_table
from models.registry import LoadedModel
from models.tasks import Task
from serving.deps import ApiKeyDep, SettingsDep
from serving.errors import RequestProblem, bad_rows_as_problem
from serving.records import _custom_kinds, _row, utc_timestamp
from serving.schemas import AccountRecord, ActivityRecord, ErrorResponse, LeadRecord, ModelRef, Reason, _Record

router = APIRouter(prefix="/v1", tags=["deals"], dependencies=[ApiKeyDep])
_ERRORS = {
    401: {"model": ErrorResponse, "description": "Missing or invalid X-API-Key"},
    413: {"model": ErrorResponse, "description": "Too many deals in one request"},
    422: {"model": ErrorResponse, "description": "Invalid records or parameters: each error names the field path"},
    503: {"model": ErrorResponse, "description": "No deal model is loaded yet (run `funnelcast train-deals`)"},
}
GROUPINGS = ("none", "owner_id", "team", "industry", "product")


async def get_deal_model(request: Request) -> LoadedModel:
    # async: it only reads the app state (see serving/deps.py)
    loaded = request.app.state.models.get(Task.STAGE_CONVERSION.value)
    if loaded is None:
        reason = request.app.state.load_errors.get(Task.STAGE_CONVERSION.value,
                                                   "not loaded; run `funnelcast train-deals`")
        raise ModelNotAvailable(Task.STAGE_CONVERSION.value, reason)
    return loaded


DealModelDep = Annotated[LoadedModel, Depends(get_deal_model)]


# ------------------------------------------------------------------ schemas
class OpportunityRecord(_Record):
    """A row of the contract's ``opportunities`` table (the deal as the CRM holds it now)."""

    opportunity_id: str = Field(min_length=1, examples=["O-1"])
    account_id: str = Field(min_length=1)
    created_at: datetime
    lead_id: str | None = None
    owner_id: str | None = None
    type: str | None = Field(None, examples=["new"], description="new, upsell, renewal")
    product: str | None = None
    amount: float | None = Field(None, ge=0)
    expected_close_date: datetime | None = None
    stage: str = Field(examples=["proposal"], description="the current open stage")
    outcome: str = Field("open", description="must be open: closed deals are not scored")


class StageEntryRecord(BaseModel):
    """A row of ``stage_history``: a stage the deal entered, with its amount and close date then."""

    stage: str
    entered_at: datetime
    amount: float | None = None
    expected_close_date: datetime | None = None


class DealScoreItem(BaseModel):
    """One deal: the opportunity, its stage history (every stage entered, in any order) and
    activities; its originating lead and account when the CRM has them. Without a stage
    history, the deal is taken as in its current stage since its creation."""

    opportunity: OpportunityRecord
    stage_history: list[StageEntryRecord] = Field(default_factory=list)
    activities: list[ActivityRecord] = Field(default_factory=list)
    lead: LeadRecord | None = None
    account: AccountRecord | None = None


class DealScoreRequest(BaseModel):
    as_of: datetime | None = Field(None, description="Score as of this time (default: now); later rows are ignored")
    opportunities: list[DealScoreItem] = Field(min_length=1, description="1 to 1,000 deals (FUNNELCAST_MAX_BATCH)")


class DealScore(BaseModel):
    opportunity_id: str
    stage: str
    p_win: float = Field(ge=0, le=1, description="P(won eventually)")
    p_win_within_horizon: float = Field(ge=0, le=1, description="P(won within the horizon)")
    p_next_stage: float = Field(ge=0, le=1, description="P(enters the next stage within the horizon)")
    expected_close_date: str = Field(description="as_of + the expected time to a win, given a win (YYYY-MM-DD)")
    amount: float = Field(description="The deal's last known amount, else predicted from similar deals")
    amount_predicted: bool
    expected_value: float = Field(description="p_win x amount")
    reasons: list[Reason] = Field(description="Top reasons for p_win in probability points")
    warnings: list[str]
    model: ModelRef


class DealScoreResponse(BaseModel):
    as_of: datetime
    horizon_days: int
    model: ModelRef
    scores: list[DealScore]


class FunnelStage(BaseModel):
    group: str | None = None
    stage: str
    entered: int
    moved_on: int
    lost: int
    still_open: int
    conversion: float | None = Field(description="moved on / (moved on + lost) among resolved entries")
    drop_off: float | None
    median_days: float | None
    p90_days: float | None
    value_lost: float = Field(description="Expected value lost: amount x stage win rate of deals lost from the stage")


class FunnelResponse(BaseModel):
    start: datetime
    end: datetime
    by: str
    bottleneck: str
    most_changed: str
    summary: str
    stages: list[FunnelStage]
    overall: list[FunnelStage]


class ForecastGroup(BaseModel):
    group: str
    open_deals: int
    open_pipeline: float
    expected_open_pipeline: float
    expected_new_deals: float
    expected_bookings: float
    p10: float
    p50: float
    p90: float
    weighted_pipeline: float = Field(description="CRM: stage win rate x amount of deals dated in the horizon")
    reps_close_dates: float = Field(description="Amount of deals whose close date is in the horizon")


class ForecastResponse(BaseModel):
    as_of: datetime
    horizon_days: int
    by: str
    model: ModelRef
    groups: list[ForecastGroup]


# ------------------------------------------------------------------ records -> frames
def _num(v: object) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def deal_frames(items: list[DealScoreItem], scorer, open_stages: tuple[str, ...]):
    """Typed opportunities, stage history, activities, leads and accounts of a request (422 on a bad field)."""
    ids = [it.opportunity.opportunity_id.strip() for it in items]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        errors = [(f"opportunities[{k}].opportunity.opportunity_id", f"duplicate id {ids[k]!r} in this batch")
                  for k in range(len(ids)) if ids[k] in dup]
        raise RequestProblem(f"duplicate opportunity ids in the batch: {', '.join(map(repr, dup[:10]))}", errors)
    spec = scorer.spec
    rows = {"opportunities": [], "stage_history": [], "activities": [], "leads": [], "accounts": []}
    paths = {k: [] for k in rows}
    for i, it in enumerate(items):
        opp = _row(it.opportunity)
        rows["opportunities"].append(opp)
        paths["opportunities"].append(f"opportunities[{i}].opportunity")
        history = it.stage_history or [StageEntryRecord(stage=it.opportunity.stage, entered_at=it.opportunity.created_at,
                                                        amount=it.opportunity.amount,
                                                        expected_close_date=it.opportunity.expected_close_date)]
        for j, h in enumerate(history):
            rows["stage_history"].append({"opportunity_id": ids[i], **_row(h)})
            paths["stage_history"].append(f"opportunities[{i}].stage_history[{j}]")
        for j, a in enumerate(it.activities):
            r = _row(a)
            if r.get("opportunity_id") is None:
                r["opportunity_id"] = ids[i]
            elif r["opportunity_id"].strip() != ids[i]:
                raise RequestProblem("activity attached to another deal", [(
                    f"opportunities[{i}].activities[{j}].opportunity_id", f"{r['opportunity_id']!r} is not {ids[i]!r}")])
            rows["activities"].append(r)
            paths["activities"].append(f"opportunities[{i}].activities[{j}]")
        if it.lead is not None:
            lead = _row(it.lead)
            if opp.get("lead_id") is None:
                opp["lead_id"] = lead["lead_id"]
            rows["leads"].append(lead)
            paths["leads"].append(f"opportunities[{i}].lead")
        if it.account is not None:
            rows["accounts"].append(_row(it.account))
            paths["accounts"].append(f"opportunities[{i}].account")
    kinds = {
        "opportunities": _custom_kinds("opportunities", spec.opportunity_categoricals, spec.opportunity_numerics),
        "leads": _custom_kinds("leads", spec.lead_categoricals, spec.lead_numerics),
        "accounts": _custom_kinds("accounts", spec.account_categoricals, spec.account_numerics),
    }
    bad: list[tuple[str, BadRow]] = []
    frames = {}
    for table, table_rows in rows.items():
        frame = pd.DataFrame(table_rows) if table_rows else pd.DataFrame(columns=TABLES[table].column_names)
        custom = {c: k for c, k in kinds.get(table, {}).items() if c in frame.columns}
        out, problems = coerce_table(table, frame, open_stages=open_stages, row_offset=0, custom_kinds=custom)
        bad.extend((paths[table][b.row], b) for b in problems)
        frames[table] = out
    if bad:
        raise bad_rows_as_problem(bad)
    closed = frames["opportunities"]["outcome"] != "open"
    if closed.any():
        errors = [(f"opportunities[{i}].opportunity.outcome", "only open deals are scored") for i in np.flatnonzero(closed)]
        raise RequestProblem(f"{len(errors)} closed deal(s) in the batch", errors)
    # each deal's lead: drop duplicates (several deals of one lead)
    frames["leads"] = frames["leads"].drop_duplicates("lead_id")
    frames["accounts"] = frames["accounts"].drop_duplicates("account_id")
    return frames


@router.post("/opportunities/score", response_model=DealScoreResponse, responses=_ERRORS)
def score_opportunities(body: DealScoreRequest, model: DealModelDep, settings: SettingsDep, request: Request,
                        response: Response) -> DealScoreResponse:
    """Score up to 1,000 open deals: P(won), P(won within the horizon), P(next stage within the
    horizon), expected close date and value, and the top 5 reasons for P(won) in probability points."""
    if len(body.opportunities) > settings.max_batch:
        raise RequestProblem(f"batch of {len(body.opportunities):,} deals exceeds the limit of {settings.max_batch:,}; "
                             "split it into smaller requests",
                             [("opportunities", f"at most {settings.max_batch} items")], status_code=413)
    scorer = model.scorer
    as_of = utc_timestamp(body.as_of)
    f = deal_frames(body.opportunities, scorer, settings.open_stages)
    scored = scorer.score(f["opportunities"], f["stage_history"], f["activities"], f["leads"], f["accounts"], as_of)
    ref = ModelRef(name=model.name, version=model.version)
    scores = [
        DealScore(
            opportunity_id=r.opportunity_id, stage=r.stage, p_win=r.p_win, p_win_within_horizon=r.p_win_within_horizon,
            p_next_stage=r.p_next_stage, expected_close_date=str(pd.Timestamp(r.expected_close_date).date()),
            amount=_num(r.amount) or 0.0, amount_predicted=bool(r.amount_predicted), expected_value=_num(r.expected_value) or 0.0,
            reasons=[Reason(**{**x, "value": None if isinstance(x["value"], float) and math.isnan(x["value"]) else x["value"]})
                     for x in r.reasons],
            warnings=list(r.warnings), model=ref,
        )
        for r in scored.itertuples(index=False)
    ]
    request.app.state.metrics.scores.labels(model.name, model.version).inc(len(scores))
    response.headers["X-Model-Version"] = f"{model.name}/{model.version}"
    return DealScoreResponse(as_of=as_of.to_pydatetime(), horizon_days=scorer.spec.horizon_days, model=ref,
                             scores=scores)


# ------------------------------------------------------------------ funnel and forecast over the configured export
_lock = threading.Lock()


def configured_export(request: Request, settings) -> Export:
    """The configured export, loaded once per process (bad rows skipped, as for the worklist)."""
    state = request.app.state
    if getattr(state, "deal_export", None) is None:
        with _lock:
            if getattr(state, "deal_export", None) is None:
                from features.io import load_export

                source = settings.data or str(settings.sample_export)
                state.deal_export, _ = load_export(source, open_stages=settings.open_stages, skip_bad_rows=True)
    return state.deal_export


def _as_of(value: datetime | None, export: Export) -> pd.Timestamp:
    return utc_timestamp(value) if value is not None else export.exported_at


def _stages(frame: pd.DataFrame) -> list[FunnelStage]:
    out = []
    for r in frame.to_dict("records"):
        out.append(FunnelStage(**{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()
                                  if k in FunnelStage.model_fields}))
    return out


@router.get("/funnel", response_model=FunnelResponse, responses=_ERRORS)
def funnel(request: Request, settings: SettingsDep,
           as_of: Annotated[datetime | None, Query(description="End of the period (default: the export time)")] = None,
           by: Annotated[str, Query(description="none, owner_id, team, industry or product")] = "none",
           period_days: Annotated[int, Query(ge=7, le=730, description="Period length in days")] = 91) -> FunnelResponse:
    """Stage-to-stage conversion, time in stage (median, p90), drop-off and expected value lost per
    stage over the period, by group; the bottleneck stage and where it changed most."""
    from models.funnel import funnel_report

    if by not in GROUPINGS:
        raise RequestProblem(f"unknown grouping {by!r}", [("by", f"one of {', '.join(GROUPINGS)}")])
    export = configured_export(request, settings)
    report = funnel_report(export, _as_of(as_of, export), period_days=period_days, by=by)
    return FunnelResponse(start=report.start.to_pydatetime(), end=report.end.to_pydatetime(), by=by,
                          bottleneck=report.bottleneck, most_changed=report.most_changed, summary=report.summary(),
                          stages=_stages(report.table), overall=_stages(report.overall))


@router.get("/forecast", response_model=ForecastResponse, responses=_ERRORS)
def forecast(request: Request, settings: SettingsDep, model: DealModelDep,
             as_of: Annotated[datetime | None, Query(description="Forecast time (default: the export time)")] = None,
             horizon_days: Annotated[int | None, Query(ge=1, le=730, description="Default: the model's")] = None,
             by: Annotated[str, Query(description="none, owner_id, team, industry or product")] = "owner_id",
             sims: Annotated[int, Query(ge=100, le=20000, description="Simulations")] = 5000,
             seed: Annotated[int, Query(ge=0)] = 0) -> ForecastResponse:
    """Expected bookings within the horizon per group (open pipeline + deals not yet created),
    P10/P50/P90 from simulation, beside the CRM weighted pipeline and the reps' close dates."""
    from models.forecast import forecast_bookings

    if by not in GROUPINGS:
        raise RequestProblem(f"unknown grouping {by!r}", [("by", f"one of {', '.join(GROUPINGS)}")])
    export = configured_export(request, settings)
    t = _as_of(as_of, export)
    h = horizon_days or model.scorer.spec.horizon_days
    table = forecast_bookings(export, model.scorer, t, by=by, horizon_days=h, n_sims=sims, seed=seed)
    table = table.rename(columns={table.columns[0]: "group"})
    groups = [ForecastGroup(**{k: (str(v) if k == "group" else v) for k, v in r.items() if k in ForecastGroup.model_fields})
              for r in table.to_dict("records")]
    return ForecastResponse(as_of=t.to_pydatetime(), horizon_days=h, by=by,
                            model=ModelRef(name=model.name, version=model.version), groups=groups)
