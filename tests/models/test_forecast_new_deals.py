"""Deals not yet created: amounts shrunk toward everyone's by empirical Bayes, the recency
half-life chosen on earlier origins, and nothing after as_of read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from models.forecast import HALF_LIVES, NewDealFlow, amount_weights, new_deal_flow, simulate_bookings


def _pool(rng: np.random.Generator, means: dict[str, float], n: int, repeats: int = 1) -> pd.DataFrame:
    rows = []
    for g, m in means.items():
        amounts = rng.lognormal(np.log(m), 0.6, n)
        ids = [f"{g}-{i}" for i in range(n)]
        rows += [pd.DataFrame({"opportunity_id": ids, "group": g, "amount": amounts})] * repeats
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_amount_weights_follow_the_evidence(seed):
    rng = np.random.default_rng(seed)
    same = amount_weights(_pool(rng, {f"rep_{i}": 20_000.0 for i in range(8)}, n=12))
    assert np.mean(list(same.values())) < 0.35  # the reps differ by noise only: mostly everyone's amounts
    apart = amount_weights(_pool(rng, {"smb": 5_000.0, "mid": 20_000.0, "ent": 80_000.0}, n=60))
    assert min(apart.values()) > 0.9  # real differences, well measured: the rep's own
    # a deal seen in several windows is one win, not several
    assert amount_weights(_pool(np.random.default_rng(seed), {f"rep_{i}": 20_000.0 for i in range(8)}, n=12,
                                repeats=5)) == pytest.approx(
        amount_weights(_pool(np.random.default_rng(seed), {f"rep_{i}": 20_000.0 for i in range(8)}, n=12)))


def test_simulated_amounts_mix_the_group_and_everyone_by_the_weight():
    flow = NewDealFlow(rate={"x": 3.0}, amounts={"x": np.array([40_000.0, 60_000.0])},
                       all_amounts=np.array([10_000.0, 10_000.0, 40_000.0, 60_000.0]), lead_flow_factor=1.0, windows=13,
                       amount_weight={"x": 0.25})
    summary, draws, names = simulate_bookings(np.zeros(0), np.zeros(0), np.zeros(0, dtype=object), flow, n_sims=20_000,
                                              seed=5)
    expected = 3.0 * (0.25 * 50_000 + 0.75 * 30_000)
    assert summary.set_index("group").loc["x", "expected_new_deals"] == pytest.approx(expected)
    assert draws[:, names.index("x")].mean() == pytest.approx(expected, rel=0.03)
    assert flow.expected_amount("nobody") == pytest.approx(30_000)


def test_half_life_is_chosen_on_earlier_origins_and_point_in_time(sample_export):
    as_of = pd.Timestamp("2026-06-01", tz="UTC")
    flow = new_deal_flow(sample_export, as_of, 91, "owner_id")
    assert flow.half_life_windows in HALF_LIVES
    errors = {k: v for k, v in flow.details.items() if k.startswith("validation_error_half_life_")}
    assert len(errors) == len(HALF_LIVES) and min(errors, key=errors.get).endswith(f"_{flow.half_life_windows:g}")
    assert set(flow.amount_weight) <= set(flow.amounts) and all(0 <= w <= 1 for w in flow.amount_weight.values())
    e = sample_export
    cut = dataclasses.replace(
        e,
        opportunities=e.opportunities[e.opportunities["created_at"] < as_of],
        stage_history=e.stage_history[e.stage_history["entered_at"] < as_of],
        leads=e.leads[e.leads["created_at"] < as_of],
    )
    again = new_deal_flow(cut, as_of, 91, "owner_id")
    assert again.half_life_windows == flow.half_life_windows
    assert again.rate == pytest.approx(flow.rate) and again.amount_weight == pytest.approx(flow.amount_weight)
    fixed = new_deal_flow(sample_export, as_of, 91, "owner_id", half_life_windows=2.0)
    assert fixed.half_life_windows == 2.0 and not any(k.startswith("validation_error") for k in fixed.details)
