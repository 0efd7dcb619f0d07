"""Records as a CRM sends them -> the same typed export the export loader produces.

Every scoring request (leads, deals, accounts) goes through one path: the route walks its
request's nesting into :class:`RequestRecords` (each record with the request path it came
from, each child linked to its parent's id), and :meth:`RequestRecords.export` types every
table with :func:`features.io.coerce_records` (exactly what the export loader's
:func:`~features.io.coerce_table` gives: trimming, case-folding, UTC timestamps, ids as
strings, the same bad rows, at a fraction of its cost for a few records), custom fields forced
to the kind the model was trained with. A bad value is a 422 naming its request path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import pandas as pd
from pydantic import BaseModel

from features.contract import TABLES, Export, Kind
from features.errors import BadRow
from features.io import coerce_records, coerce_table
from serving.errors import RequestProblem, bad_rows_as_problem

#: The tables of an export, and the prefix of each table's custom fields in a feature spec.
EXPORT_TABLES = ("accounts", "leads", "opportunities", "stage_history", "activities")
_SPEC_PREFIX = {"leads": "lead", "accounts": "account", "opportunities": "opportunity"}


def utc_timestamp(value: datetime | None) -> pd.Timestamp:
    """A request timestamp in UTC (naive means UTC, as in the data contract)."""
    ts = pd.Timestamp(value if value is not None else datetime.now(UTC))
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def check_batch(count: int, limit: int, field: str) -> None:
    """413 for a batch over ``FUNNELCAST_MAX_BATCH`` records."""
    if count > limit:
        raise RequestProblem(f"batch of {count:,} {field} exceeds the limit of {limit:,}; split it into smaller requests",
                             [(field, f"at most {limit} items")], status_code=413)


def unique_ids(ids: list[str], path: str, what: str) -> None:
    """422 naming every record whose id another record of the batch has; ``path`` has a ``{}`` for the position."""
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        errors = [(path.format(k), f"duplicate {what} {ids[k]!r} in this batch") for k in range(len(ids)) if ids[k] in dup]
        raise RequestProblem(f"duplicate {what}s in the batch: {', '.join(map(repr, dup[:10]))}", errors)


def _as_sent(row: dict) -> dict:
    """A record as its JSON said it: timestamps as ISO text (two copies of an account must match)."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def custom_kinds(spec: Any) -> dict[str, dict[str, Kind]]:
    """Per table, the kind each custom field had in training (contract columns have theirs already)."""
    out = {}
    for table, prefix in _SPEC_PREFIX.items():
        known = set(TABLES[table].column_names)
        kinds = {c: Kind.CATEGORY for c in getattr(spec, f"{prefix}_categoricals", ()) if c not in known}
        kinds.update({c: Kind.NUMBER for c in getattr(spec, f"{prefix}_numerics", ()) if c not in known})
        out[table] = kinds
    return out


@lru_cache(maxsize=16)
def _empty_table(table: str, open_stages: tuple[str, ...]) -> pd.DataFrame:
    # typed once; copy-on-write keeps the shared empty frame from being changed by a caller
    return coerce_table(table, pd.DataFrame(columns=TABLES[table].column_names), open_stages=open_stages)[0]


class RequestRecords:
    """A request's records by contract table, each with the request path it came from."""

    def __init__(self, *tables: str):
        self.rows: dict[str, list[dict]] = {t: [] for t in tables}
        self.paths: dict[str, list[str]] = {t: [] for t in tables}
        self._shared: dict[tuple[str, str], int] = {}

    def add(self, table: str, record: BaseModel | dict, path: str, **links: str) -> None:
        """Add ``record`` sent at ``path``. Each ``links`` column is the parent's id: filled in
        when the record leaves it out, a 422 when it names another parent."""
        row = record if isinstance(record, dict) else record.model_dump(mode="python")
        for column, parent in links.items():
            sent = row.get(column)
            if sent is None or not str(sent).strip():
                row[column] = parent
            elif str(sent).strip() != parent:
                raise RequestProblem(f"{path} belongs to another record: {column} {sent!r} is not {parent!r}",
                                     [(f"{path}.{column}", f"{sent!r} is not {parent!r}")])
        self.rows[table].append(row)
        self.paths[table].append(path)

    def add_shared(self, table: str, record: BaseModel, path: str) -> str:
        """A record several items may send (the account of several leads): kept once, every copy
        identical (else a 422); returns its id."""
        row = record.model_dump(mode="python")
        key_column = TABLES[table].key
        key = str(row[key_column]).strip()
        first = self._shared.get((table, key))
        if first is None:
            self._shared[(table, key)] = len(self.rows[table])
            self.add(table, row, path)
        elif _as_sent(self.rows[table][first]) != _as_sent(row):
            raise RequestProblem(f"conflicting {table} records for {key_column} {key!r}",
                                 [(path, f"differs from {self.paths[table][first]} for the same {key_column} {key!r}")])
        return key

    def export(self, open_stages: Sequence[str], spec: Any) -> Export:
        """The typed export of these records (tables the request has no part for are empty);
        one 422 naming the request path and column of every bad value."""
        stages = tuple(open_stages)
        kinds = custom_kinds(spec)
        frames: dict[str, pd.DataFrame] = {}
        bad: list[tuple[str, BadRow]] = []
        for table, rows in self.rows.items():
            frames[table], problems = coerce_records(table, rows, open_stages=stages, custom_kinds=kinds.get(table, {}))
            bad.extend((self.paths[table][b.row], b) for b in problems)
        if bad:
            raise bad_rows_as_problem(bad)
        rest = {t: _empty_table(t, stages) for t in EXPORT_TABLES if t not in frames}
        return Export(**frames, **rest, open_stages=stages)


def _json_value(v: object) -> object:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if hasattr(v, "item"):
        return v.item()
    return v


def _json_record(row: dict) -> dict:
    return {k: _json_value(v) for k, v in row.items() if not (v is None or v is pd.NaT or (isinstance(v, float) and v != v))}


def export_items(
    leads: pd.DataFrame, accounts: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp
) -> list[dict]:
    """The JSON a CRM would send to score ``leads``: each lead with its account and its
    activities before ``as_of`` (used by tests, benchmarks and client examples)."""
    acc = accounts.drop_duplicates("account_id").set_index("account_id", drop=False)
    acts = activities[activities["lead_id"].isin(leads["lead_id"]) & (activities["occurred_at"] < as_of)]
    by_lead = {k: g for k, g in acts.groupby("lead_id")}
    items = []
    for lead in leads.to_dict("records"):
        item: dict = {"lead": _json_record(lead), "activities": []}
        a = lead.get("account_id")
        if isinstance(a, str) and a in acc.index:
            item["account"] = _json_record(acc.loc[a].to_dict())
        if lead["lead_id"] in by_lead:
            item["activities"] = [_json_record(r) for r in by_lead[lead["lead_id"]].to_dict("records")]
        items.append(item)
    return items
