"""The high-value account scorer: the one object MLflow logs as ``high_value`` and serving loads.

It scores prospects and customers alike (look-alikes): P(high value) from the calibrated
classifier the candidate ladder chose (naive Bayes, logistic regression or LightGBM, see
``models.candidates``), expected customer value from a LightGBM regressor on the same account
features, and the top reasons (SHAP, in probability points) as sentences. It carries the
mined traits and the global SHAP importance of its training data, so ``GET /v1/traits``
answers from the registered model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from features.contract import Export
from features.customers import AccountFeatureSpec, account_features
from models.base import ClassifierScorer
from models.estimators import train_params
from models.explain import to_probability, top_reasons
from models.tasks import Task

__all__ = ["AccountScorer", "ValueRegressor"]

#: Small trees: a few thousand customers at most.
REGRESSOR_PARAMS = {
    "objective": "regression", "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 20,
    "feature_fraction": 0.8, "lambda_l2": 1.0, "verbosity": -1, "num_threads": 2,
}


class ValueRegressor:
    """LightGBM regression of customer value on an account feature frame.

    It encodes the frame itself (categories seen in training as their codes, unseen or missing as
    missing), so it does not depend on which candidate of the ladder scores P(high value). A
    regressor pickled before that (no ``feature_names_``) reads the LightGBM classifier's matrix:
    :meth:`predict` also takes that float matrix."""

    def __init__(self, categorical_features: Sequence[str] = (), n_rounds: int = 200, random_state: int = 0):
        self.categorical_features = categorical_features
        self.n_rounds = n_rounds
        self.random_state = random_state

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(X), len(self.feature_names_)), dtype=float)
        for j, c in enumerate(self.feature_names_):
            if c in self.codes_:
                codes = self.codes_[c]
                out[:, j] = [codes.get(v, np.nan) if isinstance(v, str) else np.nan for v in X[c].to_numpy(object)]
            else:
                out[:, j] = X[c].to_numpy(dtype=float, na_value=np.nan)
        return out

    def fit(self, X: pd.DataFrame, value: np.ndarray) -> ValueRegressor:
        self.feature_names_ = list(X.columns)
        self.codes_ = {c: {v: i for i, v in enumerate(sorted(X[c].dropna().astype("str").unique()))}
                       for c in self.categorical_features if c in X}
        cats = [j for j, c in enumerate(self.feature_names_) if c in self.codes_]
        data = lgb.Dataset(self._matrix(X), label=np.asarray(value, dtype=float), categorical_feature=cats or "auto",
                           free_raw_data=False)
        self.booster_ = lgb.train(train_params({**REGRESSOR_PARAMS, "seed": self.random_state}), data,
                                  num_boost_round=self.n_rounds)
        return self

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Expected value of each row of a feature frame (or of an older regressor's float matrix)."""
        matrix = self._matrix(X) if isinstance(X, pd.DataFrame) else X
        return np.maximum(self.booster_.predict(matrix), 0.0)


@dataclass
class AccountScorer(ClassifierScorer):
    spec: AccountFeatureSpec
    #: The candidate of the ladder validation chose (``models.candidates``; LightGBM before the ladder).
    classifier: Any
    regressor: ValueRegressor
    threshold: float
    trained_until: pd.Timestamp
    traits: list[dict] = field(default_factory=list)
    importance: list[dict] = field(default_factory=list)
    task: str = Task.HIGH_VALUE.value
    metadata: dict[str, object] = field(default_factory=dict)

    def features(self, export: Export, account_ids: list[str], as_of: pd.Timestamp) -> pd.DataFrame:
        """Account features as of ``as_of``. No cutoff guard (unlike leads and deals): serving scores
        look-alikes of prospects at any time the client names, and its tests rely on it."""
        return account_features(export, account_ids, as_of, self.spec)

    def expected_value(self, X: pd.DataFrame) -> np.ndarray:
        if getattr(self.regressor, "feature_names_", None) is None:  # pickled before the regressor encoded frames
            return self.regressor.predict(self.classifier._matrix(X))
        return self.regressor.predict(X)

    def score_frame(self, X: pd.DataFrame, n_reasons: int = 5) -> pd.DataFrame:
        """P(high value), expected customer value and the top reasons for a feature frame."""
        contrib = to_probability(self.explain(X))
        p = contrib.base + contrib.values.sum(axis=1)
        out = pd.DataFrame(
            {
                "account_id": X.index.to_numpy(),
                "probability": p,
                "expected_value": self.expected_value(X),
                "is_customer": X["is_customer"].to_numpy(dtype=float) > 0,
                "base_probability": contrib.base,
            }
        )
        out["reasons"] = top_reasons(contrib.values, X, n_reasons) if n_reasons else [[] for _ in range(len(X))]
        return out

    def score(self, export: Export, account_ids: list[str], as_of: pd.Timestamp, n_reasons: int = 5) -> pd.DataFrame:
        X = self.features(export, account_ids, as_of)
        return self.score_frame(X, n_reasons)
