"""The worklist's effort per kind is measured on the export (rep touches it took to win), point in
time: the fast counts equal a naive per-entity loop, and nothing at or after ``as_of`` changes them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from features.contract import Export
from models.effort import (
    DEFAULT_EFFORTS,
    Efforts,
    count_in_windows,
    deal_touches,
    derive_efforts,
    lead_touches,
    rep_touches,
    repeat_touches,
)

DAY = pd.Timedelta(days=1)


def _as_of(export: Export, frac: float) -> pd.Timestamp:
    lo, hi = export.opportunities["created_at"].min(), export.exported_at
    return (lo + (hi - lo) * frac).floor("D")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_in_windows_equals_a_loop(seed):
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2025-01-01", tz="UTC")
    keys = pd.Series(rng.choice(["a", "b", "c", None], 400), dtype="str")
    times = pd.Series(t0 + pd.to_timedelta(rng.integers(0, 100, 400), unit="D"))
    times[rng.random(400) < 0.05] = pd.NaT
    wk = pd.Series(rng.choice(["a", "b", "c", "z", None], 60), dtype="str")
    starts = pd.Series(t0 + pd.to_timedelta(rng.integers(-10, 90, 60), unit="D"))
    ends = starts + pd.to_timedelta(rng.integers(-5, 40, 60), unit="D")  # some end before they start
    got = count_in_windows(keys, times, wk, starts, ends)
    want = [int(((keys == k) & (times >= s) & (times <= e)).sum()) if isinstance(k, str) else 0
            for k, s, e in zip(wk, starts, ends, strict=True)]
    assert got.tolist() == want and sum(want) > 0


def _naive(export: Export, as_of: pd.Timestamp) -> dict[str, list[int]]:
    """Touches counted one entity at a time, straight from the tables (the oracle)."""
    a = export.activities[(export.activities["occurred_at"] < as_of) & export.activities["direction"].ne("inbound")]
    o, h = export.opportunities, export.stage_history
    terminal = h[(h["entered_at"] < as_of) & h["stage"].isin(["won", "lost"])].sort_values("entered_at")
    first = terminal.drop_duplicates("opportunity_id")
    won = first[first["stage"] == "won"].set_index("opportunity_id")["entered_at"]
    won_info = o.set_index("opportunity_id").loc[won.index]
    out: dict[str, list[int]] = {"lead": [], "repeat": [], **{s: [] for s in export.open_stages}, "created": []}
    for deal, closed in won.items():
        mine = a[a["opportunity_id"] == deal]
        out["created"].append(int(mine["occurred_at"].between(won_info.at[deal, "created_at"], closed).sum()))
        entries = h[(h["opportunity_id"] == deal) & (h["entered_at"] < as_of) & (h["entered_at"] <= closed)]
        for stage in export.open_stages:
            e = entries.loc[entries["stage"] == stage, "entered_at"]
            if len(e):
                out[stage].append(int(mine["occurred_at"].between(e.max(), closed).sum()))
    for lead in export.leads.itertuples(index=False):
        if not (lead.converted_at < as_of) or lead.opportunity_id not in won.index:
            continue
        on_lead = a[a["lead_id"] == lead.lead_id]["occurred_at"].between(lead.created_at, lead.converted_at).sum()
        mine = a[a["opportunity_id"] == lead.opportunity_id]["occurred_at"]
        on_deal = mine.between(won_info.at[lead.opportunity_id, "created_at"], won[lead.opportunity_id]).sum()
        out["lead"].append(int(on_lead + on_deal))
    account_of = (a["account_id"].fillna(a["opportunity_id"].map(o.set_index("opportunity_id")["account_id"]))
                  .fillna(a["lead_id"].map(export.leads.set_index("lead_id")["account_id"])))
    wins = won_info.assign(closed=won).sort_values(["closed"])
    for _, deals in wins.groupby("account_id"):
        times = sorted(deals["closed"])
        for before, after in zip(times, times[1:], strict=False):
            t = a.loc[account_of == deals["account_id"].iloc[0], "occurred_at"]
            out["repeat"].append(int(((t > before) & (t <= after)).sum()))
    return out


def test_touches_equal_a_naive_loop_and_the_efforts_are_their_medians(sample_export):
    export = sample_export
    as_of = _as_of(export, 0.8)
    naive = _naive(export, as_of)
    touches = rep_touches(export, as_of)
    deals = deal_touches(export, as_of, touches)
    assert sorted(deals["created"]) == sorted(naive["created"])
    for stage in export.open_stages:
        assert sorted(deals[stage].dropna().astype(int)) == sorted(naive[stage])
    assert sorted(lead_touches(export, as_of, touches)) == sorted(naive["lead"])
    assert sorted(repeat_touches(export, as_of, touches)) == sorted(naive["repeat"])
    assert min(len(naive["lead"]), len(naive["repeat"]), len(naive["proposal"])) >= 20  # each is measured
    e = derive_efforts(export, as_of)
    med = {k: max(1.0, round(float(np.median(v)))) for k, v in naive.items()}
    assert (e.lead.effort, e.deal.effort, e.account.effort) == (med["lead"], med["created"], med["repeat"])
    assert {s: x.effort for s, x in e.deal_stages.items()} == {s: med[s] for s in export.open_stages}
    assert {x.source for x in e.rows()} == {"data"} and e.unit == "rep touches"
    assert e.lead.examples == len(naive["lead"]) and "leads won as deals" in e.lead.rule
    # later stages are closer to the win: fewer touches to go
    assert e.deal_stages["contract"].effort <= e.deal_stages["qualification"].effort


def _future_rewritten(export: Export, as_of: pd.Timestamp, rng: np.random.Generator) -> Export:
    """Everything at or after ``as_of`` rewritten: many rep touches on every kind of record, wins
    and conversions moved, junk stage entries; the export-time outcome of later deals changed."""
    n = 2000
    acts = export.activities[export.activities["occurred_at"] < as_of]
    pick = lambda frame, col: rng.choice(frame[col].dropna().to_numpy(), n)  # noqa: E731
    junk = pd.DataFrame({
        "activity_id": [f"FUTURE{i}" for i in range(n)],
        "occurred_at": as_of + pd.to_timedelta(rng.uniform(0, 200, n), unit="D"),
        "type": rng.choice(["meeting", "call", "email"], n),
        "lead_id": pick(export.leads, "lead_id"), "opportunity_id": pick(export.opportunities, "opportunity_id"),
        "account_id": pick(export.accounts, "account_id"), "direction": "outbound", "score": np.nan})
    junk.loc[0, "occurred_at"] = as_of  # exactly at as_of is the future too
    acts = pd.concat([acts, junk[acts.columns]], ignore_index=True)
    opps = export.opportunities.copy()
    later = ~(opps["closed_at"] < as_of)
    opps.loc[later, "outcome"], opps.loc[later, "closed_at"] = "won", as_of + DAY
    hist = export.stage_history[export.stage_history["entered_at"] < as_of]
    ids = opps.loc[later, "opportunity_id"].to_numpy()
    more = pd.DataFrame({"opportunity_id": ids, "stage": "won", "entered_at": as_of, "amount": 1e6,
                         "expected_close_date": as_of})
    hist = pd.concat([hist, more[hist.columns]], ignore_index=True)
    leads = export.leads.copy()
    leads.loc[~(leads["converted_at"] < as_of) & (leads["created_at"] < as_of), "converted_at"] = as_of + DAY
    return dataclasses.replace(export, activities=acts, opportunities=opps, stage_history=hist, leads=leads)


@pytest.mark.parametrize("seed,frac", [(0, 0.6), (1, 0.85)])
def test_rows_at_or_after_as_of_never_change_an_effort(sample_export, seed, frac):
    as_of = _as_of(sample_export, frac)
    before = derive_efforts(sample_export, as_of)
    after = derive_efforts(_future_rewritten(sample_export, as_of, np.random.default_rng(seed)), as_of)
    assert before == after and before.lead.source == "data"
    assert derive_efforts(sample_export, sample_export.exported_at) != before  # the later past does count


def test_too_little_history_falls_back_and_says_why(sample_export):
    early = _as_of(sample_export, 0.05)
    e = derive_efforts(sample_export, early)
    assert {x.source for x in e.rows()} == {"default"} and e.unit == "relative units"
    assert [e.lead.effort, e.deal.effort, e.account.effort] == list(DEFAULT_EFFORTS.values())
    assert "deals won before" in e.lead.rule
    # enough won deals but, with a high bar, too few repeat purchases: a lead and an account take a new deal's effort
    as_of = _as_of(sample_export, 0.8)
    n_repeat = len(repeat_touches(sample_export, as_of))
    wide = derive_efforts(sample_export, as_of, min_examples=n_repeat + 1)
    assert wide.account.source == "fallback" and wide.account.effort == wide.deal.effort
    assert f"only {n_repeat} repeat purchases" in wide.account.rule


def test_overrides_and_the_round_trip(sample_export):
    e = derive_efforts(sample_export, sample_export.exported_at)
    assert Efforts.from_dict(e.as_dict()) == e
    o = e.overridden({"deal": 4.0, "lead": None}, "request")
    assert o.lead == e.lead and o.deal.effort == 4.0 and o.deal.source == "request" and not o.deal_stages
    assert o.of("deal", "proposal").effort == 4.0 and e.of("deal", "proposal") == e.deal_stages["proposal"]
    items = e.item_efforts(pd.Series(["lead", "deal", "deal", "account"]),
                           pd.Series([None, "contract", "unknown", None], dtype=object))
    assert items.tolist() == [e.lead.effort, e.deal_stages["contract"].effort, e.deal.effort, e.account.effort]
