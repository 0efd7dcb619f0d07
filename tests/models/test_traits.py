"""Trait mining finds a planted interaction, ranks it first, and confirms it on held-out accounts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.traits import TraitMiner, nice_number, planted_match


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_interaction_comes_out_on_top(seed):
    rng = np.random.default_rng(seed)
    n = 1500
    profile = pd.DataFrame({
        "industry": rng.choice(["software", "retail", "finance", "media"], n),
        "employees": np.round(np.exp(rng.normal(np.log(200), 1.2, n))),
        "country": rng.choice(["us", "de", "fr"], n),
    })
    planted = (profile["industry"] == "software") & (profile["employees"] >= 500)
    value = np.exp(rng.normal(10, 0.5, n)) * np.where(planted, 3.0, 1.0)
    miner = TraitMiner(n_bootstrap=20, random_state=seed).fit(profile, value, value > np.quantile(value, 0.8))
    top = miner.traits_[0]
    cond = [{"column": "industry", "op": "==", "value": "software"}, {"column": "employees", "op": ">=", "value": 500}]
    assert planted_match(top, cond) == "exact", top.name
    assert top.confirmed and top.stability >= 0.5
    assert miner.table()["rank"].tolist() == list(range(1, len(miner.traits_) + 1))


def test_noise_gives_no_confirmed_trait():
    rng = np.random.default_rng(3)
    profile = pd.DataFrame({"industry": rng.choice(list("abcd"), 800), "size": rng.normal(size=800)})
    miner = TraitMiner(n_bootstrap=10).fit(profile, rng.exponential(1.0, 800))
    assert sum(t.confirmed and t.lift_low > 1.2 for t in miner.traits_) == 0


def test_nice_number():
    assert nice_number(512.0) == 500.0 and nice_number(0.034) == 0.03 and nice_number(1750) == 2000
