"""Live schemas: the scored snapshot's state, refresh, the score feed and an entity's history."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class SnapshotState(BaseModel):
    snapshot_id: int | None = Field(None, description="The snapshot served (the latest good one)")
    as_of: datetime | None = Field(None, description="The export time the served snapshot scored")
    refreshed_at: datetime | None = Field(None, description="When the served snapshot was scored")
    age_seconds: float | None = None
    status: str = Field(description="ok, failed (the latest refresh failed: the last good snapshot is served), "
                        "refreshing (no snapshot yet: the first is being computed, since refresh_started_at) or none")
    error: str | None = Field(None, description="Why the latest refresh failed")
    refresh_started_at: datetime | None = Field(
        None, description="When the refresh running now in this server process started (null: none is running)")


class RefreshResponse(BaseModel):
    status: str = Field(description="ok or failed")
    snapshot_id: int | None
    source: str
    as_of: datetime | None
    refreshed_at: datetime | None
    counts: dict[str, int] = Field(description="Leads, deals and accounts scored; scores new or changed")
    models: dict[str, str]
    missing: list[str]
    bad_rows: int = Field(description="Rows of the source skipped as invalid (see bad_rows_summary)")
    bad_rows_summary: str | None
    duration_seconds: float
    error: str | None = None


class FeedScore(BaseModel):
    kind: str = Field(description="lead, deal or account")
    id: str = Field(description="The CRM record id")
    name: str | None
    owner_id: str | None
    snapshot_id: int
    as_of: datetime
    refreshed_at: datetime
    model: str
    model_version: str
    probability: float
    score: int = Field(description="0-100")
    grade: str | None = Field(description="Leads: A-D")
    expected_value: float = Field(description="Value still to be won")
    trend: str
    previous_probability: float | None
    reasons: list[str]


class FeedResponse(BaseModel):
    scores: list[FeedScore]
    next_page_token: str | None = Field(description="Pass as page_token for the next page; null: the last page")


class HistoryPoint(BaseModel):
    snapshot_id: int
    as_of: datetime
    refreshed_at: datetime
    probability: float
    score: int
    grade: str | None
    expected_value: float
    model_version: str


class HistoryResponse(BaseModel):
    kind: str
    id: str
    trend: str = Field(description="improving, steady, declining or not enough history")
    points: list[HistoryPoint] = Field(description="Oldest first")
