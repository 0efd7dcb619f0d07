"""Deal schemas: ``POST /v1/opportunities/score``, ``GET /v1/funnel``, ``GET /v1/forecast``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from serving.schemas.common import (
    AccountRecord,
    ActivityRecord,
    LeadRecord,
    ModelRef,
    OpportunityRecord,
    Reason,
    StageEntryRecord,
    Timestamp,
)


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
    as_of: Timestamp | None = Field(None, description="Score as of this time (default: now); later rows are ignored")
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
    p10: float = Field(description="Bookings in the horizon: 10th percentile of the simulations")
    p50: float = Field(description="Median of the simulated bookings")
    p90: float = Field(description="90th percentile of the simulated bookings")
    weighted_pipeline: float = Field(description="CRM: stage win rate x amount of deals dated in the horizon")
    reps_close_dates: float = Field(description="Amount of deals whose close date is in the horizon")


class ForecastResponse(BaseModel):
    as_of: datetime
    horizon_days: int
    by: str
    model: ModelRef
    groups: list[ForecastGroup]
