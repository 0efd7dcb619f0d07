"""Point-in-time correctness in two small functions (after Feast).

Every feature "as of" ``as_of`` is computed from rows whose own timestamp is strictly
before ``as_of``. These two helpers are the only places where that rule is applied to a
table; feature code calls them instead of filtering by hand. :class:`TimeOrder` applies the
same rule to many ``as_of`` times at once (snapshots): a table sorted once, a binary search each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


#: Missing timestamps as int64 nanoseconds: after every ``as_of``, so never "before" one.
NEVER = np.iinfo(np.int64).max


def epoch_ns(values: pd.Series | pd.Index | pd.Timestamp) -> np.ndarray:
    """UTC timestamps as int64 nanoseconds since the epoch; missing ones as :data:`NEVER`."""
    index = pd.DatetimeIndex([values] if isinstance(values, pd.Timestamp) else values).as_unit("ns")
    return np.where(index.isna(), NEVER, index.asi8)


@dataclass(frozen=True)
class TimeOrder:
    """A table's rows sorted once by a timestamp column, so that the rows before any ``as_of``
    are a prefix found by one binary search (the index of an as-of join) instead of a scan.

    ``order`` holds the row positions in time order (ties in file order, missing times last),
    ``ns`` their times (:func:`epoch_ns`). ``before(as_of)`` are the positions of the rows that
    :func:`rows_before` keeps, in time order."""

    order: np.ndarray
    ns: np.ndarray

    @classmethod
    def of(cls, times: pd.Series) -> TimeOrder:
        ns = epoch_ns(times)
        order = np.argsort(ns, kind="stable")
        return cls(order=order, ns=ns[order])

    def count_before(self, as_of: pd.Timestamp) -> int:
        """How many rows have a time strictly before ``as_of``."""
        return int(np.searchsorted(self.ns, epoch_ns(as_of)[0], side="left"))

    def before(self, as_of: pd.Timestamp) -> np.ndarray:
        return self.order[: self.count_before(as_of)]
