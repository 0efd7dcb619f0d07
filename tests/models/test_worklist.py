"""One list in one unit: an account counts only the value beyond what it booked and beyond its
open leads and deals; reasons lead with what a rep can act on and never with booked value."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest

from models.effort import Effort, Efforts
from models.explain import activity_label, feature_label, reason_sentence
from models.worklist import (
    BOOKED,
    account_items,
    actionable_reasons,
    buying_cycle_sentences,
    contact_sentences,
    deal_items,
    efforts_of,
    lead_items,
    ranked,
    reason_kind,
    repeat_rate,
)


class FixedValueAccounts:
    """An account scorer double: every account expects ``value`` over the next 12 months, with a
    booked-value reason first (the real high_value model often puts it first), and one confirmed
    trait of high-value customers (``industry = trait_industry``)."""

    def __init__(self, value: float, trait_industry: str = "software"):
        self.value = value
        self.traits = [{"rank": 1, "conditions": [{"column": "industry", "op": "==", "value": trait_industry}],
                        "lift": 2.5, "heldout_lift": 2.1, "confirmed": True},
                       {"rank": 2, "conditions": [{"column": "industry", "op": "==", "value": "retail"}],
                        "lift": 3.0, "heldout_lift": 0.9, "confirmed": False}]

    def features(self, export, ids, as_of):
        return export.accounts.set_index("account_id").loc[list(ids), ["industry"]]

    def score_frame(self, X, n_reasons=5):
        reasons = [{"feature": "first_deal_amount", "value": 1.0, "contribution": 0.7, "text": "First deal amount"},
                   {"feature": "industry", "value": "x", "contribution": 0.1, "text": "Industry is x"},
                   {"feature": "account_age_days", "value": 3.0, "contribution": 0.004, "text": "under a point"},
                   {"feature": "early_meetings", "value": 2.0, "contribution": -0.02, "text": "2 early meetings"}]
        return pd.DataFrame({"account_id": X.index.to_numpy(), "probability": 0.5, "expected_value": self.value,
                             "is_customer": False, "base_probability": 0.2, "reasons": [reasons] * len(X)})


def _won(export, as_of):
    o = export.opportunities
    return o[(o["outcome"] == "won") & (o["closed_at"] < as_of)]


def test_repeat_rate_against_a_per_customer_loop(sample_export):
    as_of, year = sample_export.exported_at, pd.Timedelta(days=365)
    won = _won(sample_export, as_of)
    y1 = y2 = 0.0
    for _, deals in won.groupby("account_id"):
        first = deals["closed_at"].min()
        if first + 2 * year > as_of:
            continue
        age = deals["closed_at"] - first
        y1 += deals.loc[age < year, "amount"].fillna(0).sum()
        y2 += deals.loc[(age >= year) & (age < 2 * year), "amount"].fillna(0).sum()
    assert repeat_rate(sample_export, as_of) == pytest.approx(y2 / y1 if y1 else 0.0)
    assert repeat_rate(sample_export, as_of - pd.Timedelta(days=3000)) == 0.0  # no customer yet: no evidence


def test_account_value_is_next_year_beyond_booked_and_beyond_its_open_items(sample_export, lead_scorer):
    export, as_of, year = sample_export, sample_export.exported_at, pd.Timedelta(days=365)
    leads = lead_items(export, lead_scorer, as_of)
    open_deals = export.opportunities[export.opportunities["outcome"] == "open"]
    deals = pd.DataFrame({"kind": "deal", "id": open_deals["opportunity_id"].to_numpy(), "expected_value": 5_000.0})
    value = 200_000.0
    items = account_items(export, FixedValueAccounts(value), as_of, pd.concat([leads, deals], ignore_index=True))
    rate = repeat_rate(export, as_of)
    won = _won(export, as_of)
    lead_account = export.leads.set_index("lead_id")["account_id"]
    assert len(items) and set(items["id"]) <= set(won["account_id"])  # customers only: prospects live in their leads
    first_year = 0
    for r in items.itertuples(index=False):  # the naive way, one account at a time
        mine = won[won["account_id"] == r.id]
        first = mine["closed_at"].min()
        if as_of - first < year:
            booked = mine.loc[mine["closed_at"] - first < year, "amount"].fillna(0).sum()
            expected = max(value - booked, 0.0)
            first_year += 1
        else:
            expected = rate * value
        in_leads = leads.loc[leads["id"].map(lead_account) == r.id, "expected_value"].sum()
        in_deals = 5_000.0 * (open_deals["account_id"] == r.id).sum()
        assert r.expected_value == pytest.approx(max(expected - in_leads - in_deals, 0.0))
    assert 0 < first_year < len(items)  # both cases are checked
    industry = export.accounts.set_index("account_id")["industry"]
    first_won = won.groupby("account_id")["closed_at"].min()
    for r in items.itertuples(index=False):
        reasons = r.reasons
        assert not any("First deal amount" in t or "booked" in t or "under a point" in t for t in reasons)
        assert reasons[0].startswith(("Last contact", "They were last active", "No contact", "No activity"))
        assert reasons[1].startswith(("Usually buys every", "One purchase so far"))
        assert reasons[2].endswith("on the list") or reasons[2] == "No open deal or lead"
        like = [t for t in reasons if t.startswith("Like high-value customers")]
        assert like == (["Like high-value customers: industry is software (worth 2.1x the average customer)"]
                        if industry[r.id] == "software" else [])  # the unconfirmed trait is never claimed
        model = reasons[3 + len(like):]
        # the model's probability is about a customer's first year: its reasons only then, activity before fit
        assert model == (["2 early meetings", "Industry is x"] if as_of - first_won[r.id] < year else [])


def test_reasons_order_and_kinds():
    assert {reason_kind(f) for f in BOOKED} == {"booked"}
    assert reason_kind("meeting_30d") == reason_kind("days_since_activity") == "activity"
    assert reason_kind("days_in_stage") == reason_kind("stage") == "stage"
    assert reason_kind("days_to_close_date") == reason_kind("lead_age_days") == "timing"
    assert reason_kind("source") == reason_kind("account_industry") == "fit"
    assert reason_kind("owner_id") == reason_kind("owner_win_rate") == "owner"
    reasons = [{"feature": f, "contribution": c, "text": f} for f, c in
               [("source", 0.3), ("account_won_amount", 0.5), ("days_to_close_date", -0.1), ("email_7d", 0.01),
                ("stage", 0.05), ("call_total", -0.2), ("owner_id", 0.9)]]
    assert actionable_reasons(reasons, n=5) == ["call_total", "email_7d", "stage", "days_to_close_date", "source"]


def test_lead_items_are_p_convert_times_value(sample_export, lead_scorer):
    items = lead_items(sample_export, lead_scorer, sample_export.exported_at)
    assert len(items) and (items["kind"] == "lead").all()
    assert np.all(items["expected_value"] <= items["probability"] * max(
        [lead_scorer.value_overall, *lead_scorer.value_if_converted.values()]) + 1e-9)
    assert items["score"].between(0, 100).all() and set(items["grade"]) <= set("ABCD")


def _naive_last(export, as_of, key_of, entity, rep):
    """The latest activity before ``as_of`` of ``entity`` (rep touch or theirs), one row at a time."""
    a = export.activities[export.activities["occurred_at"] < as_of]
    inbound = a["direction"].eq("inbound").fillna(False).to_numpy(dtype=bool)
    mine = a[(key_of(a) == entity).fillna(False).to_numpy(dtype=bool) & (~inbound if rep else inbound)]
    return None if mine.empty else mine.loc[mine["occurred_at"].idxmax()]


@pytest.mark.parametrize("kind", ["lead", "deal", "account"])
def test_contact_sentences_say_the_last_contact_and_sign_of_life_against_a_loop(sample_export, kind):
    export, as_of = sample_export, sample_export.exported_at - pd.Timedelta(days=120)
    o, leads = export.opportunities, export.leads
    if kind == "account":
        def key_of(a):
            return (a["account_id"].fillna(a["opportunity_id"].map(o.set_index("opportunity_id")["account_id"]))
                    .fillna(a["lead_id"].map(leads.set_index("lead_id")["account_id"])))
        pool = export.accounts["account_id"]
    else:
        column = "lead_id" if kind == "lead" else "opportunity_id"
        pool = (leads if kind == "lead" else o)[column]

        def key_of(a):
            return a[column]
    ids = pool.sample(60, random_state=1).astype(str).tolist()
    got = contact_sentences(export, as_of, kind, ids)
    shapes = set()
    for entity, text in zip(ids, got, strict=True):
        ours, theirs = _naive_last(export, as_of, key_of, entity, True), _naive_last(export, as_of, key_of, entity, False)
        for row, words in ((ours, "contact"), (theirs, "active")):
            if row is None:
                continue
            days = (as_of - row["occurred_at"]) / pd.Timedelta(days=1)
            assert activity_label(row["type"], row["direction"], singular=True) in text, (entity, text)
            if 2 <= days < 45:
                assert f"{days:.0f} days ago" in text, (entity, text)
        shapes.add(("ours" if ours is not None else "") + ("theirs" if theirs is not None else ""))
        if ours is None and theirs is None:
            assert text == "No activity logged yet"
    assert len(shapes) >= 2  # more than one case is checked
    # point in time: touches at or after as_of change nothing
    later = export.activities[export.activities["occurred_at"] >= as_of - pd.Timedelta(days=400)].copy()
    later["occurred_at"] = as_of + pd.Timedelta(hours=1)
    later["activity_id"] = "F" + later["activity_id"].astype(str)
    future = dataclasses.replace(export, activities=pd.concat([export.activities, later], ignore_index=True))
    assert contact_sentences(future, as_of, kind, ids) == got


def test_buying_cycle_against_a_loop(sample_export):
    export, as_of = sample_export, sample_export.exported_at
    o = export.opportunities
    won = o[(o["outcome"] == "won") & (o["closed_at"] < as_of)]
    days = won.groupby("account_id")["closed_at"].agg(lambda v: sorted(set(v.dt.floor("D"))))
    many = [a for a, d in days.items() if len(d) >= 3][:20]
    one = [a for a, d in days.items() if len(d) == 1][:5]
    assert len(many) >= 5 and one
    got = dict(zip(many + one, buying_cycle_sentences(export, as_of, many + one), strict=True))
    for a in many:
        gaps = [(b - c).days for c, b in zip(days[a], days[a][1:], strict=False)]
        cycle, last = float(np.median(gaps)), (as_of - days[a][-1]) / pd.Timedelta(days=1)
        assert got[a].startswith(f"Usually buys every ~") and f"({len(days[a])} purchases)" in got[a]
        assert got[a].endswith(", past its usual cycle") == (last > 1.2 * cycle)
        assert got[a].endswith(", due about now") == (0.8 * cycle <= last <= 1.2 * cycle)
        if cycle >= 60:
            assert f"~{round(cycle / 30.44)} month" in got[a]
    for a in one:
        assert got[a].startswith("One purchase so far") and "repeat customers buy again after ~" in got[a]


class OpenDeals:
    """A deal scorer double: every open deal at P(won) 0.4 with model reasons of each kind."""

    def score(self, opps, stage_history, activities, leads, accounts, as_of, n_reasons=5, horizon_days=None):
        reasons = [{"feature": "days_in_stage", "contribution": -0.2, "text": "Days in the current stage: 40"},
                   {"feature": "days_in_contract", "contribution": 0.15, "text": "Days spent in contract: 110"},
                   {"feature": "stage_win_rate", "contribution": 0.12, "text": "Win rate of deals in this stage: 0.4"},
                   {"feature": "meeting_30d", "contribution": 0.1, "text": "Meetings in the last 30 days: 2"},
                   {"feature": "meeting_per_30d", "contribution": 0.08, "text": "Meetings per month so far: 1.5"},
                   {"feature": "product", "contribution": 0.05, "text": "Product is core"},
                   {"feature": "account_won_amount", "contribution": 0.3, "text": "Revenue already won"}]
        amount = opps["amount"].fillna(1000.0).to_numpy()
        return pd.DataFrame({"opportunity_id": opps["opportunity_id"].to_numpy(), "stage": opps["stage"].to_numpy(),
                             "amount": amount, "amount_predicted": opps["amount"].isna().to_numpy(),
                             "p_win": 0.4, "expected_value": 0.4 * amount, "reasons": [reasons] * len(opps)})


def test_deal_reasons_lead_with_contact_then_stage_and_say_each_thing_once(sample_export):
    items = deal_items(sample_export, OpenDeals(), sample_export.exported_at)
    assert len(items) > 20 and items["stage"].isin(sample_export.open_stages).all()
    for r in items.itertuples(index=False):
        assert r.reasons[0].startswith(("Last contact", "They were last active", "No contact", "No activity"))
        assert r.reasons[1].startswith(f"In {r.stage}") and "P(won) 40%" in r.reasons[1]
        # days in stage said by the stage line, meetings once, booked value never
        assert r.reasons[2:] == ["Meetings in the last 30 days: 2", "Product is core"]


def test_lead_reasons_are_plain_and_lead_with_contact(sample_export, lead_scorer):
    items = lead_items(sample_export, lead_scorer, sample_export.exported_at)
    for reasons in items["reasons"]:
        assert reasons[0].startswith(("Last contact", "They were last active", "No contact", "No activity"))
        labels = [re.split(r":| is ", t)[0] for t in reasons[1:]]  # "Calls made in the last 7 days: 2, raises ..."
        assert not any("_" in t for t in labels), reasons  # plain labels, never a column name
        assert not any("less than a point" in t or " is unknown" in t for t in reasons), reasons
        assert len(reasons) == len(set(reasons))


def test_labels_say_what_a_person_says():
    assert feature_label("meeting_per_30d") == "Meetings per month so far"
    assert feature_label("call_outbound_per_30d") == "Calls made per month so far"
    assert reason_sentence("days_since_call_outbound", None, 0.03) == "No call made yet: raises the probability by 3 points"
    assert reason_sentence("days_since_first_win", 808.24, -0.02) == (
        "Days since the first win: 808, lowers the probability by 2 points")
    assert activity_label("meeting", None, singular=True) == "meeting"
    assert activity_label("email", "inbound", singular=True) == "email received"


def test_ranked_uses_each_deals_stage_effort_and_the_overrides():
    frame = pd.DataFrame({"kind": ["lead", "deal", "deal", "account"], "id": ["l", "d1", "d2", "a"],
                          "expected_value": [100.0, 900.0, 900.0, 1700.0], "probability": [0.5, 0.3, 0.3, 0.4]})
    payload = {"efforts": Efforts(as_of="t", lead=Effort("lead", 2.0, "data", 30, "r"),
                                  deal=Effort("deal", 15.0, "data", 30, "r"),
                                  account=Effort("account", 17.0, "data", 30, "r"),
                                  deal_stages={"contract": Effort("deal", 3.0, "data", 30, "r", "contract")}).as_dict(),
               "deal_stage": {"d1": "contract", "d2": "qualification"}}
    efforts, stages = efforts_of(payload)
    out = ranked(frame, efforts, stages)
    assert out["id"].tolist() == ["d1", "a", "d2", "l"]  # 300, 100, 60, 50 per touch
    assert out["effort"].tolist() == [3.0, 17.0, 15.0, 2.0]
    flat = ranked(frame, efforts.overridden({"deal": 1.0}, "request"), stages)
    assert flat.set_index("id").loc[["d1", "d2"], "value_per_effort"].tolist() == [900.0, 900.0]
    # no deal amounts anywhere (a leads-only CRM): every value is 0 and the likeliest come first, not the ids
    leads = pd.DataFrame({"kind": "lead", "id": ["a1", "b2", "c3", "d4"], "expected_value": 0.0,
                          "probability": [0.02, 0.61, 0.10, 0.61]})
    assert ranked(leads, efforts, {})["id"].tolist() == ["b2", "d4", "c3", "a1"]
    old, _ = efforts_of(None)  # a snapshot stored before efforts were measured
    assert {e.source for e in old.rows()} == {"default"} and "funnelcast refresh" in old.lead.rule
