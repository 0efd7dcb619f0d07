"""Point-in-time correctness in two small functions (after Feast).

Every feature "as of" ``as_of`` is computed from rows whose own timestamp is strictly
before ``as_of``. These two helpers are the only places where that rule is applied to a
table; feature code calls them instead of filtering by hand.
"""

from __future__ import annotations

import pandas as pd


def rows_before(frame: pd.DataFrame, ts_col: str, as_of: pd.Timestamp) -> pd.DataFrame:
    """Rows of ``frame`` whose ``ts_col`` is strictly before ``as_of`` (missing timestamps are unknown, so dropped)."""
    return frame[frame[ts_col] < as_of]


def known_as_of(values: pd.Series, as_of: pd.Timestamp) -> pd.Series:
    """A timestamp column as it was known at ``as_of``: values at or after ``as_of`` become missing.

    ``leads.converted_at`` of a lead that converts tomorrow is "not converted (yet)" today.
    """
    return values.where(values < as_of)


def utc(ts: str | pd.Timestamp) -> pd.Timestamp:
    """A timestamp in UTC: naive values are taken as UTC, as the data contract says."""
    t = pd.Timestamp(ts)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def open_leads(leads: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Leads open at ``as_of``: created before it and neither converted nor disqualified before it."""
    created = leads["created_at"] < as_of
    converted = known_as_of(leads["converted_at"], as_of).notna()
    disqualified = known_as_of(leads["disqualified_at"], as_of).notna()
    return leads[created & ~converted & ~disqualified]


def decision_times(frame: pd.DataFrame, decided_col: str, cutoff: pd.Timestamp) -> pd.Series:
    """Created to ``decided_col``, of the rows created and decided before ``cutoff`` (indexed by creation time)."""
    decided = frame[decided_col]
    keep = decided.notna() & (decided < cutoff) & (frame["created_at"] < cutoff)
    return pd.Series((decided - frame["created_at"])[keep].to_numpy(),
                     index=pd.DatetimeIndex(frame.loc[keep, "created_at"]), name="decision_time")
