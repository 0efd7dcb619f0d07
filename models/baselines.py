"""Simple baselines every model is measured against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.naive_bayes import CategoricalNB
from sklearn.preprocessing import OrdinalEncoder

_MISSING = "(missing)"


class NaiveBayesLeadScore:
    """A naive-Bayes lead score over the lead's fields, as Odoo CRM computes it.

    Odoo's predictive lead scoring multiplies, field by field, the smoothed frequency of the
    lead's value among won and among lost leads. This is that model: scikit-learn's
    ``CategoricalNB`` (Laplace smoothing ``alpha``) over the given columns, with missing as
    its own value and values unseen in training get only the smoothing prior. ``numeric``
    columns among them are binned into ``bins`` quantile bins of the training rows (Odoo bins
    its numeric fields too; a naive Bayes cannot read a raw number).

    Its log-odds are the log prior odds plus one log-likelihood ratio per field:
    :meth:`contributions` gives them (additive, base last) and :meth:`raw_score` their sum.
    """

    def __init__(self, columns: Sequence[str], alpha: float = 1.0, numeric: Sequence[str] = (), bins: int = 5):
        self.columns = columns
        self.alpha = alpha
        self.numeric = numeric
        self.bins = bins

    def _values(self, X: pd.DataFrame) -> np.ndarray:
        cols = list(self.columns)
        out = {}
        for c in cols:
            if c in self.edges_:
                x = X[c].to_numpy(dtype=float, na_value=np.nan)
                codes = np.searchsorted(self.edges_[c], x, side="right").astype(str)
                out[c] = np.where(np.isnan(x), _MISSING, codes).astype(object)
            else:
                out[c] = X[c].astype("str").where(X[c].notna(), _MISSING).to_numpy(dtype=object)
        return pd.DataFrame(out, index=X.index)[cols].to_numpy(dtype=object)

    def fit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> NaiveBayesLeadScore:
        self.edges_ = {}
        for c in self.numeric:
            x = X[c].to_numpy(dtype=float, na_value=np.nan)
            x = x[~np.isnan(x)]
            self.edges_[c] = np.unique(np.quantile(x, np.linspace(0, 1, self.bins + 1)[1:-1])) if len(x) else \
                np.array([])
        values = self._values(X)
        # unseen values map to the extra code len(categories); CategoricalNB learns it with count 0
        self.encoder_ = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1).fit(values)
        n_cats = [len(c) + 1 for c in self.encoder_.categories_]
        self.model_ = CategoricalNB(alpha=self.alpha, min_categories=n_cats).fit(
            self._shift(self.encoder_.transform(values)), np.asarray(y, dtype=int), sample_weight=sample_weight
        )
        return self

    def _shift(self, codes: np.ndarray) -> np.ndarray:
        codes = codes.copy()
        for j, cats in enumerate(self.encoder_.categories_):
            codes[codes[:, j] < 0, j] = len(cats)
        return codes.astype(int)

    def _codes(self, X: pd.DataFrame) -> np.ndarray:
        return self._shift(self.encoder_.transform(self._values(X)))

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """Per column, the log-likelihood ratio of the row's value (won against lost), then the log prior odds."""
        codes = self._codes(X)
        m = self.model_
        out = np.empty((len(X), codes.shape[1] + 1))
        for j, logp in enumerate(m.feature_log_prob_):
            out[:, j] = logp[1, codes[:, j]] - logp[0, codes[:, j]]
        out[:, -1] = m.class_log_prior_[1] - m.class_log_prior_[0]
        return out

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        return self.contributions(X).sum(axis=1)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(self._codes(X))[:, 1]
