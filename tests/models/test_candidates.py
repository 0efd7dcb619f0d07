"""The candidate ladder: one contract over every rung (additive contributions, calibration, unseen
categories, pickling), the choice on validation, the recency weighting and the base-rate shift."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from models.candidates import (
    BlendClassifier,
    base_rate_shift,
    choose,
    choose_on_validation,
    fit_candidate,
    ladder,
    shift_to_rate,
    training_rows,
)

CATS = ["source", "country"]


def _frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    source = rng.choice(["web", "referral", "event"], n)
    country = rng.choice(["FR", "DE", None], n)
    size = rng.lognormal(3, 1.5, n)
    visits = rng.poisson(2, n).astype(float)
    visits[rng.random(n) < 0.1] = np.nan
    z = -2 + 1.2 * (source == "referral") + 0.5 * np.log1p(size) / 3 + 0.3 * np.nan_to_num(visits) + shift
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    as_of = pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    X = pd.DataFrame({"source": pd.array(source, dtype="str"), "country": pd.array(country, dtype="str"),
                      "size": size, "visits": visits})
    return X.assign(label=y, as_of=as_of)


FIT, CAL, VAL = _frame(3000, 0), _frame(1000, 1), _frame(1000, 2)
COLS = ["source", "country", "size", "visits"]


@pytest.fixture(scope="module")
def fitted():
    rungs = ladder(CATS, {"min_child_samples": 20}, seed=0, conservative={"min_child_samples": 20})
    return {r.name: fit_candidate(r, FIT[COLS], FIT["label"].to_numpy(), CAL[COLS], CAL["label"].to_numpy())
            for r in rungs}


@pytest.mark.parametrize("name", ["naive_bayes", "logistic", "lgbm_conservative", "lgbm", "blend"])
def test_every_candidate_keeps_the_contract(fitted, name):
    model = fitted[name] if name != "blend" else BlendClassifier([fitted["logistic"], fitted["lgbm"]]).fit(
        X_cal=CAL[COLS], y_cal=CAL["label"].to_numpy())
    X = VAL[COLS].head(200)
    c = model.contributions(X)
    assert c.shape == (len(X), len(COLS) + 1)
    np.testing.assert_allclose(c.sum(axis=1), model.raw_score(X), atol=1e-8)  # additive, base last
    z = model.calib_slope_ * model.raw_score(X) + model.calib_intercept_
    np.testing.assert_allclose(model.predict_proba(X), 1 / (1 + np.exp(-z)), atol=1e-10)
    assert model.feature_names_ == COLS
    unseen = model.unseen_categories(X.assign(source=pd.array(["fax"] * len(X), dtype="str")))
    assert unseen["source"].all() and not unseen["country"].any()
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again.predict_proba(X), model.predict_proba(X))
    # calibrated on the calibration window: the mean probability is near its rate
    assert abs(model.predict_proba(CAL[COLS]).mean() - CAL["label"].mean()) < 0.02


def test_the_logistic_regression_is_scaled_and_regularised(fitted):
    lr = fitted["logistic"]
    assert "size" in lr.skewed_ and lr.C_ in (0.05, 1.0)
    assert fitted["logistic"].predict_proba(VAL[COLS]).std() > 0.05


def test_naive_bayes_bins_numerics_and_is_odoo_additive(fitted):
    nb = fitted["naive_bayes"].nb_
    assert set(nb.edges_) == {"size", "visits"} and all(len(e) >= 2 for e in nb.edges_.values())


def test_the_simplest_candidate_within_noise_is_chosen():
    fit_ = lambda n: fit_candidate(n, FIT[COLS], FIT["label"].to_numpy(), CAL[COLS], CAL["label"].to_numpy())
    rungs = {r.name: r for r in ladder(CATS, {"min_child_samples": 20}, 0)}
    models = {"logistic": fit_(rungs["logistic"]), "lgbm": fit_(rungs["lgbm"])}
    name, table, out = choose(models, VAL[COLS], VAL["label"].to_numpy(), CAL[COLS], CAL["label"].to_numpy(),
                              {"logistic": "baseline", "lgbm": "model"})
    assert table["chosen"].sum() == 1 and table.loc[name, "chosen"] and "blend" in out
    # the data are linear in log-odds: the logistic regression is as good, so the simpler one is kept
    assert name == "logistic"


def test_a_drifted_past_makes_a_short_history_or_recency_weighting_win():
    old = _frame(4000, 5, shift=-1.5).assign(as_of=lambda f: f["as_of"] - pd.Timedelta(days=730))
    fit = pd.concat([old, FIT], ignore_index=True)
    rungs = [r for r in ladder(CATS, {}, 0) if r.name == "logistic"]
    cutoff = pd.Timestamp("2026-01-01", tz="UTC")
    choice = choose_on_validation(rungs, fit, CAL, VAL, COLS, cutoff)
    assert choice.history_days == 365 or choice.half_life_days == 180
    assert len(choice.grid) >= 2


def test_recency_weights_halve_every_half_life():
    rows = FIT.head(3).assign(as_of=pd.to_datetime(["2025-12-02", "2025-06-05", "2024-12-31"], utc=True))
    kept, w = training_rows(rows, pd.Timestamp("2026-01-01", tz="UTC"), 365, 180)
    assert len(kept) == 2 and w[0] == pytest.approx(0.5 ** (30 / 180))


def test_a_sharp_base_rate_shift_is_named_and_a_small_one_is_not(fitted):
    assert base_rate_shift(200, 1000, 100, 1000) is not None
    assert base_rate_shift(200, 1000, 190, 1000) is None
    model = pickle.loads(pickle.dumps(fitted["lgbm"]))
    recent = _frame(1000, 9, shift=1.0)
    shift_to_rate(model, recent[COLS], recent["label"].to_numpy())
    assert model.predict_proba(recent[COLS]).mean() == pytest.approx(recent["label"].mean(), abs=1e-6)


class _Logit:
    """A model whose calibrated log-odds are ``x`` (the contract's calibration fields over a raw score)."""

    calib_slope_, calib_intercept_ = 1.0, 0.0

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        return X["x"].to_numpy(dtype=float)


def _recent(seed: int, truth: float, n: int = 4000, mean_delay: float = 20.0, horizon: float = 60.0):
    """Rows whose outcome has log-odds ``x + truth``, each followed up for 0..horizon days, a positive
    decided once its (exponential) delay has passed; the delays of a fully decided window beside them."""
    from models.candidates import recent_outcomes

    rng = np.random.default_rng(seed)
    x = rng.normal(-0.5, 1.0, n)
    y = rng.random(n) < 1 / (1 + np.exp(-(x + truth)))
    delay = np.minimum(rng.exponential(mean_delay, n), horizon - 1e-6)
    follow_up = rng.uniform(0, horizon, n)
    decided_delays = np.minimum(rng.exponential(mean_delay, 3000), horizon - 1e-6)
    return recent_outcomes(pd.DataFrame({"x": x}), follow_up, y & (delay <= follow_up), decided_delays,
                           pd.Series(np.arange(n)))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("truth", [-1.0, 0.0, 0.8])
def test_the_recent_rate_shift_recovers_a_prior_shift_from_partly_decided_outcomes(seed, truth):
    """A model calibrated before the rate moved by ``truth`` log-odds is moved by about that much, from
    outcomes of which only part are decided yet (each row followed up for part of its horizon)."""
    from models.candidates import recent_rate_shift

    recent = _recent(seed, truth)
    assert recent is not None and recent.share.min() >= 0.2
    # naive: decided over all rows understates the rate; the exposure-weighted rate does not
    assert recent.decided.mean() < recent.rate
    assert recent_rate_shift(_Logit(), recent) == pytest.approx(truth, abs=0.15)


def test_the_decided_share_is_the_delays_distribution_and_too_little_is_refused():
    from models.candidates import decided_share, recent_outcomes

    np.testing.assert_allclose(decided_share([1, 2, 3, 4], [0, 1, 2.5, 10]), [0, 0.25, 0.5, 1])
    X = pd.DataFrame({"x": np.zeros(50)})
    # 9 decided positives: too few to say what the rate is
    assert recent_outcomes(X, np.full(50, 30.0), np.arange(50) < 9, np.ones(20), pd.Series(range(50))) is None
    assert recent_outcomes(X, np.full(50, 30.0), np.arange(50) < 10, np.ones(5), pd.Series(range(50))) is None
    kept = recent_outcomes(X, np.full(50, 30.0), np.arange(50) < 10, np.ones(20), pd.Series(range(50)))
    assert kept is not None and kept.rate == pytest.approx(0.2) and kept.effective_n == 50


def test_paired_gain_clusters_the_rows_of_one_record():
    """The standard error of a mean loss difference: the plain one without groups; clustered, it treats a
    lead's (or a deal's) snapshots as one observation, so the same differences spread over 10 records
    instead of 300 carry a larger error; an even difference has none."""
    from models.candidates import _default_unless_beaten, paired_gain

    rng = np.random.default_rng(5)
    per_record = np.repeat(rng.normal(0.0, 0.05, 10), 30)
    diff = 0.003 + per_record - per_record.mean() + rng.normal(0.0, 0.005, 300)
    before = np.full(300, 0.3)
    mean, se = paired_gain(before, before - diff)
    assert mean == pytest.approx(diff.mean()) and se == pytest.approx(diff.std(ddof=1) / np.sqrt(300))
    mean_g, se_g = paired_gain(before, before - diff, np.repeat(np.arange(10), 30))
    assert mean_g == pytest.approx(mean) and se_g > 3 * se
    assert paired_gain(before, before - 0.01, np.arange(300)) == pytest.approx((0.01, 0.0))
    # the calibration choice: a map that wins by about one plain error keeps the default once clustered
    losses = {"default": before, "other": before - diff}
    assert _default_unless_beaten(losses) == ("other" if mean > max(se, 0.001) else "default")
    assert _default_unless_beaten(losses, np.repeat(np.arange(10), 30)) == "default"
