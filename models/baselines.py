"""Simple baselines every model is measured against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.naive_bayes import CategoricalNB
from sklearn.preprocessing import OrdinalEncoder

_MISSING = "(missing)"


class NaiveBayesLeadScore:
    """A naive-Bayes lead score over the lead's categorical fields, as Odoo CRM computes it.

    Odoo's predictive lead scoring multiplies, field by field, the smoothed frequency of the
    lead's value among won and among lost leads. This is that model: scikit-learn's
    ``CategoricalNB`` (Laplace smoothing ``alpha``) over the given columns, with missing as
    its own value and values unseen in training get only the smoothing prior.
    """

    def __init__(self, columns: Sequence[str], alpha: float = 1.0):
        self.columns = columns
        self.alpha = alpha

    def _encode(self, X: pd.DataFrame) -> np.ndarray:
        values = X[list(self.columns)].astype("str").where(X[list(self.columns)].notna(), _MISSING)
        return self.encoder_.transform(values.to_numpy(dtype=object))

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> NaiveBayesLeadScore:
        cols = list(self.columns)
        values = X[cols].astype("str").where(X[cols].notna(), _MISSING).to_numpy(dtype=object)
        # unseen values map to the extra code len(categories); CategoricalNB learns it with count 0
        self.encoder_ = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1).fit(values)
        n_cats = [len(c) + 1 for c in self.encoder_.categories_]
        self.model_ = CategoricalNB(alpha=self.alpha, min_categories=n_cats).fit(
            self._shift(self.encoder_.transform(values)), np.asarray(y, dtype=int)
        )
        return self

    def _shift(self, codes: np.ndarray) -> np.ndarray:
        codes = codes.copy()
        for j, cats in enumerate(self.encoder_.categories_):
            codes[codes[:, j] < 0, j] = len(cats)
        return codes.astype(int)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(self._shift(self._encode(X)))[:, 1]
