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


def test_the_same_design_whatever_the_order_of_the_frame_columns_and_with_nullable_numbers():
    """The design remembers where its columns were in the last frame; another layout is looked up again."""
    rng = np.random.default_rng(3)
    X = _frame(rng, 400)
    y = (rng.random(400) < 0.3).astype(int)
    model = LogisticClassifier(categorical_features=["source"]).fit(X, y)
    new = _frame(rng, 20)
    slow = np.asarray(model.design_.transform(model._frame(new)), dtype=float)
    first = design_rows(model.design_, new)
    reordered = design_rows(model.design_, new[list(reversed(new.columns))].assign(extra="x"))
    nullable = new.astype({"meetings_30d": "Float64"})  # an extension dtype: pd.NA read as missing
    nullable.loc[nullable.index[0], "meetings_30d"] = pd.NA
    expected = slow.copy()
    expected[0] = np.asarray(model.design_.transform(model._frame(nullable.iloc[[0]].astype(
        {"meetings_30d": float}))), dtype=float)[0]
    assert np.array_equal(first, slow) and np.array_equal(reordered, slow)
    assert np.array_equal(design_rows(model.design_, nullable), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_reasons_of_a_few_rows_read_only_their_columns_and_equal_the_whole_frame_path(seed):
    from models.explain import top_reasons

    rng = np.random.default_rng(seed)
    n, width = 60, 24
    X = pd.DataFrame({f"f{j}": rng.normal(size=n) for j in range(width)})
    X["f3"] = pd.Series(rng.choice(["a", "b", None], n), dtype="str")  # text with missing values
    X.loc[X.index[::7], "f5"] = np.nan
    points = rng.normal(size=(n, width))
    whole = top_reasons(points, X, 5)  # 60 rows: their top columns cover the frame, the whole-frame path
    assert len(np.unique(np.argsort(-np.abs(points), axis=1)[:, :5])) * 4 >= width
    for i in range(n):
        assert top_reasons(points[i:i + 1], X.iloc[[i]], 5) == [whole[i]]  # one row: 5 columns read
