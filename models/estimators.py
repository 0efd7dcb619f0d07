"""The boosted classifier every task uses: LightGBM calibrated on a later window, and the calibration maps
every candidate shares (:class:`LogOddsCalibration`).

**Calibration maps** (``CALIBRATION_METHODS``), from a model's raw log-odds ``r`` to calibrated log-odds:

``platt``
    Platt scaling, ``a + b r``: a logistic regression on the log-odds. Bends nothing: when the
    model's log-odds are off by a curve (too confident in the middle, say), a line cannot follow.
``spline``
    Platt scaling on a monotone piecewise-linear function of the log-odds: ``a + g(r)``, ``g`` linear
    between knots at quantiles of the calibration window's log-odds (``SPLINE_KNOTS``, fewer on a small
    window: each segment holds at least ``SPLINE_CLASS_ROWS`` rows of the rarer class), with a slope
    of at least zero in each segment (monotone: the ranking and the AUC are kept, unlike isotonic
    regression, whose flat steps tie rows) and a ridge on the changes of slope (``SPLINE_PENALTY``,
    pulling it towards Platt's line). Fitted by maximum likelihood with L-BFGS-B (scipy): scikit-learn's
    logistic regression cannot hold the slopes non-negative.

**Reasons stay additive.** Contributions are in raw log-odds (``base + sum == r``). Under Platt every
one is multiplied by ``b``. Under a spline, a row's contributions are multiplied by the *secant slope*
of ``g`` between the base value and the row's raw score, ``s = (g(r) - g(base)) / (r - base)`` (the
segment's slope when ``r == base``), and its base becomes ``a + g(base)``: they sum exactly to the
calibrated log-odds ``a + g(r)``, keep their signs and their order within the row
(:func:`calibrated_contributions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize
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

#: LightGBM threads of every training fit in this process, over each model's own ``num_threads``
#: (``None``: the models' own, 2 or 1; ``0``: LightGBM's default, every core). A property of the
#: machine, not of a model: set at the edge from ``FUNNELCAST_TRAIN_THREADS`` (:func:`set_train_threads`),
#: never logged with a model's recipe.
_TRAIN_THREADS: int | None = None


def set_train_threads(threads: int | None) -> None:
    """Set (or, with ``None``, clear) the LightGBM threads every training fit of this process uses."""
    global _TRAIN_THREADS
    if threads is not None and threads < 0:
        raise ValueError(f"train threads must be 0 (every core) or more, not {threads}")
    _TRAIN_THREADS = threads


def train_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the process's training threads (:func:`set_train_threads`) when set."""
    return params if _TRAIN_THREADS is None else {**params, "num_threads": _TRAIN_THREADS}


#: The maps from raw to calibrated log-odds a model may be calibrated with (see the module docstring).
CALIBRATION_METHODS = ("platt", "spline")
#: Most interior knots of the spline map (at equal-frequency quantiles of the calibration log-odds).
SPLINE_KNOTS = 4
#: Fewest rows of the rarer class per segment of the spline map (fewer knots on a small window; none: Platt).
SPLINE_CLASS_ROWS = 25
#: Ridge on the changes of slope between the spline's segments, in rows' log loss (towards Platt's line).
SPLINE_PENALTY = 2.0


def platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of a logistic regression of ``y`` on the log-odds ``raw`` (Platt scaling)."""
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        return 1.0, 0.0
    fit = LogisticRegression(C=1e4).fit(np.asarray(raw, dtype=float).reshape(-1, 1), y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def ramps(raw: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The basis of a piecewise-linear map with ``knots``: column ``j`` is the part of ``raw`` in segment
    ``j``, measured from the first knot (without knots, ``raw`` itself); the map is ``ramps @ slopes``."""
    raw = np.asarray(raw, dtype=float)
    if not len(knots):
        return raw[:, None]
    cols = [np.minimum(raw, knots[0]) - knots[0]]
    cols += [np.clip(raw, lo, hi) - lo for lo, hi in zip(knots[:-1], knots[1:])]
    cols.append(np.maximum(raw - knots[-1], 0.0))
    return np.column_stack(cols)


def spline_knots(raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Interior knots at equal-frequency quantiles of ``raw``: as many as let every segment hold
    :data:`SPLINE_CLASS_ROWS` rows of the rarer class, at most :data:`SPLINE_KNOTS` (empty: too few)."""
    y = np.asarray(y, dtype=float)
    rarer = int(min(y.sum(), len(y) - y.sum()))
    m = min(SPLINE_KNOTS, rarer // SPLINE_CLASS_ROWS - 1)
    if m < 1:
        return np.empty(0)
    knots = np.unique(np.quantile(np.asarray(raw, dtype=float), np.linspace(0, 1, m + 2)[1:-1]))
    return knots


def fit_log_odds_map(raw: np.ndarray, y: np.ndarray, method: str = "platt",
                     ) -> tuple[float, np.ndarray, np.ndarray]:
    """The calibration map ``method`` of the log-odds ``raw`` to the outcomes ``y``: ``(intercept, knots,
    slopes)``, the calibrated log-odds being ``intercept + ramps(raw, knots) @ slopes``. A spline with
    too few rows for a knot is Platt scaling."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, not {method!r}")
    raw, y = np.asarray(raw, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = platt(raw, y)
    knots = spline_knots(raw, y) if method == "spline" and len(np.unique(y)) == 2 else np.empty(0)
    if not len(knots):
        return intercept, np.empty(0), np.array([slope])
    B = ramps(raw, knots)
    k = B.shape[1]
    D = np.diff(np.eye(k), axis=0)  # the changes of slope between neighbouring segments
    P = SPLINE_PENALTY * D.T @ D

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] + B @ theta[1:]
        r = expit(z) - y
        s = theta[1:]
        value = float(np.logaddexp(0.0, z).sum() - y @ z + s @ P @ s)
        return value, np.concatenate([[r.sum()], B.T @ r + 2 * P @ s])

    # Platt's line through the first knot is the start (and the spline's special case)
    start = np.concatenate([[intercept + slope * knots[0]], np.full(k, max(slope, 1e-3))])
    res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(None, None)] + [(0.0, None)] * k)
    return float(res.x[0]), knots, np.asarray(res.x[1:], dtype=float)


def _intercept_shift(raw: np.ndarray, y: np.ndarray) -> float:
    """The shift ``b`` of the log-odds with which the mean predicted probability equals the
    observed rate (the score equation of a logistic regression on an offset, intercept only)."""
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    target = float(np.log(rate / (1 - rate)))
    # every row below (above) the target log-odds at lo (hi): the mean is below (above) the rate
    lo, hi = target - float(raw.max()) - 1.0, target - float(raw.min()) + 1.0
    return float(brentq(lambda b: float(expit(raw + b).mean()) - rate, lo, hi))


class LogOddsCalibration:
    """The calibration every candidate shares: ``calibrated_log_odds(raw) = calib_intercept_ +
    ramps(raw, calib_knots_) @ calib_slopes_`` (Platt scaling: no knots, ``calib_slope_ * raw +
    calib_intercept_``). ``calib_intercept_`` is the level a rate shift moves. The class attributes are
    the defaults of models pickled before the spline map (they load as Platt)."""

    calib_slope_: float = 1.0
    calib_intercept_: float = 0.0
    calib_knots_: np.ndarray = np.empty(0)
    calib_slopes_: np.ndarray | None = None
    #: The map used (``CALIBRATION_METHODS``; ``intercept``: a shift of the log-odds only).
    calibration_method_: str = "platt"
    #: The correction of the calibrated log-odds of leads older than the model's range
    #: (:mod:`models.lifetime`: an odds ratio, added after the map); None: none (every model but the lead
    #: task's, and those pickled before it).
    lifetime_: Any = None

    def set_calibration(self, raw: np.ndarray, y: np.ndarray, method: str = "platt") -> None:
        """Fit the calibration map ``method`` of the raw log-odds ``raw`` to the outcomes ``y``."""
        intercept, knots, slopes = fit_log_odds_map(raw, y, method)
        self.calib_intercept_, self.calib_knots_, self.calib_slopes_ = intercept, knots, slopes
        # Platt: its slope; a spline: the slope at the median raw score (the exact map is calibrated_log_odds)
        at = np.searchsorted(knots, float(np.median(raw))) if len(knots) else 0
        self.calib_slope_ = float(slopes[at])
        self.calibration_method_ = method if len(knots) or method != "spline" else "platt"

    def _map(self, raw: np.ndarray) -> np.ndarray:
        """The calibration map without its intercept."""
        if not len(self.calib_knots_) or self.calib_slopes_ is None:
            return self.calib_slope_ * np.asarray(raw, dtype=float)
        return ramps(raw, self.calib_knots_) @ self.calib_slopes_

    def calibrated_log_odds(self, raw: np.ndarray) -> np.ndarray:
        """The calibrated log-odds of the raw log-odds ``raw``."""
        return self.calib_intercept_ + self._map(raw)


def calibrated_log_odds(model: Any, raw: np.ndarray) -> np.ndarray:
    """``model``'s calibrated log-odds of the raw log-odds ``raw`` (a model with only ``calib_slope_`` and
    ``calib_intercept_``: Platt's line)."""
    if hasattr(model, "calibrated_log_odds"):
        return model.calibrated_log_odds(raw)
    return model.calib_slope_ * np.asarray(raw, dtype=float) + model.calib_intercept_


def lifetime_offset(model: Any, X: pd.DataFrame) -> np.ndarray | float:
    """The correction of ``model``'s calibrated log-odds by the rows' age (:mod:`models.lifetime`), 0 without one."""
    limit = getattr(model, "lifetime_", None)
    return 0.0 if limit is None else limit.offset(X)


def calibrated_score(model: Any, X: pd.DataFrame) -> np.ndarray:
    """``model``'s calibrated log-odds of the rows ``X``: its map of the raw score, and the age correction."""
    return calibrated_log_odds(model, model.raw_score(X)) + lifetime_offset(model, X)


def calibrated_contributions(model: Any, contrib: np.ndarray, X: pd.DataFrame | None = None) -> np.ndarray:
    """Raw log-odds contributions (features..., base last; ``base + sum == raw``) in the calibrated
    log-odds of ``model``: each row's contributions times the secant slope of its map between the base
    and the row's raw score, the base mapped (see the module docstring); they sum to
    ``model.calibrated_log_odds(raw)``. Under Platt, ``calib_slope_ * contributions``. With the rows ``X``, the
    age correction (:func:`lifetime_offset`) is added to the age feature's column (they sum to
    :func:`calibrated_score`)."""
    out = _calibrated_contributions(model, np.asarray(contrib, dtype=float))
    limit = getattr(model, "lifetime_", None)
    if X is not None and limit is not None:
        out[:, model.feature_names_.index(limit.column)] += limit.offset(X)
    return out


def _calibrated_contributions(model: Any, contrib: np.ndarray) -> np.ndarray:
    out = np.empty_like(contrib)
    if not len(getattr(model, "calib_knots_", ())) or getattr(model, "calib_slopes_", None) is None:
        out[:, :-1] = contrib[:, :-1] * model.calib_slope_
        out[:, -1] = contrib[:, -1] * model.calib_slope_ + model.calib_intercept_
        return out
    base, raw = contrib[:, -1], contrib.sum(axis=1)
    g_base, g_raw = model._map(base), model._map(raw)
    step = raw - base
    local = model.calib_slopes_[np.searchsorted(model.calib_knots_, base)]  # the segment's slope at the base
    with np.errstate(divide="ignore", invalid="ignore"):
        secant = np.where(np.abs(step) > 1e-9, (g_raw - g_base) / step, local)
    out[:, :-1] = contrib[:, :-1] * secant[:, None]
    out[:, -1] = model.calib_intercept_ + g_base
    return out


class CalibratedBoostedClassifier(LogOddsCalibration):
    """LightGBM on a feature frame, calibrated on a later window by a map of its log-odds.

    ``fit(X, y, X_cal, y_cal)``: the trees are grown on ``X`` with early stopping on the
    calibration window ``X_cal`` (a later period, as in a time split), then the calibration map
    ``calibration`` (Platt scaling by default, or the monotone spline; see the module docstring) of
    the raw log-odds of ``X_cal`` gives calibrated probabilities; TreeSHAP contributions stay
    additive after either (:func:`calibrated_contributions`).
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
        if calibration not in (*CALIBRATION_METHODS, "intercept"):
            raise ValueError(f"calibration must be one of {(*CALIBRATION_METHODS, 'intercept')}, not {calibration!r}")
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
        params = train_params({**DEFAULT_PARAMS, **(self.params or {}), "seed": self.random_state})
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
        self.calib_slope_, self.calib_intercept_, self.calib_knots_, self.calib_slopes_ = 1.0, 0.0, np.empty(0), None
        self.calibration_method_ = self.calibration
        if valid_sets and self.calibration == "intercept":
            self.calib_intercept_ = _intercept_shift(self.raw_score(X_cal), np.asarray(y_cal, dtype=float))
        elif valid_sets:
            self.set_calibration(self.raw_score(X_cal), np.asarray(y_cal, dtype=int), self.calibration)
        return self

    def refit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None,
              ) -> CalibratedBoostedClassifier:
        """Grow the trees again on ``X`` (which may include the calibration window's rows) for the
        number of rounds early stopping chose, keeping the categories and the calibration map.

        For when the calibration window is recent data the final model should not do without."""
        params = train_params({**DEFAULT_PARAMS, **(self.params or {}), "seed": self.random_state})
        if (client := active_client()) is not None and grows_on_cluster(params):
            self.booster_, self.n_rounds_ = self._grow_on_cluster(client, params, X, y, sample_weight,
                                                                  max(self.n_rounds_, 1))
            return self
        train = lgb.Dataset(self._frame(X), label=np.asarray(y), weight=sample_weight,
                            categorical_feature=list(self.categories_) or "auto")
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
        return expit(calibrated_score(self, X))

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
