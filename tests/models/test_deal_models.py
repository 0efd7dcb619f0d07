"""Model code of deals, on small synthetic inputs: the timing roll-up, the simulated
Poisson-binomial forecast, the weighted pipeline and the funnel's bookkeeping."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from models.deals import win_mass
from models.forecast import NewDealFlow, simulate_bookings, weighted_pipeline
from models.funnel import funnel_report, funnel_table


def test_win_mass_adds_up():
    rng = np.random.default_rng(0)
    close, share = rng.uniform(0, 1, (50, 12)), rng.uniform(0, 1, (50, 12))
    win, loss = close * share, close * (1 - share)
    mass = win_mass(win, loss)
    assert mass.shape == (50, 13) and (mass >= 0).all()
    # wins, losses or stays open: the won mass is at most 1 and equals the direct sum
    survive = np.cumprod(np.c_[np.ones(50), 1 - close], axis=1)
    assert np.allclose(mass[:, :12], survive[:, :12] * close * share)
    assert np.allclose(mass[:, :12].sum(1) + survive[:, 12] * share[:, -1], mass.sum(1))
    assert (mass.sum(1) <= 1 + 1e-12).all()
    # everything closes in the first period, 30% of it won: P(won) is 0.3
    assert np.allclose(win_mass(np.full((3, 4), 0.3), np.full((3, 4), 0.7)).sum(1), 0.3)


def test_win_mass_caps_hazards_that_add_up_to_more_than_one():
    """Two separate models may give win + loss > 1: the pair is scaled to sum to 1 (the deal
    surely closes, in their proportion), never a negative survival."""
    mass = win_mass(np.array([[0.9, 0.5]]), np.array([[0.3, 0.1]]))
    assert mass[0, 0] == pytest.approx(0.75) and mass[0, 1:].sum() == pytest.approx(0.0)
    assert (win_mass(np.full((2, 3), 0.8), np.full((2, 3), 0.8)) >= 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_simulated_poisson_binomial_matches_the_exact_distribution(seed):
    """Three deals: the exact distribution of the booked sum has 8 outcomes; the simulation
    reproduces it (and is not a normal: it is lumpy)."""
    rng = np.random.default_rng(seed)
    amount, p = np.array([100.0, 250.0, 1000.0]), rng.uniform(0.1, 0.9, 3)
    summary, draws, names = simulate_bookings(amount, p, np.array(["a", "a", "a"]), n_sims=40_000, seed=seed)
    exact: dict[float, float] = {}
    for wins in itertools.product([0, 1], repeat=3):
        w = np.array(wins)
        exact[float(amount @ w)] = exact.get(float(amount @ w), 0.0) + float(np.prod(np.where(w, p, 1 - p)))
    values, counts = np.unique(draws[:, 0], return_counts=True)
    assert set(values) <= set(exact)
    for v, c in zip(values, counts, strict=True):
        assert c / len(draws) == pytest.approx(exact[v], abs=0.01)
    assert summary.loc[0, "expected_bookings"] == pytest.approx(amount @ p)
    assert summary.loc[0, "p10"] <= summary.loc[0, "p50"] <= summary.loc[0, "p90"]


def test_simulation_is_seeded_and_groups_add_up():
    rng = np.random.default_rng(3)
    n = 200
    amount, p = rng.uniform(1e3, 5e4, n), rng.uniform(0, 1, n)
    groups = rng.choice(["x", "y", "z"], n)
    flow = NewDealFlow(rate={"x": 2.0, "y": 0.5}, amounts={"x": np.array([1e4, 2e4])}, all_amounts=np.array([5e3]),
                       lead_flow_factor=1.0, windows=13, dispersion={"x": 0.3})
    a, da, _ = simulate_bookings(amount, p, groups, flow, n_sims=3000, seed=11)
    b, db, _ = simulate_bookings(amount, p, groups, flow, n_sims=3000, seed=11)
    pd.testing.assert_frame_equal(a, b)
    assert np.array_equal(da, db)
    for g in ("x", "y", "z"):
        row = a.set_index("group").loc[g]
        assert row["expected_open_pipeline"] == pytest.approx((amount * p)[groups == g].sum())
    # new deals: x gets 2 per horizon at 15k on average, y 0.5 at 5k (everyone's amounts), z none
    new = a.set_index("group")["expected_new_deals"]
    assert new["x"] == pytest.approx(30_000, rel=0.1) and new["y"] == pytest.approx(2_500, rel=0.15)
    assert new["z"] == 0


def test_weighted_pipeline_counts_close_dates_in_the_horizon_only():
    as_of = pd.Timestamp("2026-01-01", tz="UTC")
    close = pd.Series(pd.to_datetime(["2025-12-01", "2026-02-01", "2026-06-01", None], utc=True))
    weighted, commit = weighted_pipeline(np.array([100.0, 200.0, 300.0, 400.0]), np.array([0.5, 0.5, 0.5, 0.5]),
                                         close, as_of, 91)
    assert weighted.tolist() == [50.0, 100.0, 0.0, 0.0]  # overdue counts as closing now
    assert commit.tolist() == [100.0, 200.0, 0.0, 0.0]


def test_funnel_bookkeeping(sample_export):
    as_of = sample_export.exported_at
    start = as_of - pd.Timedelta(days=182)
    t = funnel_table(sample_export, start, as_of, by="none")
    assert list(t["stage"]) == list(sample_export.open_stages)
    assert (t["moved_on"] + t["lost"] + t["still_open"] <= t["entered"]).all()
    assert ((t["conversion"] >= 0) & (t["conversion"] <= 1)).all()
    # entries counted by hand
    h = sample_export.stage_history
    mine = h[(h["entered_at"] >= start) & (h["entered_at"] < as_of) & (h["stage"] == "proposal")]
    assert t.set_index("stage").loc["proposal", "entered"] == len(mine)
    by_owner = funnel_table(sample_export, start, as_of, by="owner_id")
    assert by_owner.groupby("stage")["entered"].sum().loc["proposal"] == len(mine)
    report = funnel_report(sample_export, as_of, period_days=182)
    assert report.bottleneck in sample_export.open_stages
    assert report.overall.set_index("stage")["value_lost"].idxmax() == report.bottleneck
    assert "bottleneck" in report.summary()


def test_moved_on_within_censoring_by_hand():
    from models.funnel import moved_on_within

    # 4 entries: moved at 1, censored at 2, lost at 3, moved at 4; within 10 days:
    # t=1: 1/4 moved, S=3/4; t=3: lost, S=3/4*1/2; t=4: moved 3/8*1/1 -> 1/4 + 3/8
    assert moved_on_within(np.array([1, 2, 3, 4]), np.array([1, 0, 2, 1]), 10) == pytest.approx(0.625)
    assert moved_on_within(np.array([1, 2, 3, 4]), np.array([1, 0, 2, 1]), 3.5) == pytest.approx(0.25)
    # the naive share among the resolved would say 2/3; without censoring it is the plain share
    assert moved_on_within(np.array([1, 2, 3]), np.array([1, 2, 1]), 10) == pytest.approx(2 / 3)
    assert np.isnan(moved_on_within(np.array([]), np.array([]), 10))


def test_funnel_latest_period_has_no_censoring_drop(sample_export):
    # the last period as of T (outcomes known at T only) against the same entries followed up
    # a year later: the censoring-corrected conversion must agree
    T = sample_export.exported_at - pd.Timedelta(days=365)
    start = T - pd.Timedelta(days=91)
    cut = funnel_table(sample_export, start, T).set_index("stage")
    later = funnel_table(sample_export, start, T, known_at=T + pd.Timedelta(days=365)).set_index("stage")
    assert (cut["entered"] == later["entered"]).all()
    assert (cut["still_open"] > later["still_open"]).any()  # T really censors
    assert (cut["conversion"] - later["conversion"]).abs().max() < 0.06, (cut["conversion"], later["conversion"])
    with pytest.raises(ValueError, match="known_at"):
        funnel_table(sample_export, start, T, known_at=start)


def test_the_naive_bayes_deal_baseline_is_not_overconfident_on_correlated_features():
    """Ten copies of one noisy signal: raw naive Bayes counts it ten times (log loss above the base
    rate's); the Platt-scaled baseline keeps the ranking and beats the base rate."""
    from sklearn.metrics import log_loss, roc_auc_score

    from models.deals import BinnedNaiveBayes

    rng = np.random.default_rng(3)
    n = 4000
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.6 * signal - 0.5)))).astype(int)
    X = pd.DataFrame({f"f{i}": signal + rng.normal(scale=0.1, size=n) for i in range(10)})
    X["segment"] = pd.Series(np.where(rng.random(n) < 0.5, "a", "b"), dtype="str")
    train, test = slice(0, 3000), slice(3000, None)
    nb = BinnedNaiveBayes(["segment"], alpha=1.0).fit(X.iloc[train], y[train])
    p = nb.predict_proba(X.iloc[test])
    raw = nb.model_.predict_proba(nb._binned(X.iloc[test]))
    base = np.full(len(p), y[train].mean())
    assert log_loss(y[test], raw) > log_loss(y[test], base)  # the overconfidence this guards against
    assert log_loss(y[test], p) < log_loss(y[test], base)
    assert roc_auc_score(y[test], p) == pytest.approx(roc_auc_score(y[test], raw), abs=1e-9)
