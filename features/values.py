"""The export loader's typing of single values, for records that arrive one by one (an API request).

:func:`features.io.load_records` types a request's records value by value with these before it
falls back to the column-wise :func:`features.io.coerce_table`; :mod:`features.fastrow` (the
API's fast path for a few leads) types its rows with the same functions, so both read a value the
same way. Each returns the typed value, or raises :class:`NotSimple` for anything it does not
plainly cover (a value of another type, an out-of-range timestamp): the caller then leaves the
record to ``coerce_table``, which reports the problem with its table, row and column.
"""

from __future__ import annotations

import datetime

import numpy as np
import pandas as pd

__all__ = ["NotSimple", "text_value", "category_value", "number_value", "timestamp_ns", "TS_MIN", "TS_MAX"]

#: The timestamps pandas can hold (nanoseconds since the epoch, 1677-2262), UTC.
TS_MIN, TS_MAX = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
_INT_EXACT = 2**53
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_EPOCH_NAIVE = datetime.datetime(1970, 1, 1)


class NotSimple(Exception):
    """A value (or a record) the value-by-value typing leaves to :func:`features.io.coerce_table`."""


def text_value(value: object) -> str | None:
    """Text, trimmed (empty is missing), as the loader types id and text columns."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise NotSimple
    return value.strip() or None


def category_value(value: object) -> str | None:
    """A category: trimmed and case-folded text (empty is missing)."""
    text = text_value(value)
    return (text.casefold() or None) if text is not None else None


def number_value(value: object) -> float:
    """A finite number (``None`` is NaN); a bool, text, an infinity or an integer past 2**53 is not simple."""
    if value is None:
        return np.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NotSimple
    if isinstance(value, int) and abs(value) >= _INT_EXACT:
        raise NotSimple
    v = float(value)
    if np.isinf(v):
        raise NotSimple  # not a finite number: reported by coerce_table
    return v


def timestamp_ns(value: object) -> int | None:
    """Nanoseconds since the epoch, UTC (naive means UTC), by exact integer arithmetic."""
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        raise NotSimple
    offset = value.utcoffset()
    if offset is not None and (offset.seconds % 60 or offset.microseconds):
        raise NotSimple  # an offset in seconds: its ISO text is not one pandas parses
    since = value - (_EPOCH if offset is not None else _EPOCH_NAIVE)
    ns = (since.days * 86_400 + since.seconds) * 1_000_000_000 + since.microseconds * 1_000
    if not TS_MIN.value <= ns <= TS_MAX.value:
        raise NotSimple  # outside 1677-2262: reported by coerce_table
    return ns
