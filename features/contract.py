"""The CRM export data contract, version 1 (``shared/spec/data-contract.md``) as code.

Every table is described once here: its columns, their kind and whether they are
required. The loader validates against these specs, the sample generator writes them,
and the feature code reads the typed frames the loader returns (:class:`Export`).

Typed frames (what :func:`features.io.load_export` returns):

* id columns: pandas ``str`` dtype (never numeric), missing as ``NaN``;
* timestamp and date columns: ``datetime64[ns, UTC]`` (dates are midnight UTC);
* category columns: ``str``, trimmed and case-folded, missing as ``NaN``;
* numeric columns: ``float64``;
* any other column is a custom field, kept as it came (numeric -> float64, else str).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import pandas as pd


class Kind(StrEnum):
    ID = "id"
    TIMESTAMP = "timestamp"
    DATE = "date"
    CATEGORY = "category"
    NUMBER = "number"
    OUTCOME = "outcome"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = False
    unique: bool = False
    min_value: float | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    key: str | None = None
    required_table: bool = True

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


ACCOUNTS = TableSpec(
    "accounts",
    (
        Column("account_id", Kind.ID, required=True, unique=True),
        Column("created_at", Kind.TIMESTAMP, required=True),
        Column("industry", Kind.CATEGORY),
        Column("country", Kind.CATEGORY),
        Column("employees", Kind.NUMBER, min_value=0),
        Column("annual_revenue", Kind.NUMBER, min_value=0),
        Column("name", Kind.ID),  # free text for people (kept as it came, never a feature)
    ),
    key="account_id",
)

LEADS = TableSpec(
    "leads",
    (
        Column("lead_id", Kind.ID, required=True, unique=True),
        Column("created_at", Kind.TIMESTAMP, required=True),
        Column("account_id", Kind.ID),
        Column("owner_id", Kind.ID),
        Column("source", Kind.CATEGORY),
        Column("seniority", Kind.CATEGORY),
        Column("country", Kind.CATEGORY),
        Column("converted_at", Kind.TIMESTAMP),
        Column("opportunity_id", Kind.ID),
        Column("disqualified_at", Kind.TIMESTAMP),
        Column("name", Kind.ID),
    ),
    key="lead_id",
)

OPPORTUNITIES = TableSpec(
    "opportunities",
    (
        Column("opportunity_id", Kind.ID, required=True, unique=True),
        Column("account_id", Kind.ID, required=True),
        Column("created_at", Kind.TIMESTAMP, required=True),
        Column("lead_id", Kind.ID),
        Column("owner_id", Kind.ID),
        Column("type", Kind.CATEGORY),
        Column("product", Kind.CATEGORY),
        Column("amount", Kind.NUMBER, min_value=0),
        Column("expected_close_date", Kind.DATE),
        Column("stage", Kind.CATEGORY, required=True),
        Column("outcome", Kind.OUTCOME, required=True),
        Column("closed_at", Kind.TIMESTAMP),
        Column("name", Kind.ID),
        Column("forecast_category", Kind.CATEGORY),  # the CRM's current call: shown beside the forecast, never a feature
    ),
    key="opportunity_id",
)

STAGE_HISTORY = TableSpec(
    "stage_history",
    (
        Column("opportunity_id", Kind.ID, required=True),
        Column("stage", Kind.CATEGORY, required=True),
        Column("entered_at", Kind.TIMESTAMP, required=True),
        Column("amount", Kind.NUMBER),
        Column("expected_close_date", Kind.DATE),
    ),
)

ACTIVITIES = TableSpec(
    "activities",
    (
        Column("activity_id", Kind.ID, required=True, unique=True),
        Column("occurred_at", Kind.TIMESTAMP, required=True),
        Column("type", Kind.CATEGORY, required=True),
        Column("lead_id", Kind.ID),
        Column("opportunity_id", Kind.ID),
        Column("account_id", Kind.ID),
        Column("direction", Kind.CATEGORY),
        Column("score", Kind.NUMBER),
    ),
    key="activity_id",
)

REPS = TableSpec(
    "reps",
    (
        Column("owner_id", Kind.ID, required=True, unique=True),
        Column("team", Kind.CATEGORY),
        Column("region", Kind.CATEGORY),
        Column("capacity", Kind.NUMBER, min_value=0),
    ),
    key="owner_id",
    required_table=False,
)

TABLES: dict[str, TableSpec] = {
    t.name: t for t in (ACCOUNTS, LEADS, OPPORTUNITIES, STAGE_HISTORY, ACTIVITIES, REPS)
}

#: Foreign keys checked by the loader: (table, column) -> (referenced table, column).
FOREIGN_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("leads", "account_id"): ("accounts", "account_id"),
    ("leads", "opportunity_id"): ("opportunities", "opportunity_id"),
    ("opportunities", "account_id"): ("accounts", "account_id"),
    ("opportunities", "lead_id"): ("leads", "lead_id"),
    ("stage_history", "opportunity_id"): ("opportunities", "opportunity_id"),
    ("activities", "lead_id"): ("leads", "lead_id"),
    ("activities", "opportunity_id"): ("opportunities", "opportunity_id"),
    ("activities", "account_id"): ("accounts", "account_id"),
}

OUTCOMES = ("open", "won", "lost")
DEFAULT_OPEN_STAGES: tuple[str, ...] = ("qualification", "proposal", "contract")
TERMINAL_STAGES: tuple[str, ...] = ("won", "lost")


def normalize_category(values: pd.Series) -> pd.Series:
    """Trim whitespace and case-fold category values; empty strings become missing."""
    out = values.astype("str").str.strip().str.casefold()
    return out.where(values.notna() & (out != ""))


def custom_columns(table: str, frame: pd.DataFrame) -> list[str]:
    """Columns of ``frame`` that the contract does not name: the customer's custom fields."""
    known = set(TABLES[table].column_names)
    return [c for c in frame.columns if c not in known]


@dataclass
class Export:
    """A typed, validated CRM export: one frame per contract table.

    ``open_stages`` is the configured ordered list of open stages.
    ``exported_at`` is the latest timestamp seen anywhere in the export (the snapshot time)
    unless the source says otherwise.
    """

    accounts: pd.DataFrame
    leads: pd.DataFrame
    opportunities: pd.DataFrame
    stage_history: pd.DataFrame
    activities: pd.DataFrame
    reps: pd.DataFrame | None = None
    open_stages: tuple[str, ...] = DEFAULT_OPEN_STAGES
    exported_at: pd.Timestamp | None = None
    custom_fields: dict[str, list[str]] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame | None:
        return getattr(self, name)

    @property
    def stages(self) -> tuple[str, ...]:
        return (*self.open_stages, *TERMINAL_STAGES)
