"""Lead feature rows for a few records, in plain Python: the API's fast path for small batches.

:func:`features.leads.lead_features` is the definition of every lead feature; it works on typed
frames, and for one lead its cost is pandas' fixed cost per column (typing the request's
records into an export, then reading each column back), not the arithmetic. For a request of
a few leads, :func:`typed_rows` types the records value by value with the export loader's own
rules (:mod:`features.values`) and :func:`lead_feature_rows` computes the same
features from them, row by row.

Nothing here decides anything the frame path would decide differently: whatever is not plainly
covered (a value of another type, a broken rule, a duplicate id, a record linked to another
parent, columns of the spec the rows cannot give) returns ``None`` and the caller takes the frame
path, which then reports the problem exactly as it always did. The oracle test
(``tests/serving/test_fastpath.py``) compares both paths' features, scores, reasons and warnings
on the sample's leads, with missing values, unseen categories and every activity.

Point-in-time as in :func:`~features.leads.lead_features`: only activities and accounts from before
``as_of`` are read, and a context newer than ``as_of`` is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.columns import kind_of
from features.contract import TABLES, Kind
from features.io import ACTIVITY_LINKS
from features.leads import HISTORY_COLUMNS, LeadContext, LeadFeatureSpec
from features.values import NotSimple, category_value, number_value, text_value, timestamp_ns

__all__ = ["typed_rows", "lead_feature_rows", "LeadRows"]

_DAY_NS = 86_400_000_000_000.0
_NAN = float("nan")


def _typed_value(kind: Kind, value: object) -> object:
    if kind is Kind.TIMESTAMP:
        return timestamp_ns(value)
    if kind is Kind.NUMBER:
        return number_value(value)
    if kind is Kind.ID:
        return text_value(value)
    if kind is Kind.CATEGORY:
        return category_value(value)
    raise NotSimple  # dates and outcomes are not in the record tables


def _custom_kind(values: list, kind: Kind | None) -> Kind:
    if kind is Kind.CATEGORY or kind is Kind.NUMBER:
        return kind
    if all(v is None or isinstance(v, (int, float)) for v in values):
        return Kind.NUMBER
    raise NotSimple  # text of no known kind: the loader decides whether it is all numbers


def _missing(kind: Kind, value: object) -> bool:
    return value is None or (kind is Kind.NUMBER and value != value)


def typed_rows(table: str, records: Sequence[Mapping[str, object]],
               custom_kinds: Mapping[str, Kind] | None = None) -> list[dict[str, object]] | None:
    """``records`` of ``table`` (leads, accounts or activities) typed as :func:`features.io.coerce_records`
    types them, as dicts of Python values (timestamps as UTC nanoseconds, numbers as float, missing
    numbers NaN, other missing values ``None``); ``None`` when any record needs the frame path
    (a value or rule that path checks or reports)."""
    if table not in ("leads", "accounts", "activities"):
        return None
    spec = TABLES[table]
    names = list(dict.fromkeys(k for r in records for k in r))
    if any(not isinstance(c, str) or c != c.strip() for c in names):
        return None
    known = set(spec.column_names)
    try:
        kinds = {c.name: c.kind for c in spec.columns}
        for name in names:
            if name not in known:
                kinds[name] = _custom_kind([r.get(name) for r in records], (custom_kinds or {}).get(name))
        rows = [{name: _typed_value(kind, r.get(name)) for name, kind in kinds.items()} for r in records]
    except NotSimple:
        return None
    for col in spec.columns:
        values = [row[col.name] for row in rows]
        if col.required and any(_missing(col.kind, v) for v in values):
            return None
        if col.min_value is not None and any(v < col.min_value for v in values if v == v):
            return None
        if col.unique and len(set(values)) < len(values):
            return None
    for row in rows:
        if table == "leads" and any(row[c] is not None and row[c] < row["created_at"]
                                    for c in ("converted_at", "disqualified_at")):
            return None
        if table == "activities" and all(row[c] is None for c in ACTIVITY_LINKS):
            return None
    return rows


@dataclass(frozen=True)
class LeadRows:
    """The feature rows of a few leads: ``values[i][j]`` is lead ``i``'s feature ``names[j]`` (a
    category as text or NaN, a number as float), exactly the frame :func:`lead_features` gives."""

    lead_ids: list[str]
    names: list[str]
    values: list[list[object]]
    #: The columns :func:`lead_features` gives as objects (categories its tables have; the others are floats).
    object_columns: frozenset[str]

    def frame(self) -> pd.DataFrame:
        """The rows as :func:`lead_features`' frame: the same columns, values and dtypes (one
        ``DataFrame`` of numpy columns, as that function builds it)."""
        cols = {n: np.array([row[j] for row in self.values], dtype=object if n in self.object_columns else float)
                for j, n in enumerate(self.names)}
        return pd.DataFrame(cols, index=pd.Index(self.lead_ids, name="lead_id"))


def _days(as_of_ns: int, ns: int | None) -> float:
    # numpy's (datetime64 - datetime64) / timedelta64(1, "D"): both as float, then divided
    return _NAN if ns is None else float(as_of_ns - ns) / _DAY_NS


def _text_or_nan(value: object) -> object:
    return value if isinstance(value, str) else _NAN


def _activity_columns(acts: list[dict], lead_age: float, as_of_ns: int, spec: LeadFeatureSpec) -> dict[str, float]:
    """:func:`features.leads._activity_features` of one lead's activities."""
    where = {t: j for j, t in enumerate(spec.activity_types)}
    windows = list(spec.windows)
    k = len(where)
    per_window = [[0.0] * k for _ in windows]
    totals, since = [0.0] * k, [_NAN] * k
    inbound = [0.0] * len(windows)
    total, last = 0.0, _NAN
    for a in acts:
        age = _days(as_of_ns, a["occurred_at"])
        if not age > 0:
            continue  # at or after as_of (or no time): invisible
        total += 1
        last = age if last != last or age < last else last
        direction = a.get("direction")
        if direction == "inbound":
            for w, days in enumerate(windows):
                if age < days:
                    inbound[w] += 1
        j = where.get(kind_of(a.get("type"), direction), -1)
        if j < 0:
            continue
        totals[j] += 1
        since[j] = age if since[j] != since[j] or age < since[j] else since[j]
        for w, days in enumerate(windows):
            if age < days:
                per_window[w][j] += 1
    cols: dict[str, float] = {}
    weeks = max(lead_age, 1.0)
    for j, t in enumerate(spec.activity_types):
        for w, days in enumerate(windows):
            cols[f"{t}_{days}d"] = per_window[w][j]
        cols[f"{t}_total"] = totals[j]
        cols[f"days_since_{t}"] = since[j]
        cols[f"{t}_per_week"] = totals[j] * 7.0 / weeks
    for w, days in enumerate(windows):
        cols[f"inbound_{days}d"] = inbound[w]
    cols["activities_total"] = total
    cols["days_since_activity"] = last
    return cols


def _lookup(mapping: Mapping, key: object, default: float) -> float:
    return float(mapping.get(key, default)) if isinstance(key, str) else float(default)


def _lead_row(lead: dict, account: dict | None, acts: list[dict], as_of_ns: int, context: LeadContext,
              spec: LeadFeatureSpec) -> dict[str, object]:
    cols: dict[str, object] = {c: _text_or_nan(lead.get(c)) for c in spec.lead_categoricals}
    cols.update({c: float(lead.get(c, _NAN)) for c in spec.lead_numerics})
    visible = account is not None  # only accounts created before as_of are given
    for c in spec.account_categoricals:
        cols[f"account_{c}"] = _text_or_nan(account.get(c)) if visible else _NAN
    for c in spec.account_numerics:
        cols[f"account_{c}"] = float(account.get(c, _NAN)) if visible else _NAN
    cols["lead_age_days"] = _days(as_of_ns, lead["created_at"])
    cols["account_age_days"] = _days(as_of_ns, account["created_at"]) if visible else _NAN
    cols.update(_activity_columns(acts, cols["lead_age_days"], as_of_ns, spec))
    owner = lead.get("owner_id")
    cols["source_conversion_rate"] = _lookup(context.source_rate, lead.get("source"), context.global_rate)
    cols["owner_conversion_rate"] = _lookup(context.owner_rate, owner, context.global_rate)
    cols["owner_open_leads"] = _lookup(context.owner_open_leads, owner, 0.0)
    row = context.account_row.get(lead.get("account_id"), -1) if isinstance(lead.get("account_id"), str) else -1
    for j, c in enumerate(HISTORY_COLUMNS):
        cols[f"account_{c}"] = float(context.account_totals[row, j])
    return cols


def lead_feature_rows(leads: list[dict], accounts: list[dict], activities: list[dict], as_of: pd.Timestamp,
                      context: LeadContext, spec: LeadFeatureSpec) -> LeadRows | None:
    """:func:`~features.leads.lead_features` of typed rows (see :func:`typed_rows`), ``None`` when a
    column of the spec is not one this builder gives (the caller takes the frame path)."""
    if context.as_of > as_of:
        raise ValueError(f"context as of {context.as_of} is newer than as_of {as_of}: it would leak")
    names = list(spec.feature_names)
    as_of_ns = int(as_of.tz_convert("UTC").value) if as_of.tzinfo is not None else int(as_of.value)
    first: dict[str, dict] = {}
    for a in accounts:
        if _days(as_of_ns, a["created_at"]) > 0:
            first.setdefault(a["account_id"], a)  # the first row of an id created before as_of stands for it
    by_lead: dict[str, list[dict]] = {}
    for act in activities:
        if isinstance(act["lead_id"], str):
            by_lead.setdefault(act["lead_id"], []).append(act)
    values = []
    for lead in leads:
        acc = first.get(lead["account_id"]) if isinstance(lead["account_id"], str) else None
        cols = _lead_row(lead, acc, by_lead.get(lead["lead_id"], []), as_of_ns, context, spec)
        if len(cols.keys() & set(names)) != len(names):
            return None
        values.append([cols[n] for n in names])
    # a category column of a table that has it is objects; one no record has (a custom field left
    # out) is all NaN floats, as features.columns.column gives it
    lead_cols = set(TABLES["leads"].column_names).union(*leads)
    account_cols = set(TABLES["accounts"].column_names).union(*accounts)
    objects = {c for c in spec.lead_categoricals if c in lead_cols}
    objects |= {f"account_{c}" for c in spec.account_categoricals if c in account_cols}
    return LeadRows([lead["lead_id"] for lead in leads], names, values, frozenset(objects))

