"""Drift: PSI is ~0 for the same distribution, large for a shifted one; missing rates and new categories show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.drift import drift_report, psi, reference_profile


def _frame(rng: np.random.Generator, n: int, shift: float = 0.0, missing: float = 0.0) -> pd.DataFrame:
    x = rng.normal(shift, 1.0, n)
    x[rng.random(n) < missing] = np.nan
    src = rng.choice(["web", "referral", "event"], n, p=[0.6, 0.3, 0.1])
    return pd.DataFrame({"x": x, "stable": rng.normal(0, 1, n), "source": src})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_distribution_is_stable_and_a_shift_is_major(seed):
    rng = np.random.default_rng(seed)
    ref = _frame(rng, 20_000)
    profile = reference_profile(ref, rng.beta(2, 8, 20_000), categorical=["source"])
    same = drift_report(profile, _frame(rng, 5000), rng.beta(2, 8, 5000))
    assert max(f["psi"] for f in same["features"]) < 0.02
    assert same["score"]["psi"] < 0.02 and abs(same["score"]["mean_change"]) < 0.01
    moved = drift_report(profile, _frame(rng, 5000, shift=1.0), rng.beta(4, 6, 5000))
    by = {f["feature"]: f for f in moved["features"]}
    assert by["x"]["psi"] > 0.25 and by["x"]["level"] == "major"
    assert by["stable"]["psi"] < 0.02
    assert moved["features"][0]["feature"] == "x"  # sorted by PSI
    assert moved["score"]["psi"] > 0.25 and moved["score"]["mean_change"] == pytest.approx(0.2, abs=0.02)


def test_missing_rate_change_and_unseen_categories():
    rng = np.random.default_rng(3)
    profile = reference_profile(_frame(rng, 10_000), np.full(10_000, 0.1), categorical=["source"])
    new = _frame(rng, 4000, missing=0.3)
    new.loc[: 1999, "source"] = "tradeshow"  # a value never seen in training
    by = {f["feature"]: f for f in drift_report(profile, new)["features"]}
    assert by["x"]["missing_reference"] == 0 and by["x"]["missing_change"] == pytest.approx(0.3, abs=0.03)
    assert by["source"]["psi"] > 0.25
    gone = drift_report(profile, new.drop(columns="stable"))
    assert {f["feature"]: f for f in gone["features"]}["stable"]["missing_recent"] == 1.0


def test_psi_of_identical_shares_is_zero_and_symmetric_terms_are_positive():
    a = {"0": 0.5, "1": 0.5}
    assert psi(a, a) == 0
    assert psi(a, {"0": 0.9, "1": 0.1}) > 0 and psi({"0": 0.9, "1": 0.1}, a) > 0


def test_the_trained_model_carries_its_reference(trained):
    ref = trained.scorer.metadata["reference"]
    assert set(ref["features"]) == set(trained.scorer.spec.feature_names)
    assert ref["rows"] > 0 and ref["score"]["edges"]
