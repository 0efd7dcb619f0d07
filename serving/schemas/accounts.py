"""Account schemas: ``POST /v1/accounts/score``, ``GET /v1/traits``, ``POST /v1/allocation``, ``GET /v1/worklist``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from serving.schemas.common import (
    MAX_AMOUNT,
    AccountRecord,
    ActivityRecord,
    LeadRecord,
    ModelRef,
    Number,
    OpportunityRecord,
    Reason,
    Timestamp,
)


class AccountScoreItem(BaseModel):
    """One account with its leads, opportunities (open or closed) and activities as the CRM holds them."""

    account: AccountRecord
    leads: list[LeadRecord] = Field(default_factory=list)
    opportunities: list[OpportunityRecord] = Field(default_factory=list)
    activities: list[ActivityRecord] = Field(default_factory=list)


class AccountScoreRequest(BaseModel):
    as_of: Timestamp | None = Field(None, description="Score as of this time (default: now)")
    accounts: list[AccountScoreItem] = Field(min_length=1, description="1 to 1,000 accounts (FUNNELCAST_MAX_BATCH)")


class AccountScore(BaseModel):
    account_id: str
    probability: float = Field(description="P(high value): customer value in the top share within a year of the first win")
    expected_value: float = Field(description="Expected customer value over the first year")
    is_customer: bool
    base_probability: float
    reasons: list[Reason]
    model: ModelRef


class AccountScoreResponse(BaseModel):
    as_of: datetime
    model: ModelRef
    scores: list[AccountScore]


class RepIn(BaseModel):
    owner_id: str = Field(min_length=1)
    capacity: Number = Field(description="Items per week (>= 0)", le=100_000)
    team: str | None = None
    region: str | None = None
    skills: list[str] | None = Field(None, description="Products the rep can sell (none: all)")
    rep_factor: Number | None = Field(None, ge=0, le=1_000, description="Relative conversion skill (default 1)")


class ItemIn(BaseModel):
    item_id: str = Field(min_length=1)
    kind: str = Field("lead", description="lead, deal or account")
    expected_value: Number = Field(ge=0, le=MAX_AMOUNT, description="Finite, 0 to 1e15")
    owner_id: str | None = Field(None, description="Current owner (must be one of the reps)")
    region: str | None = None
    team: str | None = None
    product: str | None = None
    pinned_to: str | None = Field(None, description="Only this rep may work it")
    reason: str | None = None


class AllocationRequest(BaseModel):
    reps: list[RepIn] = Field(min_length=1, max_length=1_000)
    items: list[ItemIn] = Field(max_length=10_000)


class Assignment(BaseModel):
    item_id: str
    kind: str
    rank: int
    value: float
    expected_value: float
    why: str


class Worklist(BaseModel):
    owner_id: str
    capacity: float
    items: list[Assignment]


class AllocationResponse(BaseModel):
    total_value: float
    method: str
    worklists: list[Worklist]
    unassigned: list[str]


class TraitOut(BaseModel):
    rank: int
    trait: str
    label: str = Field("", description="The trait in plain words (industry is software and company size at least 1,000)")
    conditions: list[dict[str, Any]]
    accounts: int
    share: float
    lift: float
    lift_low: float
    lift_high: float
    heldout_lift: float | None
    heldout_low: float | None
    heldout_high: float | None
    stability: float
    confirmed: bool


class ImportanceOut(BaseModel):
    feature: str
    importance: float
    direction: str


class TraitsResponse(BaseModel):
    model: ModelRef
    threshold: float = Field(description="Customer value at or above which an account is high value")
    traits: list[TraitOut]
    importance: list[ImportanceOut]


class WorkItem(BaseModel):
    kind: str = Field(description="lead, deal or account")
    id: str
    name: str | None = Field(None, description="The entity's name, where the export has one")
    owner_id: str | None
    team: str | None
    score: float = Field(description="Probability (lead: converts; deal: won; account: high value)")
    previous_score: float | None = Field(None, description="The probability in the previous snapshot that had it")
    trend: str = Field("not enough history", description="improving, steady, declining or not enough history")
    expected_value: float = Field(description="Value still to be won (lead: P(converts) x first-deal value; deal: "
                                  "P(won) x amount; account: next 12 months beyond booked value and open items)")
    effort: float
    value_per_effort: float
    reasons: list[str] = Field(description="What a rep can act on first (activity, stage, timing, fit)")


class EffortOut(BaseModel):
    kind: str = Field(description="lead, deal or account")
    stage: str | None = Field(None, description="The deal stage this effort is of (a deal's effort is its stage's)")
    effort: float = Field(description="Effort of one such item, in effort_unit")
    source: str = Field(description="data (measured on the export), fallback, default, setting or request")
    examples: int = Field(description="Items of the export it was measured on (0 when not measured)")
    rule: str = Field(description="How it was found, in words")


class WorklistResponse(BaseModel):
    as_of: str
    refreshed_at: str | None = Field(None, description="When the snapshot the list comes from was scored")
    age_seconds: float | None = Field(None, description="Seconds since that snapshot was scored")
    snapshot_id: int | None = None
    items: list[WorkItem]
    owners: list[str]
    teams: list[str]
    missing: list[str] = Field(description="Parts not available (a model not registered, ...)")
    effort_unit: str = Field("rep touches", description="The unit of every effort (rep touches when measured)")
    efforts: list[EffortOut] = Field(default_factory=list, description="The efforts the ranking used and where "
                                     "each came from")
