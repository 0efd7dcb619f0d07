"""The one-pass snapshots equal the per-``as_of`` loop they replaced (the oracle), on the
sample and on edge cases: no activity at all, leads and deals created exactly at a snapshot
time, events exactly at ``as_of``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.contract import Export
from features.leads import LeadFeatureSpec, LeadHistory, _lead_snapshots_naive, lead_context, lead_snapshots, snapshot_times
from features.pit import open_leads


def _lead_times(export: Export, every_days: int = 28) -> list[pd.Timestamp]:
    start = export.leads["created_at"].min() + pd.Timedelta(days=10)
    return snapshot_times(start, export.exported_at - pd.Timedelta(days=91), every_days)


def _assert_same(fast: pd.DataFrame, naive: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(fast, naive, check_exact=False, rtol=1e-9, atol=1e-9)


def _replace(export: Export, **tables: pd.DataFrame) -> Export:
    import dataclasses

    return dataclasses.replace(export, **tables)


def test_lead_snapshots_equal_the_naive_loop(sample_export):
    times = _lead_times(sample_export)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=times[-1])
    _assert_same(lead_snapshots(sample_export, times, spec), _lead_snapshots_naive(sample_export, times, spec))


@pytest.mark.parametrize("frac", [0.2, 0.6, 1.0])
def test_lead_context_equals_the_per_as_of_one(sample_export, frac):
    times = _lead_times(sample_export, 7)
    as_of = times[int(frac * (len(times) - 1))]
    history = LeadHistory(sample_export, 91)
    got = history.context(as_of, history.open_at(as_of))
    want = lead_context(sample_export, as_of, 91)
    assert got.global_rate == want.global_rate
    for name in ("source_rate", "owner_rate", "owner_open_leads"):
        assert getattr(got, name).keys() == getattr(want, name).keys()
        for k, v in getattr(want, name).items():
            assert getattr(got, name)[k] == pytest.approx(v, rel=1e-12), (name, k)
    pd.testing.assert_frame_equal(got.account_history, want.account_history, check_exact=False, rtol=1e-9)
    assert (history.open_at(as_of) == sample_export.leads.index.isin(open_leads(sample_export.leads, as_of).index)).all()


def test_lead_snapshots_without_any_activity(sample_export):
    export = _replace(sample_export, activities=sample_export.activities.iloc[:0])
    times = _lead_times(export)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=times[-1])  # the activity kinds of the sample
    fast = lead_snapshots(export, times, spec)
    _assert_same(fast, _lead_snapshots_naive(export, times, spec))
    assert (fast["activities_total"] == 0).all()


def test_leads_and_events_exactly_at_a_snapshot_time(sample_export):
    """Leads created, converted, disqualified and activities exactly at ``as_of``, opportunities
    created and closed at it, accounts created at it or given twice: the same frames."""
    times = _lead_times(sample_export)
    t = times[len(times) // 2]
    rng = np.random.default_rng(3)
    leads = sample_export.leads.copy()
    pick = rng.choice(len(leads), size=(4, 30), replace=False)
    for row, col in zip(pick, ("created_at", "converted_at", "disqualified_at", "created_at")):
        leads.iloc[row, leads.columns.get_loc(col)] = t
    acts = sample_export.activities.copy()
    acts.iloc[rng.choice(len(acts), 200, replace=False), acts.columns.get_loc("occurred_at")] = t
    acts.iloc[rng.choice(len(acts), 50, replace=False), acts.columns.get_loc("occurred_at")] = pd.NaT
    opps = sample_export.opportunities.copy()
    for col in ("created_at", "closed_at"):
        opps.iloc[rng.choice(len(opps), 20, replace=False), opps.columns.get_loc(col)] = t
    accounts = sample_export.accounts.copy()
    accounts.iloc[rng.choice(len(accounts), 20, replace=False), accounts.columns.get_loc("created_at")] = t
    later_copy = accounts.sample(10, random_state=4).assign(industry="a later copy")  # the first row wins
    accounts = pd.concat([accounts, later_copy], ignore_index=True)
    export = _replace(sample_export, leads=leads, activities=acts, opportunities=opps, accounts=accounts)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=times[-1])
    fast = lead_snapshots(export, times, spec)
    _assert_same(fast, _lead_snapshots_naive(export, times, spec))
    assert not fast.loc[fast["as_of"] == t, "lead_id"].isin(leads.loc[pick[0], "lead_id"]).any()


# ----------------------------------------------------------------------------- deals
from features.deals import (  # noqa: E402
    DealFeatureSpec,
    DealHistory,
    _deal_snapshots_naive,
    deal_context,
    deal_snapshots,
    decided_deals,
    open_opportunities,
)


def _deal_times(export: Export, every_days: int = 28) -> list[pd.Timestamp]:
    start = export.opportunities["created_at"].min() + pd.Timedelta(days=20)
    return snapshot_times(start, export.exported_at, every_days)


def _assert_same_context(got, want) -> None:
    for name, value in vars(want).items():
        mine = getattr(got, name)
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(mine, value, check_exact=False, rtol=1e-9)
        elif isinstance(value, dict):
            assert mine.keys() == value.keys(), name
            for k, v in value.items():
                assert mine[k] == pytest.approx(v, rel=1e-12, nan_ok=True), (name, k)
        else:
            assert mine == value or (mine != mine and value != value), name


def test_deal_snapshots_equal_the_naive_loop(sample_export):
    times = _deal_times(sample_export)
    spec = DealFeatureSpec.from_export(sample_export, as_of=times[-1])
    _assert_same(deal_snapshots(sample_export, times, spec), _deal_snapshots_naive(sample_export, times, spec))


@pytest.mark.parametrize("frac", [0.1, 0.5, 1.0])
def test_deal_context_and_decisions_equal_the_per_as_of_ones(sample_export, frac):
    times = _deal_times(sample_export, 7)
    as_of = times[int(frac * (len(times) - 1))]
    history = DealHistory(sample_export)
    is_open = history.open_at(as_of)
    naive_open = open_opportunities(sample_export.opportunities, sample_export.stage_history, as_of)
    assert (sample_export.opportunities.index[is_open] == naive_open.index).all()
    pd.testing.assert_frame_equal(history._context.decided(as_of), decided_deals(sample_export, as_of))
    _assert_same_context(history.context(as_of, is_open), deal_context(sample_export, as_of))


def test_deal_snapshots_without_any_activity(sample_export):
    export = _replace(sample_export, activities=sample_export.activities.iloc[:0])
    times = _deal_times(export)
    spec = DealFeatureSpec.from_export(sample_export, as_of=times[-1])
    fast = deal_snapshots(export, times, spec)
    _assert_same(fast, _deal_snapshots_naive(export, times, spec))
    assert (fast["activities_total"] == 0).all()


def test_deals_and_entries_exactly_at_a_snapshot_time(sample_export):
    """Deals created and closed, stage entries (terminal ones too) and activities exactly at
    ``as_of``, entries without a time, deals without stage history: the same frames."""
    times = _deal_times(sample_export)
    t = times[len(times) // 2]
    rng = np.random.default_rng(5)
    opps = sample_export.opportunities.copy()
    for col in ("created_at", "closed_at"):
        opps.iloc[rng.choice(len(opps), 25, replace=False), opps.columns.get_loc(col)] = t
    sh = sample_export.stage_history.copy()
    sh.iloc[rng.choice(len(sh), 80, replace=False), sh.columns.get_loc("entered_at")] = t
    sh.iloc[rng.choice(len(sh), 20, replace=False), sh.columns.get_loc("entered_at")] = pd.NaT
    sh = sh[~sh["opportunity_id"].isin(opps["opportunity_id"].sample(30, random_state=1))]
    acts = sample_export.activities.copy()
    acts.iloc[rng.choice(len(acts), 200, replace=False), acts.columns.get_loc("occurred_at")] = t
    export = _replace(sample_export, opportunities=opps, stage_history=sh, activities=acts)
    spec = DealFeatureSpec.from_export(sample_export, as_of=times[-1])
    fast = deal_snapshots(export, times, spec)
    _assert_same(fast, _deal_snapshots_naive(export, times, spec))
    created_then = opps.loc[opps["created_at"] == t, "opportunity_id"]
    assert not fast.loc[fast["as_of"] == t, "opportunity_id"].isin(created_then).any()


# ----------------------------------------------------------------------------- accounts
from features.customers import AccountFeatureSpec, _account_snapshots_naive, account_snapshots  # noqa: E402


@pytest.fixture(scope="module")
def account_export():
    """A sample with enough customers whose value is complete (the small one has a few dozen)."""
    from features.io import load_export
    from features.sample import generate_sample

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        generate_sample(Path(tmp), seed=11, scale=0.15)
        export, _ = load_export(Path(tmp) / "export")
    return export


def test_account_snapshots_equal_the_naive_loop(account_export):
    spec = AccountFeatureSpec.from_export(account_export)
    fast, threshold = account_snapshots(account_export, account_export.exported_at, spec)
    naive, naive_threshold = _account_snapshots_naive(account_export, account_export.exported_at, spec)
    assert threshold == naive_threshold
    assert len(fast) > 50
    _assert_same(fast, naive)


def test_account_snapshots_with_events_at_their_snapshot_time(account_export):
    """Activities and deals exactly at an account's snapshot time, deals without stage history."""
    spec = AccountFeatureSpec.from_export(account_export)
    naive, _ = _account_snapshots_naive(account_export, account_export.exported_at, spec)
    rng = np.random.default_rng(2)
    at = naive.set_index("account_id")["as_of"]
    acts = account_export.activities.copy()
    rows = rng.choice(np.flatnonzero(acts["account_id"].isin(at.index)), 100, replace=False)
    acts.iloc[rows, acts.columns.get_loc("occurred_at")] = at.reindex(acts["account_id"].iloc[rows]).to_numpy()
    opps = account_export.opportunities.copy()
    rows = rng.choice(np.flatnonzero(opps["account_id"].isin(at.index)), 40, replace=False)
    opps.iloc[rows, opps.columns.get_loc("created_at")] = at.reindex(opps["account_id"].iloc[rows]).to_numpy()
    sh = account_export.stage_history
    sh = sh[~sh["opportunity_id"].isin(opps["opportunity_id"].sample(40, random_state=3))]
    export = _replace(account_export, activities=acts, opportunities=opps, stage_history=sh)
    _assert_same(account_snapshots(export, export.exported_at, spec)[0],
                 _account_snapshots_naive(export, export.exported_at, spec)[0])
