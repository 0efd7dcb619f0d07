"""Lead scoring schemas: ``POST /v1/leads/score``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from serving.schemas.common import AccountRecord, ActivityRecord, LeadRecord, ModelRef, Reason, Timestamp


class LeadScoreItem(BaseModel):
    """One lead as a CRM sends it: the lead record, its account and its activities."""

    lead: LeadRecord
    account: AccountRecord | None = None
    activities: list[ActivityRecord] = Field(default_factory=list)


class LeadScoreRequest(BaseModel):
    as_of: Timestamp | None = Field(
        None, description="Score as of this time (default: now). Activities at or after it are ignored."
    )
    leads: list[LeadScoreItem] = Field(min_length=1, description="1 to 1,000 leads (FUNNELCAST_MAX_BATCH)")


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
