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


class PeriodForecastGroup(BaseModel):
    """One group's forecast of a calendar period (money in the export's currency, rounded to cents)."""

    group: str
    is_rep: bool = Field(description="True for a rep's own row (by owner_id); 'unassigned' deals are no rep")
    won_so_far: float = Field(description="Won in the period before as_of")
    won_deals: int
    open_deals: int
    open_pipeline: float = Field(description="Amount of the deals open at as_of")
    expected_open_pipeline: float = Field(description="Open deals: P(won before the period end) x amount, summed")
    expected_new_deals: float = Field(description="Deals not yet created, won before the period end (run rate)")
    expected_total: float = Field(description="won_so_far + expected_open_pipeline + expected_new_deals")
    p10: float = Field(description="Period bookings: 10th percentile (won so far + simulated rest)")
    p50: float
    p90: float
    weighted_pipeline: float = Field(description="CRM: stage win rate x amount of open deals dated before the period end")
    reps_close_dates: float = Field(description="Amount of open deals whose CRM close date is before the period end")
    crm_commit: float | None = Field(None, description="Open amount in the CRM forecast category 'commit' dated in the period")
    crm_best_case: float | None = Field(None, description="... in 'best case'")
    crm_pipeline: float | None = Field(None, description="... in 'pipeline'")


class PeriodForecastResponse(BaseModel):
    """``GET /v1/forecast?period=month|quarter``: the calendar period holding ``as_of``."""

    as_of: datetime
    period: str
    start: datetime
    end: datetime = Field(description="First instant after the period")
    by: str
    model: ModelRef
    new_deals: str = Field(description="How deals not yet created are forecast")
    has_crm_categories: bool = Field(description="Whether the export has a forecast_category column (shown at the export time)")
    total: PeriodForecastGroup = Field(description="The whole company, its band from the summed simulations")
    teams: list[PeriodForecastGroup] | None = Field(None, description="Roll-up by team (by owner_id only)")
    groups: list[PeriodForecastGroup]
