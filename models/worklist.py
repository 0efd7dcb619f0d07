"""One list in one unit: every open lead, open deal and account ranked by the value still to be won.

Pure computation over an export and the loaded scorers (the refresh job stores the result):

* a **lead**: P(converts) x the value of a converted lead (the lead scorer's average first-deal
  value by industry);
* a **deal**: P(won) x amount (the stage_conversion scorer);
* an **account** (a customer): the value expected in the next 12 months, minus the expected value
  of its open deals and open leads (those are items of their own), never below 0. In its first
  year after the first win that is the rest of the high_value scorer's expected first-year value
  beyond what it booked; later, the export's repeat rate (second-year over first-year value of
  past customers) times that value. A prospect's value comes through its leads and deals only, so
  it is not an account item: nothing is counted twice.

Reasons lead with what a rep can act on (activity, then stage, then timing, then fit) and
never with value already booked. ``trend`` turns a score history into improving, steady,
declining or not enough history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Export
from features.engine import map_leads  # per entity partition in a Dask session (features.engine)
from features.pit import open_leads
from models.deals import score_open_deals

__all__ = ["TRENDS", "WORK_COLUMNS", "actionable_reasons", "account_items", "deal_items", "entity_names",
           "lead_items", "next_year_value", "reason_kind", "repeat_rate", "trend"]

WORK_COLUMNS = ["kind", "id", "name", "owner_id", "probability", "score", "grade", "expected_value", "reasons"]
TRENDS = ("improving", "steady", "declining", "not enough history")
YEAR = pd.Timedelta(days=365)
#: Features that state value already booked: never a reason on the list.
BOOKED = frozenset({"first_deal_amount", "is_customer", "account_won_amount", "account_won_deals"})
_ACTIVITY_WORDS = ("activit", "email", "call", "meeting", "web_visit", "event", "inbound", "support", "survey",
                   "demo", "webinar", "days_since_")
_STAGE_WORDS = ("stage", "advances", "regressions", "days_in_")
_TIMING_WORDS = ("close_date", "overdue", "age_days", "days_since_first_win", "pushes")
_ORDER = {"activity": 0, "stage": 1, "timing": 2, "fit": 3}
#: Columns holding an entity's display name, first found wins (custom fields of the export).
NAME_COLUMNS = {"lead": ("name", "lead_name", "full_name", "company"),
                "deal": ("name", "opportunity_name", "deal_name"),
                "account": ("name", "account_name", "company_name", "company")}


def reason_kind(feature: str) -> str:
    """What a reason is about: ``activity``, ``stage``, ``timing``, ``booked`` or ``fit``."""
    if feature in BOOKED:
        return "booked"
    if any(w in feature for w in _TIMING_WORDS):
        return "timing"
    if any(w in feature for w in _STAGE_WORDS):
        return "stage"
    if any(w in feature for w in _ACTIVITY_WORDS):
        return "activity"
    return "fit"


def actionable_reasons(reasons: Sequence[dict[str, Any]], n: int = 3) -> list[str]:
    """The texts of up to ``n`` reasons, booked value left out, ordered activity, stage, timing, fit
    (by size of contribution within a kind)."""
    kept = [r for r in reasons if reason_kind(r["feature"]) != "booked"]
    kept.sort(key=lambda r: (_ORDER[reason_kind(r["feature"])], -abs(float(r["contribution"]))))
    return [r["text"] for r in kept[:n]]


def trend(probabilities: Sequence[float], points: int = 3, threshold_points: float = 5.0) -> str:
    """The trend of a score over its snapshots (oldest first): the change of probability from the
    first to the last of the latest ``points`` snapshots, in points (0.01); beyond
    ``+threshold_points`` improving, below ``-threshold_points`` declining, else steady. With
    fewer than 2 snapshots: not enough history."""
    recent = [float(p) for p in probabilities][-points:]
    if len(recent) < 2:
        return "not enough history"
    change = (recent[-1] - recent[0]) * 100
    if change > threshold_points:
        return "improving"
    if change < -threshold_points:
        return "declining"
    return "steady"


def entity_names(frame: pd.DataFrame, kind: str, id_column: str) -> pd.Series:
    """The display name of each entity where the export has a name column, by id."""
    for column in NAME_COLUMNS[kind]:
        if column in frame:
            names = frame.drop_duplicates(id_column).set_index(id_column)[column]
            return names.where(names.notna()).astype(object)
    return pd.Series(dtype=object)


def _frame(kind: str, ids: pd.Series, names: pd.Series, owners: pd.Series, probability: np.ndarray,
           grade: Sequence[Any], value: np.ndarray, reasons: list[list[str]]) -> pd.DataFrame:
    ids = ids.astype(str).reset_index(drop=True)
    p = np.asarray(probability, dtype=float)
    return pd.DataFrame({
        "kind": kind, "id": ids, "name": ids.map(names).astype(object).to_numpy() if len(names) else None,
        "owner_id": ids.map(owners).astype(object).to_numpy(), "probability": p,
        "score": np.rint(p * 100).astype(int), "grade": list(grade),
        "expected_value": np.maximum(np.asarray(value, dtype=float), 0.0), "reasons": reasons,
    })


def lead_items(export: Export, scorer: Any, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every lead open at ``as_of`` (not before the model's training cutoff): P(converts) x the value
    of a converted lead."""
    t = max(as_of, scorer.trained_until)
    leads = open_leads(export.leads, t)
    s = map_leads(export, leads, lambda part, accounts, acts: scorer.score(part, accounts, acts, t, n_reasons=6))
    owners = leads.set_index("lead_id")["owner_id"]
    return _frame("lead", s["lead_id"], entity_names(export.leads, "lead", "lead_id"), owners, s["probability"],
                  s["grade"], s["expected_value"].to_numpy(dtype=float), [actionable_reasons(r) for r in s["reasons"]])


def deal_items(export: Export, scorer: Any, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every deal open at ``as_of``: P(won) x amount (the deal's, else predicted from similar deals)."""
    s, opps = score_open_deals(export, scorer, as_of, n_reasons=6)
    owners = opps.drop_duplicates("opportunity_id").set_index("opportunity_id")["owner_id"]
    headline = [f"Stage {st}, amount {amt:,.0f}" + (" (predicted)" if pred else "") + f": P(won) {p:.0%}"
                for st, amt, pred, p in zip(s["stage"], s["amount"], s["amount_predicted"], s["p_win"], strict=True)]
    reasons = [[h, *actionable_reasons(r)] for h, r in zip(headline, s["reasons"], strict=True)]
    return _frame("deal", s["opportunity_id"], entity_names(export.opportunities, "deal", "opportunity_id"), owners,
                  s["p_win"], [None] * len(s), s["expected_value"].astype(float).fillna(0.0).to_numpy(), reasons)


def _customer_years(export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
    """Per customer (a deal won before ``as_of``): its first win, the value won in its first year
    and in its second year, and the value won so far in its first year (closed before ``as_of``)."""
    o = export.opportunities
    won = o[(o["outcome"] == "won") & (o["closed_at"] < as_of) & o["account_id"].notna()]
    first = won.groupby("account_id")["closed_at"].min()
    if first.empty:
        return pd.DataFrame({"first_won_at": pd.Series(dtype=won["closed_at"].dtype), "year1": pd.Series(dtype=float),
                             "year2": pd.Series(dtype=float)})
    age = won["closed_at"] - won["account_id"].map(first)
    amount = won["amount"].fillna(0.0)
    frame = pd.DataFrame({"first_won_at": first})
    frame["year1"] = amount.where(age < YEAR, 0.0).groupby(won["account_id"]).sum()
    frame["year2"] = amount.where((age >= YEAR) & (age < 2 * YEAR), 0.0).groupby(won["account_id"]).sum()
    return frame


def repeat_rate(export: Export, as_of: pd.Timestamp) -> float:
    """Value a customer wins in its second year per unit of its first year's, over the customers
    whose second year ended before ``as_of`` (0 when there are none: no evidence of repeat business)."""
    years = _customer_years(export, as_of)
    done = years[years["first_won_at"] + 2 * YEAR <= as_of]
    total = float(done["year1"].sum())
    return float(done["year2"].sum()) / total if total > 0 else 0.0


def next_year_value(first_year_value: np.ndarray, first_won_at: pd.Series, booked_first_year: np.ndarray,
                    as_of: pd.Timestamp, rate: float) -> np.ndarray:
    """Value a customer is expected to win in the 12 months after ``as_of``: in its first year the rest
    of its expected first-year value (beyond what it booked), after it ``rate`` x that value."""
    in_first_year = (as_of - pd.to_datetime(first_won_at, utc=True)).to_numpy() < YEAR.to_timedelta64()
    rest = np.maximum(first_year_value - booked_first_year, 0.0)
    return np.where(in_first_year, rest, rate * first_year_value)


def _account_owners(export: Export, as_of: pd.Timestamp) -> pd.Series:
    """An account's owner: the owner of its latest deal, else of its latest lead, created before ``as_of``."""
    parts = []
    for frame in (export.opportunities, export.leads):
        f = frame[(frame["created_at"] < as_of) & frame["account_id"].notna() & frame["owner_id"].notna()]
        parts.append(f.sort_values("created_at", kind="stable").drop_duplicates("account_id", keep="last")
                     .set_index("account_id")["owner_id"])
    deals, leads = parts
    return pd.concat([deals, leads[~leads.index.isin(deals.index)]])


def account_items(export: Export, scorer: Any, as_of: pd.Timestamp, open_items: pd.DataFrame) -> pd.DataFrame:
    """Every customer with an owner: the value expected in the next 12 months (:func:`next_year_value`
    of the high_value model's expected first-year value) beyond ``open_items`` (its open leads and
    deals, whose value is theirs). A prospect's value comes only through its leads and deals: those
    items carry it, so it is not an account item (nothing counted twice)."""
    years = _customer_years(export, as_of)
    owners = _account_owners(export, as_of)
    ids = sorted(set(owners.index.astype(str)) & set(years.index.astype(str)))
    if not ids:
        return pd.DataFrame(columns=WORK_COLUMNS)
    s = scorer.score(export, ids, as_of, n_reasons=6)
    y = years.reindex(s["account_id"])
    expected = next_year_value(s["expected_value"].to_numpy(dtype=float), y["first_won_at"],
                               y["year1"].to_numpy(dtype=float), as_of, repeat_rate(export, as_of))
    item_account = pd.concat([
        open_items.loc[open_items["kind"] == "lead", "id"].map(export.leads.set_index("lead_id")["account_id"]),
        open_items.loc[open_items["kind"] == "deal", "id"].map(
            export.opportunities.set_index("opportunity_id")["account_id"])])
    in_items = open_items.loc[item_account.index, "expected_value"].groupby(item_account.to_numpy()).sum()
    rest = np.maximum(expected - s["account_id"].map(in_items).fillna(0.0).to_numpy(), 0.0)
    headline = [f"About {r:,.0f} more expected in the next 12 months beyond booked value and open deals and leads"
                for r in rest]
    reasons = [[h, *actionable_reasons(r)] for h, r in zip(headline, s["reasons"], strict=True)]
    return _frame("account", s["account_id"], entity_names(export.accounts, "account", "account_id"), owners,
                  s["probability"], [None] * len(s), rest, reasons)
