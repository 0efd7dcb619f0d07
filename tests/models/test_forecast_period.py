"""The forecast of a calendar period: bounds, won so far against a naive loop, additivity of the
roll-ups, point-in-time (deals created after as_of change nothing), the CRM categories, 'unassigned'."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from models.forecast import ADDITIVE, UNASSIGNED, period_bounds, period_forecast

AS_OF = pd.Timestamp("2026-08-10", tz="UTC")  # mid-quarter in the sample (exported at the end of September)


@pytest.fixture(scope="module")
def early_scorer(sample_export, deal_snapshot_frame, deal_config):
    """A deal scorer trained on history before AS_OF (scoring at AS_OF must not leak)."""
    from training.deals import fit_deal_scorer

    spec, snaps = deal_snapshot_frame
    return fit_deal_scorer(sample_export, snaps, spec, AS_OF, deal_config, surrogate=False)


@pytest.fixture(scope="module")
def quarter(sample_export, early_scorer):
    return period_forecast(sample_export, early_scorer, AS_OF, period="quarter", by="owner_id", n_sims=800, seed=3)


@pytest.mark.parametrize(("as_of", "period", "start", "end"), [
    ("2026-08-10T12:00:00Z", "month", "2026-08-01", "2026-09-01"),
    ("2026-08-10T12:00:00Z", "quarter", "2026-07-01", "2026-10-01"),
    ("2026-10-01T00:00:00Z", "quarter", "2026-10-01", "2027-01-01"),  # the first instant belongs to the period
    ("2026-12-31T23:59:59Z", "month", "2026-12-01", "2027-01-01"),
    ("2026-02-28T23:30:00-05:00", "month", "2026-03-01", "2026-04-01"),  # UTC decides
])
def test_period_bounds(as_of, period, start, end):
    assert period_bounds(pd.Timestamp(as_of), period) == (pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC"))
    with pytest.raises(ValueError, match="week"):
        period_bounds(pd.Timestamp(as_of), "week")


def test_won_so_far_matches_a_naive_loop(sample_export, quarter):
    start = quarter.start
    expected: dict[str, float] = {}
    hist = sample_export.stage_history.sort_values("entered_at", kind="stable")
    for opp in sample_export.opportunities.itertuples(index=False):
        h = hist[(hist["opportunity_id"] == opp.opportunity_id) & (hist["entered_at"] < AS_OF)]
        terminal = h[h["stage"].isin(["won", "lost"])]
        if terminal.empty or terminal["stage"].iloc[0] != "won" or not start <= terminal["entered_at"].iloc[0] < AS_OF:
            continue
        amount = h["amount"].dropna()
        owner = opp.owner_id if isinstance(opp.owner_id, str) else UNASSIGNED
        expected[owner] = expected.get(owner, 0.0) + (float(amount.iloc[-1]) if len(amount) else 0.0)
    got = quarter.groups.set_index("group")["won_so_far"]
    assert expected and {k: v for k, v in got.items() if v} == pytest.approx(expected)


def test_bands_and_roll_ups_add_up(quarter):
    g = quarter.groups
    assert (g["p10"] <= g["p50"]).all() and (g["p50"] <= g["p90"]).all()
    assert (g["p10"] >= g["won_so_far"] - 1e-6).all()  # what is booked is booked
    np.testing.assert_allclose(g["expected_total"],
                               g["won_so_far"] + g["expected_open_pipeline"] + g["expected_new_deals"])
    cols = [c for c in ADDITIVE if c in g.columns]
    np.testing.assert_allclose(quarter.total[cols].to_numpy()[0], g[cols].sum().to_numpy())
    np.testing.assert_allclose(quarter.teams[cols].sum().to_numpy(), g[cols].sum().to_numpy())
    t = quarter.total.iloc[0]
    assert t["p10"] < t["expected_total"] < t["p90"]
    # the company band is narrower than the sum of the reps' bands (independent deals partly cancel)
    assert t["p90"] - t["p10"] < (g["p90"] - g["p10"]).sum()
    assert "run rate" in quarter.new_deals and "52 days" in quarter.new_deals


def test_unassigned_is_a_group_not_a_rep(sample_export, quarter):
    assert sample_export.opportunities["owner_id"].isna().any()
    assert UNASSIGNED in set(quarter.groups["group"]) and "(none)" not in set(quarter.groups["group"])
    assert UNASSIGNED in set(quarter.teams["team"])


def test_deals_created_after_as_of_change_nothing(sample_export, early_scorer, quarter):
    opps = sample_export.opportunities
    later = set(opps.loc[opps["created_at"] >= AS_OF, "opportunity_id"])
    assert later
    cut = dataclasses.replace(
        sample_export,
        opportunities=opps[~opps["opportunity_id"].isin(later)].reset_index(drop=True),
        stage_history=sample_export.stage_history[~sample_export.stage_history["opportunity_id"].isin(later)],
        activities=sample_export.activities[~sample_export.activities["opportunity_id"].isin(later)],
    )
    again = period_forecast(cut, early_scorer, AS_OF, period="quarter", by="owner_id", n_sims=800, seed=3)
    pd.testing.assert_frame_equal(again.groups, quarter.groups)


def test_crm_categories_only_at_the_export_time(sample_export, early_scorer, quarter):
    assert not quarter.has_crm_categories and "crm_commit" not in quarter.groups
    now = sample_export.exported_at
    fc = period_forecast(sample_export, early_scorer, now, period="month", by="team", n_sims=300, seed=1)
    assert fc.has_crm_categories and fc.teams is None
    opps = sample_export.opportunities
    open_ = opps[(opps["outcome"] == "open") & (opps["created_at"] < now)]
    dated = open_[open_["expected_close_date"] < fc.end]
    for cat, col in (("commit", "crm_commit"), ("best case", "crm_best_case"), ("pipeline", "crm_pipeline")):
        want = dated.loc[dated["forecast_category"] == cat, "amount"].fillna(0).sum()
        assert fc.total[col].iloc[0] == pytest.approx(want, abs=0.01), cat
