"""What every task's schemas share: the contract's records, the model reference, a reason, an error.

Records follow the data contract (``shared/spec/data-contract.md``); fields the contract
does not name are custom fields and are passed through as features, as in an export.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

#: Timestamps a request may carry: pandas holds 1677-2262, and a horizon or period added to
#: ``as_of`` must still fit, so requests keep to these years (documented in OpenAPI).
FIRST_YEAR, LAST_YEAR = 1900, 2199
_NUMERIC = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")
#: Largest amount or value a request may carry (a thousand trillion): sums of it stay finite.
MAX_AMOUNT = 1e15


def _timestamp_text(value: object) -> object:
    """Refuse a number (or numeric text) as a timestamp: pydantic would read it as Unix seconds."""
    if isinstance(value, bool | int | float) or (isinstance(value, str) and _NUMERIC.fullmatch(value.strip())):
        raise ValueError("a timestamp is ISO 8601 text such as 2026-03-01T09:30:00Z, not a number")
    return value


def _in_range(value: datetime) -> datetime:
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValueError(f"{value.isoformat()} is outside the years {FIRST_YEAR} to {LAST_YEAR}")
    return value


#: A request timestamp: ISO 8601 text (no offset = UTC), years 1900-2199, never a number.
Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp_text),
    AfterValidator(_in_range),
    Field(json_schema_extra={"formatMinimum": f"{FIRST_YEAR}-01-01T00:00:00Z",
                             "formatMaximum": f"{LAST_YEAR}-12-31T23:59:59Z"}),
]
#: A JSON number, finite (no Infinity, NaN or 1e309), never a boolean or a string.
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
#: A non-negative amount or count, finite and at most :data:`MAX_AMOUNT`.
Amount = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0, le=MAX_AMOUNT)]


class ContractRecord(BaseModel):
    """A row of a contract table as a CRM sends it; fields the contract does not name are custom fields."""

    model_config = ConfigDict(extra="allow")


class LeadRecord(ContractRecord):
    """A row of the contract's ``leads`` table; any extra field is a custom field."""

    lead_id: str = Field(min_length=1, description="The CRM's lead id", examples=["L-1"])
    created_at: Timestamp = Field(description="When the lead was created (ISO 8601; no offset = UTC)")
    account_id: str | None = Field(None, description="The lead's company, when matched")
    owner_id: str | None = Field(None, description="The rep who owns the lead")
    source: str | None = Field(None, examples=["referral"], description="web, referral, event, outbound, partner, ...")
    seniority: str | None = Field(None, examples=["vp"], description="c_level, vp, director, manager, individual, ...")
    country: str | None = None
    converted_at: Timestamp | None = None
    opportunity_id: str | None = None
    disqualified_at: Timestamp | None = None


class AccountRecord(ContractRecord):
    """A row of the contract's ``accounts`` table; any extra field is a custom field."""

    account_id: str = Field(min_length=1)
    created_at: Timestamp
    industry: str | None = None
    country: str | None = None
    employees: Amount | None = None
    annual_revenue: Amount | None = None


class ActivityRecord(BaseModel):
    """A row of the contract's ``activities`` table. ``lead_id`` defaults to the lead it is sent with."""

    activity_id: str = Field(min_length=1)
    occurred_at: Timestamp
    type: str = Field(min_length=1, examples=["web_visit"], description="email, call, meeting, web_visit, event, ...")
    lead_id: str | None = None
    opportunity_id: str | None = None
    account_id: str | None = None
    direction: str | None = Field(None, examples=["inbound"], description="inbound / outbound")
    score: Number | None = None


class OpportunityRecord(ContractRecord):
    """A row of the contract's ``opportunities`` table (the deal as the CRM holds it now); any
    extra field is a custom field. ``account_id`` defaults to the account it is sent with."""

    opportunity_id: str = Field(min_length=1, examples=["O-1"])
    account_id: str | None = Field(None, min_length=1, description="The deal's account")
    created_at: Timestamp
    lead_id: str | None = None
    owner_id: str | None = None
    type: str | None = Field(None, examples=["new"], description="new, upsell, renewal")
    product: str | None = None
    amount: Amount | None = None
    expected_close_date: Timestamp | None = None
    stage: str = Field(examples=["proposal"], description="the current stage")
    outcome: str = Field("open", description="open, won or lost (deal scoring takes open deals only)")
    closed_at: Timestamp | None = None


class StageEntryRecord(BaseModel):
    """A row of ``stage_history``: a stage the deal entered, with its amount and close date then."""

    stage: str
    entered_at: Timestamp
    amount: Amount | None = None
    expected_close_date: Timestamp | None = None


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
    request_id: str | None = Field(None, description="The X-Request-ID of the request (the server's log line has it)")


_MEANINGS = {
    401: "Missing or invalid X-API-Key",
    403: "Not an admin key",
    404: "No such resource",
    413: "Too many records in one request",
    422: "Invalid records or parameters: each error names the field path and the reason",
    429: "Rate limit for this API key (or of failed keys from this address) exceeded (see Retry-After)",
    500: "A fault of the server: quote the request id to the operator",
    503: "The task's model is not loaded, the server's MLflow store or export cannot be read, or the server is busy "
         "(see Retry-After)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route answering these error codes, for OpenAPI."""
    return {code: {"model": ErrorResponse, "description": _MEANINGS[code]} for code in codes}
