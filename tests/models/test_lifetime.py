"""The age correction (models.lifetime): the conversion curve by age from the whole history up to a cutoff,
point in time, and every rung's probability and reasons moved by it beyond the ages it learned from."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from models.base import ClassifierScorer
from models.candidates import BlendClassifier, fit_candidate, ladder
from models.estimators import calibrated_score
from models.lifetime import AgeLimit, age_limit, conversion_by_age

T0 = pd.Timestamp("2025-01-01", tz="UTC")


def _leads(n: int = 4000, seed: int = 0, life: int = 60) -> pd.DataFrame:
    """Leads created over 400 days; half convert at a uniform age up to ``life`` days, a quarter are
    disqualified at up to 300 days, the rest stay open."""
    rng = np.random.default_rng(seed)
    created = T0 + pd.to_timedelta(rng.uniform(0, 400, n), unit="D")
    fate = rng.random(n)
    converted = created + pd.to_timedelta(rng.uniform(0, life, n), unit="D")
    dropped = created + pd.to_timedelta(rng.uniform(0, 300, n), unit="D")
    return pd.DataFrame({
        "lead_id": [f"L{i}" for i in range(n)], "created_at": created,
        "converted_at": pd.Series(converted).where(fate < 0.5),
        "disqualified_at": pd.Series(dropped).where((fate >= 0.5) & (fate < 0.75)),
    })


def test_no_lead_converts_past_its_lifetime_and_the_young_convert_at_their_rate():
    leads = _leads()
    cutoff = T0 + pd.Timedelta(days=500)
    curve, at_risk = conversion_by_age(leads, cutoff, horizon_days=30)
    assert len(curve) > 200 and (np.diff(at_risk) <= 0).all()
    # nobody converts after 60 days: only the floor of half a conversion among the leads open then is left
    np.testing.assert_allclose(curve[70:], 0.5 / at_risk[70:])
    # at age 0 every lead is open: those converting within 30 days (half of them convert, uniform over 60)
    assert curve[0] == pytest.approx(0.25, abs=0.03)
    # at age 30: open means not yet converted nor dropped; of those, the converters of days 30..60 all convert
    assert 0.3 < curve[30] < 0.5


def test_the_curve_reads_nothing_after_the_cutoff():
    leads = _leads()
    cutoff = T0 + pd.Timedelta(days=300)
    before, _ = conversion_by_age(leads, cutoff, horizon_days=30)
    later = leads.copy()
    after_cutoff = later["converted_at"] >= cutoff
    # what happens after the cutoff is rewritten: later conversions vanish, later leads convert at once
    later.loc[after_cutoff, "converted_at"] = pd.NaT
    late = later["created_at"] >= cutoff
    later.loc[late, "converted_at"] = later.loc[late, "created_at"]
    again, _ = conversion_by_age(later, cutoff, horizon_days=30)
    np.testing.assert_array_equal(before, again)


def test_nothing_to_correct_when_the_model_saw_every_age():
    leads = _leads()
    cutoff = T0 + pd.Timedelta(days=500)
    assert age_limit(leads, cutoff, 30, pd.Series(np.linspace(0, 500, 500))) is None
    limit = age_limit(leads, cutoff, 30, pd.Series(np.linspace(0, 40, 500)))
    assert limit is not None and limit.start == 39
    X = pd.DataFrame({"lead_age_days": [0.0, 39.0, 39.5, 80.0, 10_000.0, np.nan]})
    off = limit.offset(X)
    assert off[[0, 1, 5]].tolist() == [0.0, 0.0, 0.0]  # within the range, and no age: unchanged
    assert off[3] < -2 and off[4] < -2  # past the lifetime: far less likely (the oldest: the last age read)
    assert "older than 39 d" in limit.describe()


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(0, 40, n)
    source = rng.choice(["web", "referral"], n)
    z = -1 + 1.0 * (source == "referral") - 0.02 * age
    X = pd.DataFrame({"source": pd.array(source, dtype="str"), "lead_age_days": age, "visits": rng.poisson(2, n) * 1.0})
    return X.assign(label=(rng.random(n) < 1 / (1 + np.exp(-z))).astype(int))


@pytest.mark.parametrize("name", ["naive_bayes", "logistic", "lgbm_conservative", "blend"])
def test_every_rung_applies_the_correction_to_its_probability_and_its_reasons(name):
    fit, cal = _frame(2000, 1), _frame(800, 2)
    cols = ["source", "lead_age_days", "visits"]
    limit = AgeLimit("lead_age_days", 40, np.log(np.r_[np.full(41, 0.3), np.full(60, 0.01)] / 0.7))
    rungs = {r.name: r for r in ladder(["source"], {"min_child_samples": 20}, seed=0)}

    def fitted(rung: str, with_limit: bool):
        model = rungs[rung].make()
        if with_limit:
            model.lifetime_ = limit
        return model.fit(fit[cols], fit["label"].to_numpy(), cal[cols], cal["label"].to_numpy())

    def build(with_limit: bool):
        if name != "blend":
            return fitted(name, with_limit)
        members = [fitted(r, with_limit) for r in ("logistic", "lgbm_conservative")]
        return BlendClassifier(members).fit(X_cal=cal[cols], y_cal=cal["label"].to_numpy())

    plain, limited = build(False), build(True)
    X = pd.DataFrame({"source": pd.array(["web", "referral", "web"], dtype="str"),
                      "lead_age_days": [10.0, 35.0, 90.0], "visits": [2.0, 1.0, 2.0]})
    p0, p1 = plain.predict_proba(X), limited.predict_proba(X)
    np.testing.assert_allclose(p1[:2], p0[:2], rtol=1e-9)  # within the range learned: the same
    assert p1[2] < p0[2] / 5  # past it: the curve's odds ratio (0.01 against 0.3)
    scorer = ClassifierScorer.__new__(ClassifierScorer)
    scorer.classifier = limited
    contrib = scorer.explain(X)
    np.testing.assert_allclose(contrib.base + contrib.values.sum(axis=1), calibrated_score(limited, X), atol=1e-8)
    age = contrib.feature_names.index("lead_age_days")
    assert contrib.values[2, age] < contrib.values[0, age] - 2  # the reason names the lead's age
    assert pickle.loads(pickle.dumps(limited)).predict_proba(X) == pytest.approx(p1)
