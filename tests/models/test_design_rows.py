"""The logistic rung's design computed in numpy (models.explain.design_rows) is scikit-learn's,
number for number: categories (rare ones pooled, unseen, missing) and numerics (skewed ones
log-scaled, missing ones imputed with an indicator), and the contributions that serve reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.candidates import FAST_DESIGN_ROWS, LogisticClassifier
from models.explain import design_rows


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    source = rng.choice(["web", "referral", "event", "partner", "rare_a", "rare_b"], n,
                        p=[0.4, 0.3, 0.15, 0.13, 0.01, 0.01]).astype(object)
    source[rng.random(n) < 0.05] = None
    budget = rng.lognormal(3, 1.5, n)  # skewed: log-scaled
    budget[rng.random(n) < 0.1] = np.nan  # missing: imputed, with an indicator
    return pd.DataFrame({
        "source": pd.Series(source, dtype="str"),
        "budget_k": budget,
        "meetings_30d": rng.poisson(1.0, n).astype(float),
        "never_known": np.full(n, np.nan),  # all missing in training: not used
    })


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_design_rows_equal_the_fitted_transformer_and_contributions_do_not_change(seed):
    rng = np.random.default_rng(seed)
    X = _frame(rng, 800)
    y = (rng.random(800) < 1 / (1 + np.exp(-(X["meetings_30d"] - 1 + (X["source"] == "referral"))))).astype(int)
    model = LogisticClassifier(categorical_features=["source"]).fit(X.iloc[:600], y[:600], X.iloc[600:], y[600:])
    new = _frame(rng, 50)
    new.loc[new.index[:3], "source"] = "never seen"  # unseen in training
    new.loc[new.index[3], "budget_k"] = np.nan
    fast = design_rows(model.design_, new)
    slow = np.asarray(model.design_.transform(model._frame(new)), dtype=float)
    assert fast is not None and np.array_equal(fast, slow)
    assert len(new) < FAST_DESIGN_ROWS  # contributions take the numpy path here
    big = pd.concat([new] * (FAST_DESIGN_ROWS // len(new) + 1), ignore_index=True)  # and scikit-learn's here
    assert np.array_equal(model.contributions(new), model.contributions(big)[:len(new)])


def test_a_design_part_not_compiled_falls_back_to_the_transformer():
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import MinMaxScaler

    X = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    design = ColumnTransformer([("0", MinMaxScaler(), ["a"])]).fit(X)
    assert design_rows(design, X) is None
