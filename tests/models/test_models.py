"""Model behaviour: SHAP additivity, calibration, baselines, directions, MLflow round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.baselines import NaiveBayesLeadScore
from models.estimators import CalibratedBoostedClassifier
from models.explain import log_odds_contributions, reason_sentence, to_probability
from models.metrics import classification_metrics, expected_calibration_error, top_decile_capture


def _toy(seed: int, n: int = 3000):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "source": rng.choice(["web", "referral", "event"], n).astype(object),
            "visits": rng.poisson(2, n).astype(float),
            "noise": rng.normal(size=n),
        }
    )
    X.loc[rng.random(n) < 0.1, "source"] = np.nan
    logit = -1 + 0.8 * X["visits"].to_numpy() - 0.5 + 1.2 * (X["source"] == "referral").to_numpy()
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


@pytest.mark.parametrize("seed", [0, 1])
def test_shap_contributions_add_up_to_the_model_output(seed):
    X, y = _toy(seed)
    clf = CalibratedBoostedClassifier(["source"], random_state=seed).fit(X[:2000], y[:2000], X[2000:], y[2000:])
    raw = clf.contributions(X[:200])
    lo = log_odds_contributions(raw, clf.feature_names_, clf.calib_slope_, clf.calib_intercept_)
    z = clf.calib_slope_ * clf.raw_score(X[:200]) + clf.calib_intercept_
    np.testing.assert_allclose(lo.base + lo.values.sum(1), z, atol=1e-8)
    pp = to_probability(lo)
    np.testing.assert_allclose(pp.base + pp.values.sum(1), clf.predict_proba(X[:200]), atol=1e-9)
    assert pp.unit == "probability" and lo.unit == "log-odds"


def test_pred_contrib_matches_shap_tree_explainer():
    import shap

    X, y = _toy(2, 1500)
    Xn = X.drop(columns="source")
    clf = CalibratedBoostedClassifier([], random_state=0).fit(Xn[:1000], y[:1000], Xn[1000:], y[1000:])
    ours = clf.contributions(Xn[:50])[:, :-1]
    theirs = shap.TreeExplainer(clf.booster_).shap_values(Xn[:50])
    theirs = theirs[1] if isinstance(theirs, list) else theirs
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_model_learns_the_direction_of_a_signal():
    X, y = _toy(3)
    clf = CalibratedBoostedClassifier(["source"], random_state=0).fit(X[:2000], y[:2000], X[2000:], y[2000:])
    base = X.iloc[:300].copy()
    more = base.assign(visits=base["visits"] + 3)
    assert (clf.predict_proba(more) >= clf.predict_proba(base) - 1e-12).mean() > 0.95
    assert clf.predict_proba(more).mean() > clf.predict_proba(base).mean() + 0.1


def test_unseen_categories_score_as_missing_and_are_flagged():
    X, y = _toy(4)
    clf = CalibratedBoostedClassifier(["source"], random_state=0).fit(X[:2000], y[:2000], X[2000:], y[2000:])
    row = X.iloc[:1].copy()
    unseen = row.assign(source="tiktok")
    missing = row.assign(source=np.nan)
    assert clf.predict_proba(unseen) == pytest.approx(clf.predict_proba(missing))
    assert clf.unseen_categories(unseen)["source"].tolist() == [True]


def test_calibrated_probabilities_are_close_to_the_true_ones():
    X, y = _toy(5, 8000)
    # small trees: 4,000 rows of a smooth signal plus a noise column
    clf = CalibratedBoostedClassifier(["source"], params={"num_leaves": 7}, random_state=0).fit(
        X[:4000], y[:4000], X[4000:6000], y[4000:6000]
    )
    logit = -1.5 + 0.8 * X["visits"].to_numpy() + 1.2 * (X["source"] == "referral").to_numpy()
    true_p = 1 / (1 + np.exp(-logit[6000:]))
    p = clf.predict_proba(X[6000:])
    assert np.mean(np.abs(p - true_p)) < 0.04
    # and the calibration error against outcomes is within sampling noise of the truth's own
    assert expected_calibration_error(y[6000:], p) < expected_calibration_error(y[6000:], true_p) + 0.02


def test_naive_bayes_baseline_learns_field_frequencies_and_tolerates_unseen_values():
    X, y = _toy(6)
    nb = NaiveBayesLeadScore(["source"]).fit(X, y)
    p = nb.predict_proba(pd.DataFrame({"source": ["referral", "web", "tiktok", np.nan]}))
    assert p[0] > p[1]
    assert np.all((p > 0) & (p < 1))


def test_metrics_on_known_values():
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert m["roc_auc"] == 1.0 and m["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert top_decile_capture(np.array([1] + [0] * 9), np.arange(10)[::-1] / 10) == 1.0
    assert classification_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]))["roc_auc"] == 0.0


def test_reason_sentences_read_like_a_person_wrote_them():
    assert reason_sentence("source", "referral", 0.09) == "Source is referral: raises the probability by 9 points"
    assert reason_sentence("web_visit_30d", 4.0, -0.021) == (
        "Web visits in the last 30 days: 4, lowers the probability by 2 points"
    )
    assert "unknown" in reason_sentence("seniority", None, 0.001)


def test_refit_grows_the_chosen_rounds_again_and_keeps_the_calibration():
    """On the fit rows themselves, refit gives the same trees (the calibration window only
    stopped them); on more rows, new trees with the same number of rounds and Platt scaling."""
    X, y = _toy(3)
    clf = CalibratedBoostedClassifier(["source"], random_state=0).fit(X[:2000], y[:2000], X[2000:], y[2000:])
    rounds, slope, intercept = clf.n_rounds_, clf.calib_slope_, clf.calib_intercept_
    before = clf.predict_proba(X)
    assert 0 < rounds < clf.max_rounds
    clf.refit(X[:2000], y[:2000])
    np.testing.assert_allclose(clf.predict_proba(X), before, rtol=1e-9)
    clf.refit(X, y)
    assert (clf.n_rounds_, clf.calib_slope_, clf.calib_intercept_) == (rounds, slope, intercept)
    assert not np.allclose(clf.predict_proba(X), before)


def test_intercept_calibration_shifts_the_log_odds_only():
    """``calibration="intercept"``: the slope stays 1 and the shift makes the mean predicted
    probability on the calibration window equal its observed rate, even when the window's
    rate differs from the fit rows' (a recent window after a drift)."""
    X, y = _toy(4, 6000)
    y_cal = y[3000:].copy()
    y_cal[np.flatnonzero(y_cal == 0)[:300]] = 1  # the window converts more than the fit rows did
    clf = CalibratedBoostedClassifier(["source"], random_state=0, calibration="intercept").fit(
        X[:3000], y[:3000], X[3000:], y_cal
    )
    assert clf.calib_slope_ == 1.0 and clf.calib_intercept_ > 0
    assert clf.predict_proba(X[3000:]).mean() == pytest.approx(y_cal.mean(), abs=1e-6)
    raw = clf.raw_score(X[3000:])
    np.testing.assert_allclose(clf.predict_proba(X[3000:]), 1 / (1 + np.exp(-(raw + clf.calib_intercept_))), rtol=1e-9)
    with pytest.raises(ValueError, match="calibration"):
        CalibratedBoostedClassifier(calibration="isotonic")


def test_intercept_shift_finds_its_root_for_extreme_scores():
    from models.estimators import _intercept_shift

    for raw, y in ((np.full(50, 60.0), np.r_[np.ones(25), np.zeros(25)]),
                   (np.linspace(-80, -40, 50), np.r_[np.ones(5), np.zeros(45)])):
        b = _intercept_shift(raw, y)
        assert (1 / (1 + np.exp(-(raw + b)))).mean() == pytest.approx(y.mean(), abs=1e-9)


def test_reasons_use_plain_labels_not_column_names():
    from models.explain import feature_label

    assert feature_label("meeting_30d") == "Meetings in the last 30 days"
    assert feature_label("days_since_quote_sent_outbound") == "Days since the last quote sent"
    assert feature_label("call_outbound_total") == "Calls made so far"
    assert reason_sentence("close_date_pushes", 2.0, -0.05) == "Close date pushes: 2, lowers the probability by 5 points"
    for name in ("meeting_30d", "email_inbound_per_week", "days_in_proposal", "first_deal_amount", "stage_win_rate"):
        assert "_" not in feature_label(name), name
