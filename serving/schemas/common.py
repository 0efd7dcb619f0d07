"""What every task's schemas share: the contract's records, the model reference, a reason, an error.

Records follow the data contract (``shared/spec/data-contract.md``); fields the contract
does not name are custom fields and are passed through as features, as in an export.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ContractRecord(BaseModel):
    """A row of a contract table as a CRM sends it; fields the contract does not name are custom fields."""

    model_config = ConfigDict(extra="allow")


class LeadRecord(ContractRecord):
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


class AccountRecord(ContractRecord):
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


class OpportunityRecord(ContractRecord):
    """A row of the contract's ``opportunities`` table (the deal as the CRM holds it now); any
    extra field is a custom field. ``account_id`` defaults to the account it is sent with."""

    opportunity_id: str = Field(min_length=1, examples=["O-1"])
    account_id: str | None = Field(None, min_length=1, description="The deal's account")
    created_at: datetime
    lead_id: str | None = None
    owner_id: str | None = None
    type: str | None = Field(None, examples=["new"], description="new, upsell, renewal")
    product: str | None = None
    amount: float | None = Field(None, ge=0)
    expected_close_date: datetime | None = None
    stage: str = Field(examples=["proposal"], description="the current stage")
    outcome: str = Field("open", description="open, won or lost (deal scoring takes open deals only)")
    closed_at: datetime | None = None


class StageEntryRecord(BaseModel):
    """A row of ``stage_history``: a stage the deal entered, with its amount and close date then."""

    stage: str
    entered_at: datetime
    amount: float | None = None
    expected_close_date: datetime | None = None


class ModelRef(BaseModel):
    name: str = Field(examples=["lead_quality"])
    version: str = Field(examples=["3"])


class Reason(BaseModel):
    feature: str = Field(examples=["source"])
    label: str | None = Field(None, description="The feature's plain label", examples=["Source"])
    value: Any = Field(description="The feature's value for this lead (null: unknown)", examples=["referral"])
    contribution: float = Field(
        description="Signed contribution in probability points (0.09 = 9 points); base + contributions = probability"
    )
    text: str = Field(examples=["Source is referral: raises the probability by 9 points"])


def served_reasons(reasons: Iterable[dict[str, Any]]) -> list[Reason]:
    """A scorer's reasons as served: an unknown (NaN) feature value is null."""
    return [Reason(**{**r, "value": None if isinstance(r["value"], float) and not math.isfinite(r["value"]) else r["value"]})
            for r in reasons]


class ErrorItem(BaseModel):
    path: str = Field(examples=["leads[2].lead.created_at"])
    reason: str = Field(examples=["not an ISO 8601 timestamp"])


class ErrorResponse(BaseModel):
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)


_MEANINGS = {
    401: "Missing or invalid X-API-Key",
    403: "Not an admin key",
    404: "No such resource",
    413: "Too many records in one request",
    422: "Invalid records or parameters: each error names the field path and the reason",
    429: "Rate limit for this API key exceeded (see Retry-After)",
    503: "The task's model is not loaded yet (run `funnelcast train`)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route answering these error codes, for OpenAPI."""
    return {code: {"model": ErrorResponse, "description": _MEANINGS[code]} for code in codes}
