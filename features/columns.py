"""Column helpers shared by the lead and deal feature frames.

Each works on whole columns, with numpy or with one dict lookup per row (ids, kinds), and
avoids pandas operations whose fixed cost (tens of microseconds a call) exceeds the work:
one API request (a frame of one row) costs well under a millisecond and a snapshot of
thousands of rows costs milliseconds, so there is no second, row-by-row copy of any feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)


def column(frame: pd.DataFrame, name: str, numeric: bool) -> np.ndarray:
    """``frame[name]`` as float (numeric) or object strings with NaN for missing; all NaN when absent."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    values = frame[name]
    if numeric:
        if isinstance(values.dtype, np.dtype) and values.dtype.kind in "fiub":  # numpy numbers: to_numeric is a no-op
            return values.to_numpy(dtype=float)
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if not isinstance(values.dtype, pd.StringDtype):  # pandas' is_string_dtype costs ~8 us a call
        values = values.astype("str").where(values.notna())
    return values.to_numpy(dtype=object, na_value=np.nan)


def days_before(as_of: pd.Timestamp, values: pd.Series) -> np.ndarray:
    """``(as_of - values) / DAY`` as a float array (NaN where a timestamp is missing).

    UTC columns are subtracted in numpy, with pandas' units and float division: one pandas
    operation costs tens of microseconds however short the column."""
    if not isinstance(values.dtype, pd.DatetimeTZDtype) or as_of.tzinfo is None:
        return ((as_of - values) / DAY).to_numpy(dtype=float)
    stamps = values.to_numpy(dtype=f"datetime64[{values.dtype.unit}]")
    return (np.datetime64(as_of.tz_convert(None).to_datetime64()) - stamps) / np.timedelta64(1, "D")


def take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, NaN where ``rows`` is -1."""
    return np.append(values, np.nan)[rows]


def first_rows_before(
    table: pd.DataFrame, id_column: str, ts_column: str, keys: pd.Series, as_of: pd.Timestamp
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``keys``, the row of ``table`` that stands for it at ``as_of``: the first row
    with that id whose ``ts_column`` is before ``as_of`` (-1: none, or a missing key); and each
    row's age in days.

    The rows of ``rows_before(...).drop_duplicates(id_column).set_index(id_column).reindex(keys)``
    for string ids, by a dict (a pandas index costs tens of microseconds however short the table)."""
    age = days_before(as_of, table[ts_column])
    visible = np.flatnonzero(age > 0)
    ids = table[id_column].array.take(visible).tolist()
    first = dict(zip(reversed(ids), reversed(visible.tolist()), strict=True))  # the first row wins
    return lookup(keys.tolist(), first, -1).astype(np.int64), age


def joined_columns(
    table: pd.DataFrame, rows: np.ndarray | None, prefix: str, categoricals: Sequence[str], numerics: Sequence[str]
) -> dict[str, np.ndarray]:
    """Columns ``prefix + c`` of ``table`` at ``rows`` (see :func:`first_rows_before`; ``None``: every row)."""
    pick = (lambda values: values) if rows is None else (lambda values: take(values, rows))
    cols = {f"{prefix}{c}": pick(column(table, c, numeric=False)) for c in categoricals}
    cols.update({f"{prefix}{c}": pick(column(table, c, numeric=True)) for c in numerics})
    return cols


def activity_kind(activities: pd.DataFrame) -> pd.Series:
    """An activity's kind: its type, joined with its direction when it has one.

    An inbound email (the prospect wrote) and an outbound one (the rep wrote) say very
    different things about a lead, so they are counted apart: ``email_inbound``, ``email_outbound``.
    A type or direction that is not text counts as missing.
    """
    kinds = map(kind_of, activities["type"].tolist(), activities["direction"].tolist())
    return pd.Series(list(kinds), index=activities.index, dtype="str")


def kind_of(type_: object, direction: object) -> str | None:
    """One activity's kind (:func:`activity_kind`), from its type and direction values."""
    if not isinstance(type_, str):
        return None
    return f"{type_}_{direction}" if isinstance(direction, str) else type_


def latest(idx: np.ndarray, ages: np.ndarray, size: int) -> np.ndarray:
    """The smallest of ``ages`` per ``idx`` (the most recent), NaN where there is none."""
    out = np.full(size, np.inf)
    np.minimum.at(out, idx, ages)
    out[np.isinf(out)] = np.nan
    return out


def lookup(keys: Sequence[object], mapping: dict, default: float) -> np.ndarray:
    """``mapping[key]`` for each of ``keys`` as floats, ``default`` for a key that is not text or not mapped."""
    return np.fromiter((mapping.get(k, default) if isinstance(k, str) else default for k in keys), float, len(keys))


def positions(ids: pd.Index) -> dict[str, int]:
    """Each id's position in ``ids`` (ids that are not text are left out); an id given twice is an error."""
    where: dict[str, int] = {}
    for i, key in enumerate(ids.tolist()):
        if isinstance(key, str) and where.setdefault(key, i) != i:
            raise ValueError(f"{ids.name or 'id'} {key!r} appears more than once")
    return where


def activity_rows(
    activities: pd.DataFrame, id_column: str, ids: pd.Index, as_of: pd.Timestamp
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The activities of ``ids`` before ``as_of``: their rows, the position of their entity in ``ids`` and their age in days.

    Positions come from a dict: cheaper than a pandas index lookup for one request, and no
    slower for a whole export (the index converts the string column to objects first)."""
    age = days_before(as_of, activities["occurred_at"])
    pos = lookup(activities[id_column].tolist(), positions(ids), -1).astype(np.int64)
    rows = np.flatnonzero((pos >= 0) & (age > 0))
    return rows, pos[rows], age[rows]


def kind_counts(
    activities: pd.DataFrame, rows: np.ndarray, pos: np.ndarray, age: np.ndarray, n: int,
    kinds: Sequence[str], windows: Sequence[int],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per entity and activity kind (see :func:`activity_kind`): counts over each window
    (``<kind>_<w>d``), all-time counts (``<kind>_total``) and days since the last one
    (``days_since_<kind>``), from :func:`activity_rows`; and which of the activities are inbound.

    One pass in Python over the activities' types and directions: a pandas or numpy string
    operation costs more than the whole pass for the activities of one API request."""
    where = {t: j for j, t in enumerate(kinds)}
    directions = activities["direction"].array.take(rows).tolist()
    types = map(kind_of, activities["type"].array.take(rows).tolist(), directions)
    kind = np.fromiter((where.get(t, -1) for t in types), np.int64, len(rows))
    inbound = np.fromiter((d == "inbound" for d in directions), bool, len(rows))
    k = len(kinds)
    typed = kind >= 0
    cell, cell_age = pos[typed] * k + kind[typed], age[typed]

    def counts(mask: np.ndarray) -> np.ndarray:
        return np.bincount(cell[mask], minlength=n * k).reshape(n, k).astype(float)

    per_window = {w: counts(cell_age < w) for w in windows}
    totals = counts(np.ones(len(cell), dtype=bool))
    since = latest(cell, cell_age, n * k).reshape(n, k)
    cols: dict[str, np.ndarray] = {}
    for j, t in enumerate(kinds):
        for w in windows:
            cols[f"{t}_{w}d"] = per_window[w][:, j]
        cols[f"{t}_total"] = totals[:, j]
        cols[f"days_since_{t}"] = since[:, j]
    return cols, inbound
