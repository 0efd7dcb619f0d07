"""The history and recency weighting chosen on validation: a noise-level win does not throw history away."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.candidates import choose_on_validation, ladder

CATS = ["source"]
COLS = ["source", "visits", "size"]


def _stationary(n: int, seed: int, days: int, end: pd.Timestamp) -> pd.DataFrame:
    """Rows of one unchanging process, their ``as_of`` spread over the ``days`` before ``end``."""
    rng = np.random.default_rng(seed)
    source = rng.choice(["web", "referral", "event"], n)
    visits = rng.poisson(2, n).astype(float)
    size = rng.lognormal(3, 1.0, n)
    z = -2 + 1.0 * (source == "referral") + 0.3 * visits + 0.2 * np.log(size)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    as_of = end - pd.to_timedelta(rng.integers(1, days, n), unit="D")
    return pd.DataFrame({"source": pd.array(source, dtype="str"), "visits": visits, "size": size,
                         "label": y, "as_of": as_of})


@pytest.mark.parametrize("seed", range(6))
def test_a_stationary_history_is_kept_whole_and_unweighted(seed):
    cutoff = pd.Timestamp("2026-01-01", tz="UTC")
    fit = _stationary(3000, seed, 730, cutoff)
    cal, val = _stationary(800, 100 + seed, 60, cutoff), _stationary(800, 200 + seed, 60, cutoff)
    rungs = [r for r in ladder(CATS, {}, seed) if r.name == "logistic"]
    choice = choose_on_validation(rungs, fit, cal, val, COLS, cutoff)
    assert len(choice.grid) == 3  # all, the last 365 days, a 180-day half-life: each tried
    assert (choice.history_days, choice.half_life_days) == (None, None)
