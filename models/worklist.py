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

Items are ranked by that value per unit of effort, the rep touches it took to win such an item in
the same export (:mod:`models.effort`; :func:`ranked` applies the efforts a refresh measured, or
the user's).

Reasons lead with what a rep can act on and never with value already booked: the last contact
and the last sign of life of the lead, deal or account (:func:`contact_sentences`); a deal's stage
and time in it; an account's buying cycle against its last purchase, its open deals and leads,
and the confirmed traits of high-value customers it shares; then the model's own reasons ordered
activity, stage, timing, fit, each shown once and only when worth a point. ``trend`` turns a
score history into improving, steady, declining or not enough history.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Export
from features.engine import map_leads  # per entity partition in a Dask session (features.engine)
from features.pit import open_leads, rows_before
from models.deals import score_open_deals
from models.effort import Efforts, account_activities, derive_efforts
from models.explain import activity_label
from models.traits import shared_traits, trait_label

__all__ = ["TRENDS", "WORK_COLUMNS", "actionable_reasons", "account_items", "buying_cycle_sentences",
           "contact_sentences", "deal_items", "effort_payload", "efforts_of", "entity_names", "lead_items",
           "next_year_value", "ranked", "reason_kind", "repeat_rate", "trend"]

WORK_COLUMNS = ["kind", "id", "name", "owner_id", "probability", "score", "grade", "expected_value", "reasons"]
TRENDS = ("improving", "steady", "declining", "not enough history")
YEAR = pd.Timedelta(days=365)
#: Features that state value already booked: never a reason on the list.
BOOKED = frozenset({"first_deal_amount", "is_customer", "account_won_amount", "account_won_deals"})
#: Features about who owns the item (``owner_id``, ``owner_win_rate``...): on a rep's own list they say
#: nothing the rep can act on ("Owner is rep_012"), so the list leaves them out; the API's reasons keep them.
OWNER_PREFIX = "owner"
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
    """What a reason is about: ``activity``, ``stage``, ``timing``, ``booked``, ``owner`` or ``fit``."""
    if feature in BOOKED:
        return "booked"
    if feature.startswith(OWNER_PREFIX):
        return "owner"
    if any(w in feature for w in _TIMING_WORDS):
        return "timing"
    if any(w in feature for w in _STAGE_WORDS):
        return "stage"
    if any(w in feature for w in _ACTIVITY_WORDS):
        return "activity"
    return "fit"


def _family(feature: str) -> str:
    """What a reason is about, whatever its window: ``email_outbound_30d``, ``email_outbound_total``
    and ``days_since_email_outbound`` are all about emails sent."""
    return re.sub(r"(_per_30d|_per_week|_\d+d|_total)$", "", feature.removeprefix("days_since_"))


def actionable_reasons(reasons: Sequence[dict[str, Any]], n: int = 3, skip: Sequence[str] = ()) -> list[str]:
    """The texts of up to ``n`` reasons, ordered activity, stage, timing, fit (by size of contribution
    within a kind): booked value and who owns the item left out, reasons under one point left out (they read "less than a
    point" and move nothing), one reason per subject (the 30-day and the 90-day count of the same
    touches are one reason), and none whose subject starts with one of ``skip`` (said already)."""
    kept = [r for r in reasons
            if reason_kind(r["feature"]) not in ("booked", "owner") and abs(float(r["contribution"])) >= 0.01]
    kept.sort(key=lambda r: (_ORDER[reason_kind(r["feature"])], -abs(float(r["contribution"]))))
    out, seen = [], set()
    for r in kept:
        family = _family(r["feature"])
        if family not in seen and not family.startswith(tuple(skip)):
            seen.add(family)
            out.append(r["text"])
    return out[:n]


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


# ------------------------------------------------------------------------ plain time and contact
def _ago(days: float) -> str:
    """How long ago, as a person says it: today, yesterday, 12 days ago, about 7 months ago."""
    if days < 1:
        return "today"
    if days < 2:
        return "yesterday"
    if days < 45:
        return f"{days:.0f} days ago"
    months = round(days / 30.44)
    return f"about {months} months ago" if months < 24 else f"about {days / 365.25:.0f} years ago"


def _every(days: float) -> str:
    """A period as a person says it: 10 days, 3 weeks, 5 months."""
    if days < 14:
        n, unit = round(days), "day"
    elif days < 60:
        n, unit = round(days / 7), "week"
    else:
        n, unit = round(days / 30.44), "month"
    return f"{n} {unit}" + ("" if n == 1 else "s")


def _last_of(acts: pd.DataFrame, key: str, ids: pd.Index) -> pd.DataFrame:
    """Per id, its latest activity of ``acts`` (occurred_at, type, direction)."""
    a = acts.dropna(subset=[key]).sort_values("occurred_at", kind="stable").drop_duplicates(key, keep="last")
    return a.set_index(key)[["occurred_at", "type", "direction"]].reindex(ids)


def contact_sentences(export: Export, as_of: pd.Timestamp, kind: str, ids: Sequence[str]) -> list[str]:
    """Per lead, deal or account (``kind``): when the team last contacted it and when it was last
    active itself, before ``as_of`` ("Last contact 12 days ago (call made); they were last active
    yesterday (web visit)"). An account's activities include its leads' and deals'."""
    key = {"lead": "lead_id", "deal": "opportunity_id", "account": "touch_account"}[kind]
    acts = account_activities(export, as_of)
    index = pd.Index([str(i) for i in ids])
    touch, theirs = _last_of(acts[acts["rep"]], key, index), _last_of(acts[~acts["rep"]], key, index)
    out = []
    for i in range(len(index)):
        t, th = touch.iloc[i], theirs.iloc[i]
        ours = None if pd.isna(t["occurred_at"]) else (
            (as_of - t["occurred_at"]) / pd.Timedelta(days=1), activity_label(t["type"], t["direction"], singular=True))
        them = None if pd.isna(th["occurred_at"]) else (
            (as_of - th["occurred_at"]) / pd.Timedelta(days=1), activity_label(th["type"], th["direction"], singular=True))
        if ours is None and them is None:
            out.append("No activity logged yet")
        elif ours is None:
            out.append(f"No contact logged yet; they were last active {_ago(them[0])} ({them[1]})")
        elif them is None:
            out.append(f"Last contact {_ago(ours[0])} ({ours[1]}); nothing from them logged")
        elif them[0] < ours[0] and _ago(them[0]) != _ago(ours[0]):  # they moved since: answer them
            out.append(f"They were last active {_ago(them[0])} ({them[1]}), after the last contact {_ago(ours[0])} "
                       f"({ours[1]})")
        else:
            out.append(f"Last contact {_ago(ours[0])} ({ours[1]}); they were last active {_ago(them[0])} ({them[1]})")
    return out


# ------------------------------------------------------------------------ leads and deals
def lead_items(export: Export, scorer: Any, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every lead open at ``as_of`` (not before the model's training cutoff): P(converts) x the value
    of a converted lead. Reasons: the last contact, then the model's."""
    t = max(as_of, scorer.trained_until)
    leads = open_leads(export.leads, t)
    s = map_leads(export, leads, lambda part, accounts, acts: scorer.score(part, accounts, acts, t, n_reasons=8))
    owners = leads.set_index("lead_id")["owner_id"]
    contact = contact_sentences(export, t, "lead", s["lead_id"].astype(str).tolist())
    reasons = [[c, *actionable_reasons(r, skip=("activity",))] for c, r in zip(contact, s["reasons"], strict=True)]
    return _frame("lead", s["lead_id"], entity_names(export.leads, "lead", "lead_id"), owners, s["probability"],
                  s["grade"], s["expected_value"].to_numpy(dtype=float), reasons)


def _days_in_stage(export: Export, as_of: pd.Timestamp, ids: pd.Series, stages: pd.Series) -> np.ndarray:
    """Days since each deal last entered its current stage before ``as_of`` (NaN without a history row)."""
    h = rows_before(export.stage_history, "entered_at", as_of)
    last = h.sort_values("entered_at", kind="stable").drop_duplicates(["opportunity_id", "stage"], keep="last")
    entered = last.set_index(["opportunity_id", "stage"])["entered_at"]
    at = entered.reindex(pd.MultiIndex.from_arrays([ids.astype(str), stages.astype(str)]))
    return ((as_of - pd.DatetimeIndex(at.to_numpy())) / pd.Timedelta(days=1)).to_numpy(dtype=float)


def deal_items(export: Export, scorer: Any, as_of: pd.Timestamp) -> pd.DataFrame:
    """Every deal open at ``as_of``: P(won) x amount (the deal's, else predicted from similar deals).
    Reasons: the last contact, the stage and time in it with the amount and P(won), the model's.
    Carries ``stage`` (its effort is its stage's)."""
    s, opps = score_open_deals(export, scorer, as_of, n_reasons=8)
    owners = opps.drop_duplicates("opportunity_id").set_index("opportunity_id")["owner_id"]
    days = _days_in_stage(export, as_of, s["opportunity_id"], s["stage"])
    stage = [f"In {st}" + (f" for {_every(d)}" if np.isfinite(d) else "") + f"; amount {amt:,.0f}"
             + (" (predicted)" if pred else "") + f", P(won) {p:.0%}"
             for st, d, amt, pred, p in zip(s["stage"], days, s["amount"], s["amount_predicted"], s["p_win"], strict=True)]
    contact = contact_sentences(export, as_of, "deal", s["opportunity_id"].astype(str).tolist())
    reasons = [[c, h, *actionable_reasons(r, n=2, skip=("activity", "stage", "days_in_"))]
               for c, h, r in zip(contact, stage, s["reasons"], strict=True)]
    frame = _frame("deal", s["opportunity_id"], entity_names(export.opportunities, "deal", "opportunity_id"), owners,
                   s["p_win"], [None] * len(s), s["expected_value"].astype(float).fillna(0.0).to_numpy(), reasons)
    return frame.assign(stage=s["stage"].astype(object).to_numpy())


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


def _purchase_days(export: Export, as_of: pd.Timestamp) -> pd.Series:
    """Per customer, the days it bought on before ``as_of`` (won deals, one purchase per day), sorted."""
    o = export.opportunities
    won = o[(o["outcome"] == "won") & (o["closed_at"] < as_of) & o["account_id"].notna()]
    days = won.assign(day=won["closed_at"].dt.floor("D"))[["account_id", "day"]].drop_duplicates()
    return days.sort_values("day", kind="stable").groupby("account_id")["day"].agg(list)


def buying_cycle_sentences(export: Export, as_of: pd.Timestamp, ids: Sequence[str]) -> list[str]:
    """Per customer, its usual buying cycle against its last purchase before ``as_of``: "Usually buys
    every ~5 months (4 purchases); last purchase about 7 months ago, past its usual cycle" (over 1.2
    cycles; "due about now" from 0.8 cycles). With one
    purchase so far, the cycle of the export's repeat customers (the median time between two
    purchases) stands in for its own."""
    purchases = _purchase_days(export, as_of)
    gaps = [(b - a) / pd.Timedelta(days=1) for days in purchases for a, b in zip(days, days[1:], strict=False)]
    usual = float(np.median(gaps)) if gaps else None
    out = []
    for i in ids:
        days = purchases.get(i, [])
        if not days:
            out.append("No purchase yet")
            continue
        last = (as_of - days[-1]) / pd.Timedelta(days=1)
        if len(days) == 1:
            tail = f"; repeat customers buy again after ~{_every(usual)}" if usual else ""
            out.append(f"One purchase so far, {_ago(last)}{tail}")
            continue
        cycle = float(np.median(np.diff([d.value for d in days]))) / pd.Timedelta(days=1).value
        late = ", past its usual cycle" if last > 1.2 * cycle else ", due about now" if last >= 0.8 * cycle else ""
        out.append(f"Usually buys every ~{_every(cycle)} ({len(days)} purchases); last purchase {_ago(last)}{late}")
    return out


def _open_item_sentences(export: Export, open_items: pd.DataFrame, ids: Sequence[str]) -> list[str]:
    """Per account, its open deals (with their stages) and open leads on the list."""
    deals = open_items[open_items["kind"] == "deal"]
    leads = open_items[open_items["kind"] == "lead"]
    deal_acc = deals["id"].map(export.opportunities.set_index("opportunity_id")["account_id"])
    lead_acc = leads["id"].map(export.leads.set_index("lead_id")["account_id"])
    stages = (deals["stage"] if "stage" in deals else pd.Series(np.nan, index=deals.index)).groupby(
        deal_acc.to_numpy()).agg(lambda v: sorted({x for x in v if isinstance(x, str)}))
    n_deals, n_leads = deal_acc.value_counts(), lead_acc.value_counts()
    out = []
    for i in ids:
        nd, nl = int(n_deals.get(i, 0)), int(n_leads.get(i, 0))
        if nd == 0 and nl == 0:
            out.append("No open deal or lead")
            continue
        parts = []
        if nd:
            where = ", ".join(stages.get(i, []))
            parts.append(f"{nd} open deal{'s' if nd > 1 else ''}" + (f" ({where})" if where else ""))
        if nl:
            parts.append(f"{nl} open lead{'s' if nl > 1 else ''}")
        out.append(" and ".join(parts) + " on the list")
    return out


def _trait_sentence(traits: list[dict]) -> str | None:
    if not traits:
        return None
    t = traits[0]
    lift = t.get("heldout_lift")
    lift = lift if isinstance(lift, (int, float)) and np.isfinite(lift) else t["lift"]
    return f"Like high-value customers: {trait_label(t)} (worth {lift:.1f}x the average customer)"


def account_items(export: Export, scorer: Any, as_of: pd.Timestamp, open_items: pd.DataFrame) -> pd.DataFrame:
    """Every customer with an owner: the value expected in the next 12 months (:func:`next_year_value`
    of the high_value model's expected first-year value) beyond ``open_items`` (its open leads and
    deals, whose value is theirs). A prospect's value comes only through its leads and deals: those
    items carry it, so it is not an account item (nothing counted twice).

    Reasons, in this order: the last contact and sign of life, the buying cycle against the last
    purchase, its open deals and leads, a confirmed trait of high-value customers it shares, and
    (in its first year, which the model's probability is about) up to two of the model's reasons.
    Never the value it booked."""
    years = _customer_years(export, as_of)
    owners = _account_owners(export, as_of)
    ids = sorted(set(owners.index.astype(str)) & set(years.index.astype(str)))
    if not ids:
        return pd.DataFrame(columns=WORK_COLUMNS)
    X = scorer.features(export, ids, as_of)
    s = scorer.score_frame(X, n_reasons=8)
    ids = s["account_id"].astype(str).tolist()
    y = years.reindex(s["account_id"])
    expected = next_year_value(s["expected_value"].to_numpy(dtype=float), y["first_won_at"],
                               y["year1"].to_numpy(dtype=float), as_of, repeat_rate(export, as_of))
    item_account = pd.concat([
        open_items.loc[open_items["kind"] == "lead", "id"].map(export.leads.set_index("lead_id")["account_id"]),
        open_items.loc[open_items["kind"] == "deal", "id"].map(
            export.opportunities.set_index("opportunity_id")["account_id"])])
    in_items = open_items.loc[item_account.index, "expected_value"].groupby(item_account.to_numpy()).sum()
    rest = np.maximum(expected - s["account_id"].map(in_items).fillna(0.0).to_numpy(), 0.0)
    first_year = (as_of - pd.to_datetime(y["first_won_at"], utc=True)).to_numpy() < YEAR.to_timedelta64()
    lines = zip(contact_sentences(export, as_of, "account", ids), buying_cycle_sentences(export, as_of, ids),
                _open_item_sentences(export, open_items, ids), shared_traits(getattr(scorer, "traits", []), X),
                s["reasons"], first_year, strict=True)
    reasons = [[c, b, o, *filter(None, [_trait_sentence(t)]), *(actionable_reasons(r, n=2) if young else [])]
               for c, b, o, t, r, young in lines]
    return _frame("account", s["account_id"], entity_names(export.accounts, "account", "account_id"), owners,
                  s["probability"], [None] * len(s), rest, reasons)


# ------------------------------------------------------------------------ effort and ranking
def effort_payload(export: Export, as_of: pd.Timestamp, items: pd.DataFrame) -> dict[str, Any]:
    """What a refresh stores for ranking: the efforts measured on the export before ``as_of``
    (:func:`models.effort.derive_efforts`) and each open deal's stage (its effort is its stage's)."""
    deals = items[items["kind"] == "deal"] if len(items) else items
    stage = deals["stage"] if "stage" in deals else pd.Series(dtype=object)
    return {"efforts": derive_efforts(export, as_of).as_dict(),
            "deal_stage": {str(i): st for i, st in zip(deals.get("id", []), stage, strict=True) if isinstance(st, str)}}


def efforts_of(payload: Mapping[str, Any] | None) -> tuple[Efforts, dict[str, str]]:
    """The efforts and deal stages of a stored :func:`effort_payload` (a snapshot stored before
    efforts were measured has none: the hand-set defaults, saying so)."""
    if not payload:
        return Efforts.defaults("this snapshot was stored before efforts were measured (run `funnelcast refresh`)"), {}
    return Efforts.from_dict(payload["efforts"]), dict(payload.get("deal_stage", {}))


def ranked(frame: pd.DataFrame, efforts: Efforts, deal_stage: Mapping[str, str], id_column: str = "id") -> pd.DataFrame:
    """``frame`` with each item's ``effort`` and ``value_per_effort`` (expected value / effort), best
    first; ties by probability, then id. An export without any deal amount (a leads-only CRM) gives every
    lead an expected value of 0: the list is then its probabilities, best first, not its ids in order."""
    ids = frame[id_column].astype(str)
    stages = ids.map(dict(deal_stage)).where(frame["kind"] == "deal")
    effort = efforts.item_efforts(frame["kind"], stages)
    out = frame.assign(effort=effort, value_per_effort=frame["expected_value"].to_numpy(dtype=float) / effort)
    return out.sort_values(["value_per_effort", "probability", id_column], ascending=[False, False, True],
                           ignore_index=True)
