"""Records as a CRM sends them -> the same typed frames the export loader produces.

Every table goes through :func:`features.io.coerce_records`, which gives exactly what the
export loader's :func:`~features.io.coerce_table` gives (trimming, case-folding, UTC
timestamps, ids as strings, the same bad rows) at a fraction of its cost for a few records;
custom fields are forced to the kind the model was trained with.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from features.contract import TABLES, Kind
from features.errors import BadRow
from features.io import coerce_records
from features.leads import LeadFeatureSpec
from serving.errors import RequestProblem, bad_rows_as_problem
from serving.schemas import LeadScoreItem


@dataclass
class LeadFrames:
    leads: pd.DataFrame
    accounts: pd.DataFrame
    activities: pd.DataFrame


def utc_timestamp(value: datetime | None) -> pd.Timestamp:
    """A request timestamp in UTC (naive means UTC, as in the data contract)."""
    ts = pd.Timestamp(value if value is not None else datetime.now(UTC))
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _row(model) -> dict:
    # Python values (datetimes stay datetimes: coerce_records reads them as the ISO text a CSV holds)
    return model.model_dump(mode="python")


def _as_sent(row: dict) -> dict:
    """A record as its JSON said it: timestamps as ISO text (two copies of an account must match)."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _custom_kinds(table: str, categoricals: tuple[str, ...], numerics: tuple[str, ...]) -> dict[str, Kind]:
    """The kind each custom field had in training (contract columns have theirs already)."""
    known = set(TABLES[table].column_names)
    kinds = {c: Kind.CATEGORY for c in categoricals if c not in known}
    kinds.update({c: Kind.NUMBER for c in numerics if c not in known})
    return kinds


def lead_frames(
    items: list[LeadScoreItem],
    spec: LeadFeatureSpec,
    open_stages: tuple[str, ...],
    as_of: pd.Timestamp | None = None,
) -> LeadFrames:
    """Type the leads, accounts and activities of a request; 422 naming the path of any bad field.

    With ``as_of``, a lead created at or after it (it did not exist yet) is a 422 at
    ``leads[i].lead.created_at``."""
    ids = [it.lead.lead_id.strip() for it in items]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        errors = [(f"leads[{k}].lead.lead_id", f"duplicate lead id {ids[k]!r} in this batch") for k in range(len(ids)) if ids[k] in dup]
        raise RequestProblem(f"duplicate lead ids in the batch: {', '.join(map(repr, dup[:10]))}", errors)

    lead_rows = [_row(it.lead) for it in items]
    acc_rows, acc_paths, act_rows, act_paths = [], [], [], []
    seen_accounts: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.account is not None:
            acc = _row(it.account)
            if lead_rows[i].get("account_id") is None:
                lead_rows[i]["account_id"] = acc["account_id"]
            elif str(lead_rows[i]["account_id"]).strip() != acc["account_id"].strip():
                raise RequestProblem(
                    "account does not match the lead",
                    [(f"leads[{i}].account.account_id", f"{acc['account_id']!r} is not the lead's account_id "
                      f"{lead_rows[i]['account_id']!r}")],
                )
            key = acc["account_id"].strip()
            if key in seen_accounts:  # several leads of one account: send it each time, identical
                first = seen_accounts[key]
                if _as_sent(acc_rows[first]) != _as_sent(acc):
                    raise RequestProblem(
                        "conflicting account records",
                        [(f"leads[{i}].account", f"differs from {acc_paths[first]} for the same account_id {key!r}")],
                    )
            else:
                seen_accounts[key] = len(acc_rows)
                acc_rows.append(acc)
                acc_paths.append(f"leads[{i}].account")
        for j, act in enumerate(it.activities):
            row = _row(act)
            if row.get("lead_id") is None:
                row["lead_id"] = ids[i]
            elif row["lead_id"].strip() != ids[i]:
                raise RequestProblem(
                    "activity attached to another lead",
                    [(f"leads[{i}].activities[{j}].lead_id", f"{row['lead_id']!r} is not this lead's id {ids[i]!r}")],
                )
            act_rows.append(row)
            act_paths.append(f"leads[{i}].activities[{j}]")

    lead_kinds = _custom_kinds("leads", spec.lead_categoricals, spec.lead_numerics)
    acc_kinds = _custom_kinds("accounts", spec.account_categoricals, spec.account_numerics)
    bad: list[tuple[str, BadRow]] = []

    def typed(table: str, rows: list[dict], paths: list[str], kinds: dict[str, Kind]) -> pd.DataFrame:
        out, problems = coerce_records(table, rows, open_stages=open_stages, custom_kinds=kinds)
        bad.extend((paths[b.row], b) for b in problems)
        return out

    leads = typed("leads", lead_rows, [f"leads[{i}].lead" for i in range(len(items))], lead_kinds)
    accounts = typed("accounts", acc_rows, acc_paths, acc_kinds)
    activities = typed("activities", act_rows, act_paths, {})
    if bad:
        raise bad_rows_as_problem(bad)
    if as_of is not None:
        late = (leads["created_at"] >= as_of).to_numpy()
        if late.any():
            errors = [
                (f"leads[{i}].lead.created_at", f"{leads['created_at'].iloc[i].isoformat()} is not before as_of {as_of.isoformat()}")
                for i in late.nonzero()[0]
            ]
            raise RequestProblem(f"{len(errors)} lead(s) created at or after as_of: " + "; ".join(f"{p}: {r}" for p, r in errors[:5]), errors)
    return LeadFrames(leads=leads, accounts=accounts, activities=activities)


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
