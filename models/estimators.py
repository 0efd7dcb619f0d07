"""The boosted classifier every task uses: LightGBM with Platt calibration on a later window."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from features.engine import active_client
from models.dask_fit import grows_on_cluster

#: Small, well-regularised trees: snapshot rows repeat the same leads, so leaves need many
#: rows (measured on the sample against the truth; `funnelcast tune` searches further).
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 7,
    "min_child_samples": 200,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "cat_smooth": 10.0,
    "verbosity": -1,
    "num_threads": 2,
}


#: Rows from which prediction uses every core.
_PARALLEL_ROWS = 200


def _intercept_shift(raw: np.ndarray, y: np.ndarray) -> float:
    """The shift ``b`` of the log-odds with which the mean predicted probability equals the
    observed rate (the score equation of a logistic regression on an offset, intercept only)."""
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    target = float(np.log(rate / (1 - rate)))
    # every row below (above) the target log-odds at lo (hi): the mean is below (above) the rate
    lo, hi = target - float(raw.max()) - 1.0, target - float(raw.min()) + 1.0
    return float(brentq(lambda b: float(expit(raw + b).mean()) - rate, lo, hi))


class CalibratedBoostedClassifier:
    """LightGBM on a feature frame, calibrated by Platt scaling of its log-odds.

    ``fit(X, y, X_cal, y_cal)``: the trees are grown on ``X`` with early stopping on the
    calibration window ``X_cal`` (a later period, as in a time split), then a logistic
    regression on the raw log-odds of ``X_cal`` maps them to calibrated probabilities.
    Platt scaling is linear in log-odds, so TreeSHAP contributions stay additive after it.
    ``calibration="intercept"`` shifts the log-odds only (no slope): for models whose
    calibration window holds a different mix of rows than the ones they score (the deal
    hazards, see :mod:`training.deals`), where a fitted slope does not carry.
    Categorical columns get the categories seen in ``X``; unseen values score as missing.
    """

    def __init__(
        self,
        categorical_features: Sequence[str] = (),
        params: dict[str, Any] | None = None,
        max_rounds: int = 1000,
        early_stopping_rounds: int = 50,
        random_state: int = 0,
        calibration: str = "platt",
    ):
        if calibration not in ("platt", "intercept"):
            raise ValueError(f"calibration must be 'platt' or 'intercept', not {calibration!r}")
        self.categorical_features = categorical_features
        self.params = params
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.calibration = calibration

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        X = X[self.feature_names_]
        cats = {}
        for c, known in self.categories_.items():
            values = X[c].astype("str").where(X[c].notna())
            cats[c] = pd.Categorical(values.where(values.isin(known)), categories=known)
        return X.assign(**cats) if cats else X

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        X_cal: pd.DataFrame | None = None,
        y_cal: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> CalibratedBoostedClassifier:
        """``sample_weight``: weights of the rows of ``X`` (e.g. a recency weighting); calibration is unweighted."""
        self.feature_names_ = list(X.columns)
        self.categories_ = {
            c: sorted(X[c].dropna().astype("str").unique().tolist()) for c in self.categorical_features if c in X
        }
        params = {**DEFAULT_PARAMS, **(self.params or {}), "seed": self.random_state}
        train = lgb.Dataset(self._frame(X), label=np.asarray(y), weight=sample_weight,
                            categorical_feature=list(self.categories_) or "auto")
        callbacks = []
        valid_sets = []
        if X_cal is not None and y_cal is not None and len(X_cal):
            valid = lgb.Dataset(self._frame(X_cal), label=np.asarray(y_cal), reference=train)
            valid_sets = [valid]
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        if (client := active_client()) is not None and grows_on_cluster(params):  # a Dask session: on its workers
            self.booster_, self.n_rounds_ = self._grow_on_cluster(client, params, X, y, sample_weight, self.max_rounds,
                                                                  X_cal if valid_sets else None, y_cal)
        else:
            self.booster_ = lgb.train(
                params, train, num_boost_round=self.max_rounds, valid_sets=valid_sets, callbacks=callbacks
            )
            self.n_rounds_ = int(self.booster_.best_iteration or self.booster_.current_iteration())
        self.calib_slope_, self.calib_intercept_ = 1.0, 0.0
        if valid_sets and self.calibration == "intercept":
            self.calib_intercept_ = _intercept_shift(self.raw_score(X_cal), np.asarray(y_cal, dtype=float))
        elif valid_sets:
            raw = self.raw_score(X_cal).reshape(-1, 1)
            platt = LogisticRegression(C=1e4).fit(raw, np.asarray(y_cal, dtype=int))
            self.calib_slope_ = float(platt.coef_[0, 0])
            self.calib_intercept_ = float(platt.intercept_[0])
        return self

    def refit(self, X: pd.DataFrame, y: np.ndarray) -> CalibratedBoostedClassifier:
        """Grow the trees again on ``X`` (which may include the calibration window's rows) for the
        number of rounds early stopping chose, keeping the categories and the Platt scaling.

        For when the calibration window is recent data the final model should not do without."""
        params = {**DEFAULT_PARAMS, **(self.params or {}), "seed": self.random_state}
        if (client := active_client()) is not None and grows_on_cluster(params):
            self.booster_, self.n_rounds_ = self._grow_on_cluster(client, params, X, y, None, max(self.n_rounds_, 1))
            return self
        train = lgb.Dataset(self._frame(X), label=np.asarray(y), categorical_feature=list(self.categories_) or "auto")
        self.booster_ = lgb.train(params, train, num_boost_round=max(self.n_rounds_, 1))
        self.n_rounds_ = int(self.booster_.current_iteration())
        return self

    def _grow_on_cluster(self, client: Any, params: dict[str, Any], X: pd.DataFrame, y: np.ndarray,
                         weight: np.ndarray | None, rounds: int, X_cal: pd.DataFrame | None = None,
                         y_cal: np.ndarray | None = None) -> tuple[lgb.Booster, int]:
        """The trees grown by ``DaskLGBMClassifier`` (:mod:`models.dask_fit`) on the matrix :meth:`_matrix` makes
        (categories as the codes a local fit gives them), early stopping replayed on ``X_cal``."""
        from models.dask_fit import grow_on_cluster

        self._codes = None  # the category codes of this fit's categories
        categorical = [self.feature_names_.index(c) for c in self.categories_]
        return grow_on_cluster(client, params, self._matrix(X), np.asarray(y), weight, categorical, rounds,
                               self._matrix(X_cal) if X_cal is not None else None, y_cal, self.early_stopping_rounds)

    def _category_codes(self) -> dict[str, dict[str, int]]:
        # LightGBM codes a pandas categorical by its position in the categories given at fit;
        # a dict per column looks a few values up in microseconds (pd.Index.get_indexer costs
        # ~100 us a call, which adds up for one lead)
        if getattr(self, "_codes", None) is None:
            self._codes = {c: {v: i for i, v in enumerate(cats)} for c, cats in self.categories_.items()}
        return self._codes

    @staticmethod
    def _lookup(codes: dict[str, int], values: np.ndarray) -> np.ndarray:
        """Codes of ``values`` (-1: missing or not seen in training)."""
        return np.fromiter((codes.get(v, -1) if isinstance(v, str) else -1 for v in values), dtype=np.int64, count=len(values))

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        """The feature frame as LightGBM's float matrix: categories as their codes, unseen as missing.

        Much faster than handing LightGBM a DataFrame (one lead scores in well under a millisecond).
        """
        codes = self._category_codes()
        if len(X) < _PARALLEL_ROWS and list(X.columns) == self.feature_names_:
            small = self._small_matrix(X, codes)
            if small is not None:
                return small
        out = np.empty((len(X), len(self.feature_names_)), dtype=float)
        for j, c in enumerate(self.feature_names_):
            if c in codes:
                idx = self._lookup(codes[c], X[c].to_numpy(dtype=object)).astype(float)
                idx[idx < 0] = np.nan
                out[:, j] = idx
            else:
                out[:, j] = X[c].to_numpy(dtype=float, na_value=np.nan)
        return out

    def _small_matrix(self, X: pd.DataFrame, codes: dict[str, dict[str, int]]) -> np.ndarray | None:
        """:meth:`_matrix` for a few rows whose numeric columns are all float64: one
        ``to_numpy`` of the frame instead of one column access per feature (~20 us each)."""
        dtypes = X.dtypes.tolist()
        numeric = [j for j, c in enumerate(self.feature_names_) if c not in codes]
        if any(dtypes[j] != np.float64 for j in numeric):
            return None
        values = X.to_numpy(dtype=object)
        out = np.empty((len(X), len(self.feature_names_)), dtype=float)
        out[:, numeric] = values[:, numeric].astype(float)
        for j, c in enumerate(self.feature_names_):
            if c in codes:
                idx = self._lookup(codes[c], values[:, j]).astype(float)
                idx[idx < 0] = np.nan
                out[:, j] = idx
        return out

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_codes"}

    def _predict(self, X: pd.DataFrame, **kind: bool) -> np.ndarray:
        # small requests run in one thread: OpenMP threads spinning in several concurrent
        # requests (the API's thread pool) slow everything down; large batches use all cores
        threads = 1 if len(X) < _PARALLEL_ROWS else 0
        return self.booster_.predict(self._matrix(X), num_iteration=self.n_rounds_, num_threads=threads, **kind)

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds of the trees."""
        return self._predict(X, raw_score=True)

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the positive class, one per row."""
        z = self.calib_slope_ * self.raw_score(X) + self.calib_intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """TreeSHAP values in raw log-odds, one column per feature plus the base value last."""
        return self._predict(X, pred_contrib=True)

    def unseen_categories(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """Per categorical column, a boolean mask of values not seen in training."""
        out = {}
        for c, codes in self._category_codes().items():
            values = X[c].to_numpy(dtype=object)
            out[c] = (self._lookup(codes, values) < 0) & pd.notna(values)
        return out
