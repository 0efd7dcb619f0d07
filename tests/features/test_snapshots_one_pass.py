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
    created and closed at it: at-``as_of`` rows are invisible in both."""
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
    export = _replace(sample_export, leads=leads, activities=acts, opportunities=opps)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=times[-1])
    fast = lead_snapshots(export, times, spec)
    _assert_same(fast, _lead_snapshots_naive(export, times, spec))
    assert not fast.loc[fast["as_of"] == t, "lead_id"].isin(leads.loc[pick[0], "lead_id"]).any()
