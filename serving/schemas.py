"""Request and response schemas of the API, named for their role.

Records follow the data contract (``shared/spec/data-contract.md``); fields the contract
does not name are custom fields and are passed through as features, as in an export.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class LeadRecord(_Record):
    """A row of the contract's ``leads`` table; any extra field is a custom field."""

    lead_id: str = Field(min_length=1, description="The CRM's lead id", examples=["L-1"])
    created_at: datetime = Field(description="When the lead was created (ISO 8601; no offset = UTC)")
    account_id: str | None = Field(None, description="The lead's company, when matched")
    owner_id: str | None = Field(None, description="The rep who owns the lead")
    source: str | None = Field(None, examples=["referral"], description="web, referral, event, outbound, partner, ...")
    seniority: str | None = Field(None, examples=["vp"], description="c_level, vp, director, manager, individual, ...")
    country: str | None = None
    converted_at: datetime | None = None
    opportunity_id: str | None = None
    disqualified_at: datetime | None = None


class AccountRecord(_Record):
    """A row of the contract's ``accounts`` table; any extra field is a custom field."""

    account_id: str = Field(min_length=1)
    created_at: datetime
    industry: str | None = None
    country: str | None = None
    employees: float | None = Field(None, ge=0)
    annual_revenue: float | None = Field(None, ge=0)


class ActivityRecord(BaseModel):
    """A row of the contract's ``activities`` table. ``lead_id`` defaults to the lead it is sent with."""

    activity_id: str = Field(min_length=1)
    occurred_at: datetime
    type: str = Field(min_length=1, examples=["web_visit"], description="email, call, meeting, web_visit, event, ...")
    lead_id: str | None = None
    opportunity_id: str | None = None
    account_id: str | None = None
    direction: str | None = Field(None, examples=["inbound"], description="inbound / outbound")
    score: float | None = None


class LeadScoreItem(BaseModel):
    """One lead as a CRM sends it: the lead record, its account and its activities."""

    lead: LeadRecord
    account: AccountRecord | None = None
    activities: list[ActivityRecord] = Field(default_factory=list)


class LeadScoreRequest(BaseModel):
    as_of: datetime | None = Field(
        None, description="Score as of this time (default: now). Activities at or after it are ignored."
    )
    leads: list[LeadScoreItem] = Field(min_length=1, description="1 to 1,000 leads (FUNNELCAST_MAX_BATCH)")


class ModelRef(BaseModel):
    name: str = Field(examples=["lead_quality"])
    version: str = Field(examples=["3"])


class Reason(BaseModel):
    feature: str = Field(examples=["source"])
    value: Any = Field(description="The feature's value for this lead (null: unknown)", examples=["referral"])
    contribution: float = Field(
        description="Signed contribution in probability points (0.09 = 9 points); base + contributions = probability"
    )
    text: str = Field(examples=["Source is referral: raises the probability by 9 points"])


class LeadScore(BaseModel):
    lead_id: str
    probability: float = Field(ge=0, le=1, description="Calibrated P(becomes an opportunity within the horizon)")
    score: int = Field(ge=0, le=100, description="Probability in points, 0-100")
    grade: str = Field(description="A: top 10% of leads, B: next 20%, C: next 30%, D: the rest")
    expected_value: float = Field(description="Probability x the value of a converted lead of this industry")
    base_probability: float = Field(description="The model's average probability, where the reasons start from")
    reasons: list[Reason]
    warnings: list[str] = Field(description="Missing fields, unseen categories, ... (the lead was still scored)")
    model: ModelRef


class LeadScoreResponse(BaseModel):
    as_of: datetime
    horizon_days: int
    model: ModelRef
    scores: list[LeadScore]


class ModelVersion(BaseModel):
    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    created_at: str
    trained_from: str | None
    trained_until: str | None
    metrics: dict[str, float]
    loaded: bool = Field(description="Whether this API process serves this version")


class ModelsResponse(BaseModel):
    models: list[ModelVersion]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="Loaded model versions by name")
    reason: str | None = None


class ErrorItem(BaseModel):
    path: str = Field(examples=["leads[2].lead.created_at"])
    reason: str = Field(examples=["not an ISO 8601 timestamp"])


class ErrorResponse(BaseModel):
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)
