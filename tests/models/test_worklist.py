"""One list in one unit: an account counts only the value beyond what it booked and beyond its
open leads and deals; reasons lead with what a rep can act on and never with booked value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.worklist import BOOKED, account_items, actionable_reasons, lead_items, reason_kind, repeat_rate


class FixedValueAccounts:
    """An account scorer double: every account expects ``value`` over the next 12 months, with a
    booked-value reason first (the real high_value model often puts it first)."""

    def __init__(self, value: float):
        self.value = value

    def score(self, export, ids, as_of, n_reasons=5):
        reasons = [{"feature": "first_deal_amount", "value": 1.0, "contribution": 0.7, "text": "First deal amount"},
                   {"feature": "industry", "value": "x", "contribution": 0.1, "text": "Industry is x"},
                   {"feature": "early_meetings", "value": 2.0, "contribution": -0.02, "text": "2 early meetings"}]
        return pd.DataFrame({"account_id": ids, "probability": 0.5, "expected_value": self.value,
                             "is_customer": False, "base_probability": 0.2, "reasons": [reasons] * len(ids)})


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
    for reasons in items["reasons"]:
        assert "First deal amount" not in reasons and reasons[0].startswith("About")
        assert reasons[1:] == ["2 early meetings", "Industry is x"]  # activity before fit


def test_reasons_order_and_kinds():
    assert {reason_kind(f) for f in BOOKED} == {"booked"}
    assert reason_kind("meeting_30d") == reason_kind("days_since_activity") == "activity"
    assert reason_kind("days_in_stage") == reason_kind("stage") == "stage"
    assert reason_kind("days_to_close_date") == reason_kind("lead_age_days") == "timing"
    assert reason_kind("source") == reason_kind("account_industry") == "fit"
    reasons = [{"feature": f, "contribution": c, "text": f} for f, c in
               [("source", 0.3), ("account_won_amount", 0.5), ("days_to_close_date", -0.1), ("email_7d", 0.01),
                ("stage", 0.05), ("call_total", -0.2)]]
    assert actionable_reasons(reasons, n=5) == ["call_total", "email_7d", "stage", "days_to_close_date", "source"]


def test_lead_items_are_p_convert_times_value(sample_export, lead_scorer):
    items = lead_items(sample_export, lead_scorer, sample_export.exported_at)
    assert len(items) and (items["kind"] == "lead").all()
    assert np.all(items["expected_value"] <= items["probability"] * max(
        [lead_scorer.value_overall, *lead_scorer.value_if_converted.values()]) + 1e-9)
    assert items["score"].between(0, 100).all() and set(items["grade"]) <= set("ABCD")
