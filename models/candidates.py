"""The candidate ladder: models fitted on the user's data and chosen on a validation window.

Every candidate keeps one small contract (the one of
:class:`~models.estimators.CalibratedBoostedClassifier`), so the scorers, SHAP reasons and the
registry work with whichever wins:

* ``fit(X, y, X_cal, y_cal, sample_weight=None)``: learn on ``X``, calibrate (Platt scaling of the
  log-odds) on the later window ``X_cal``;
* ``raw_score(X)``: uncalibrated log-odds; ``predict_proba(X)``: calibrated probability;
* ``contributions(X)``: per-feature log-odds contributions plus the base value last, additive
  (``base + sum == raw_score``), so ``calib_slope_ * contributions`` explains the calibrated score;
* ``unseen_categories(X)``, ``feature_names_``, ``calib_slope_``, ``calib_intercept_``; picklable.

The ladder (:func:`ladder`), simplest first:

``naive_bayes``
    Odoo's predictive lead scoring: a naive Bayes over the fields (numerics binned into
    quantiles), whose log-odds are the prior plus one log-likelihood ratio per field (additive).
``logistic``
    A regularised logistic regression (scikit-learn pipeline): one-hot categories (rare ones
    pooled), numerics log-scaled when skewed, median-imputed with missing indicators and
    standardised; ``C`` chosen on the calibration window. Linear SHAP: ``coef * (x - mean)``.
``lgbm_conservative``
    LightGBM with few leaves, many rows per leaf and strong L2 (a safe choice on small data).
``lgbm``
    LightGBM with the current (or tuned) settings.
``blend``
    The log-odds average of the two best candidates, kept only when it beats both on validation.

naive Bayes and the logistic regression are the *baselines* (``role == "baseline"``); a model is
chosen by the validation log loss (ties, within 1e-4, by the higher ROC AUC).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from models.baselines import NaiveBayesLeadScore
from models.estimators import CalibratedBoostedClassifier
from models.metrics import classification_metrics

__all__ = ["BlendClassifier", "Candidate", "LogisticClassifier", "NaiveBayesClassifier", "choose", "ladder",
           "platt"]

#: Conservative LightGBM settings over the shared defaults: 3 leaves, 500 rows a leaf, strong L2, and a
#: faster learning rate (fewer rounds: the cheap rung of the ladder).
CONSERVATIVE_PARAMS: dict[str, Any] = {"num_leaves": 3, "min_child_samples": 500, "lambda_l2": 10.0,
                                       "learning_rate": 0.15, "feature_fraction": 0.7, "cat_smooth": 50.0}
#: Most rounds of the conservative rung (with its faster learning rate, it stops well before).
CONSERVATIVE_ROUNDS = 300
#: Logistic-regression strengths tried on the calibration window.
C_GRID = (0.01, 0.1, 1.0)
#: Two validation log losses closer than this are a tie (broken by ROC AUC).
TIE = 1e-4


def platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of a logistic regression of ``y`` on the log-odds ``raw`` (Platt scaling)."""
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        return 1.0, 0.0
    fit = LogisticRegression(C=1e4).fit(np.asarray(raw, dtype=float).reshape(-1, 1), y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


class _Calibrated:
    """Calibrated probability and unseen categories over ``raw_score`` (shared by the non-LightGBM rungs)."""

    categorical_features: Sequence[str]
    calib_slope_: float = 1.0
    calib_intercept_: float = 0.0

    def _categories(self, X: pd.DataFrame) -> None:
        self.feature_names_ = list(X.columns)
        self.categories_ = {c: set(X[c].dropna().astype("str")) for c in self.categorical_features if c in X}

    def _calibrate(self, X_cal: pd.DataFrame | None, y_cal: np.ndarray | None) -> None:
        self.calib_slope_, self.calib_intercept_ = 1.0, 0.0
        if X_cal is not None and y_cal is not None and len(X_cal):
            self.calib_slope_, self.calib_intercept_ = platt(self.raw_score(X_cal), y_cal)

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        return self.contributions(X).sum(axis=1)

    def contributions(self, X: pd.DataFrame) -> np.ndarray:  # pragma: no cover - each rung defines it
        raise NotImplementedError

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        z = self.calib_slope_ * self.raw_score(X) + self.calib_intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def unseen_categories(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        out = {}
        for c, known in self.categories_.items():
            values = X[c].to_numpy(dtype=object)
            out[c] = np.fromiter((isinstance(v, str) and v not in known for v in values), dtype=bool,
                                 count=len(values))
        return out


class NaiveBayesClassifier(_Calibrated):
    """Odoo's naive Bayes over every feature (numerics in ``bins`` quantile bins), Platt-calibrated."""

    def __init__(self, categorical_features: Sequence[str] = (), alpha: float = 1.0, bins: int = 5):
        self.categorical_features = categorical_features
        self.alpha = alpha
        self.bins = bins

    def fit(self, X: pd.DataFrame, y: np.ndarray, X_cal: pd.DataFrame | None = None,
            y_cal: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> NaiveBayesClassifier:
        self._categories(X)
        numeric = [c for c in X.columns if c not in self.categories_]
        self.nb_ = NaiveBayesLeadScore(list(X.columns), alpha=self.alpha, numeric=numeric, bins=self.bins).fit(
            X, y, sample_weight=sample_weight)
        self._calibrate(X_cal, y_cal)
        return self

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        return self.nb_.contributions(X)


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class LogisticClassifier(_Calibrated):
    """A regularised logistic regression (scikit-learn pipeline per feature, see the module docstring)."""

    def __init__(self, categorical_features: Sequence[str] = (), C: float | None = None, min_frequency: int = 20,
                 random_state: int = 0):
        self.categorical_features = categorical_features
        self.C = C
        self.min_frequency = min_frequency
        self.random_state = random_state

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        cats = {c: X[c].astype("str").where(X[c].notna(), "(missing)").astype(object) for c in self.categories_}
        nums = {c: X[c].to_numpy(dtype=float, na_value=np.nan) for c in self.numeric_}
        return pd.DataFrame({**cats, **nums}, index=X.index)[self.used_]

    def _design(self) -> ColumnTransformer:
        """One scikit-learn pipeline per feature, named by its position (so each design column knows its feature)."""
        parts = []
        for j, c in enumerate(self.used_):
            if c in self.categories_:
                parts.append((str(j), OneHotEncoder(handle_unknown="infrequent_if_exist",
                                                    min_frequency=self.min_frequency), [c]))
            else:
                steps = [FunctionTransformer(_signed_log, feature_names_out="one-to-one")] if c in self.skewed_ else []
                steps += [SimpleImputer(strategy="median", add_indicator=True), StandardScaler()]
                parts.append((str(j), make_pipeline(*steps), [c]))
        return ColumnTransformer(parts, sparse_threshold=0)

    def fit(self, X: pd.DataFrame, y: np.ndarray, X_cal: pd.DataFrame | None = None,
            y_cal: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> LogisticClassifier:
        self._categories(X)
        self.numeric_ = [c for c in X.columns if c not in self.categories_ and X[c].notna().any()]
        self.used_ = [c for c in X.columns if c in self.categories_ or c in self.numeric_]
        self.skewed_ = {c for c in self.numeric_ if abs(float(X[c].astype(float).skew() or 0.0)) > 2}
        self.design_ = self._design()
        T, y = self.design_.fit_transform(self._frame(X)), np.asarray(y, dtype=int)
        T_cal = self.design_.transform(self._frame(X_cal)) if X_cal is not None and len(X_cal) else None
        grid = [self.C] if self.C is not None else list(C_GRID)
        best = None
        for C in grid:  # the design is built once; each strength refits the regression only
            lr = LogisticRegression(C=C, max_iter=2000).fit(T, y, sample_weight=sample_weight)
            loss = log_loss(y_cal, lr.predict_proba(T_cal)[:, 1], labels=[0, 1]) if T_cal is not None else 0.0
            if best is None or loss < best[0]:
                best = (loss, C, lr)
            if T_cal is None:
                break
        _, self.C_, lr = best  # type: ignore[misc]
        names = self.design_.get_feature_names_out()
        self.owner_ = np.array([int(n.split("__", 1)[0]) for n in names])
        self.coef_, self.intercept_ = lr.coef_[0], float(lr.intercept_[0])
        # the reference point of linear SHAP: the mean of the training design
        self.mean_ = np.average(T, axis=0, weights=sample_weight)
        self._calibrate(X_cal, y_cal)
        return self

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        T = np.asarray(self.design_.transform(self._frame(X)), dtype=float)
        index = {c: self.feature_names_.index(c) for c in self.used_}
        owner = np.zeros((T.shape[1], len(self.feature_names_)))
        owner[np.arange(T.shape[1]), [index[self.used_[o]] for o in self.owner_]] = 1.0
        out = np.empty((len(X), len(self.feature_names_) + 1))
        out[:, :-1] = ((T - self.mean_) * self.coef_) @ owner
        out[:, -1] = self.intercept_ + float(self.mean_ @ self.coef_)
        return out


class BlendClassifier(_Calibrated):
    """The average of two fitted candidates' calibrated log-odds (contributions averaged the same way)."""

    def __init__(self, members: Sequence[Any], names: Sequence[str] = ()):
        self.members = list(members)
        #: The candidates blended (their names on the ladder).
        self.member_names = list(names)
        first = self.members[0]
        self.categorical_features = getattr(first, "categorical_features", ())
        self.feature_names_ = list(first.feature_names_)

    def fit(self, X: pd.DataFrame | None = None, y: np.ndarray | None = None, X_cal: pd.DataFrame | None = None,
            y_cal: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> BlendClassifier:
        """The members are fitted already; the blend only re-calibrates on ``X_cal``."""
        self._calibrate(X_cal, y_cal)
        return self

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        parts = []
        for m in self.members:
            c = m.contributions(X) * m.calib_slope_
            c[:, -1] += m.calib_intercept_
            parts.append(c)
        return np.mean(parts, axis=0)

    def unseen_categories(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        return self.members[0].unseen_categories(X)


@dataclass(frozen=True)
class Candidate:
    """A rung of the ladder: its name, whether it is a baseline, and how to build it unfitted."""

    name: str
    role: str  # "model" or "baseline"
    make: Callable[[], Any]


def ladder(categorical: Sequence[str], params: dict[str, Any], seed: int,
           conservative: dict[str, Any] | None = None) -> list[Candidate]:
    """naive Bayes, logistic regression, conservative LightGBM and LightGBM with ``params``."""
    cons = {**(params or {}), **CONSERVATIVE_PARAMS, **(conservative or {})}
    return [
        Candidate("naive_bayes", "baseline", lambda: NaiveBayesClassifier(categorical)),
        Candidate("logistic", "baseline", lambda: LogisticClassifier(categorical, random_state=seed)),
        Candidate("lgbm_conservative", "model",
                  lambda: CalibratedBoostedClassifier(categorical, params=cons, max_rounds=CONSERVATIVE_ROUNDS,
                                                     random_state=seed)),
        Candidate("lgbm", "model", lambda: CalibratedBoostedClassifier(categorical, params=params, random_state=seed)),
    ]


def fit_candidate(candidate: Candidate, X: pd.DataFrame, y: np.ndarray, X_cal: pd.DataFrame, y_cal: np.ndarray,
                  sample_weight: np.ndarray | None = None) -> Any:
    """``candidate`` fitted on ``X`` and calibrated on ``X_cal``."""
    return candidate.make().fit(X, y, X_cal, y_cal, sample_weight=sample_weight)


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """Is ``a`` better than ``b``: lower log loss, or a tie and higher ROC AUC."""
    if abs(a["log_loss"] - b["log_loss"]) > TIE:
        return a["log_loss"] < b["log_loss"]
    return np.nan_to_num(a["roc_auc"]) > np.nan_to_num(b["roc_auc"])


def choose(models: dict[str, Any], X_val: pd.DataFrame, y_val: np.ndarray, X_cal: pd.DataFrame,
           y_cal: np.ndarray, roles: dict[str, str]) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    """The best of ``models`` on the validation window (plus the blend of the two best when it beats both):
    the winner's name, one row per candidate (``role``, ``validation_log_loss``, ``validation_roc_auc``,
    ``chosen``), and the models (with the blend, when it was tried)."""
    models = dict(models)
    scores = {n: classification_metrics(y_val, m.predict_proba(X_val)) for n, m in models.items()}
    ranked = sorted(scores, key=lambda n: (scores[n]["log_loss"], -np.nan_to_num(scores[n]["roc_auc"])))
    if len(ranked) >= 2:
        blend = BlendClassifier([models[ranked[0]], models[ranked[1]]], ranked[:2]).fit(X_cal=X_cal, y_cal=y_cal)
        s = classification_metrics(y_val, blend.predict_proba(X_val))
        models["blend"], scores["blend"] = blend, s
        roles = {**roles, "blend": "model"}
    best = ranked[0]
    if "blend" in scores and all(_better(scores["blend"], scores[n]) for n in ranked[:2]):
        best = "blend"
    table = pd.DataFrame({"role": [roles[n] for n in scores],
                          "validation_log_loss": [scores[n]["log_loss"] for n in scores],
                          "validation_roc_auc": [scores[n]["roc_auc"] for n in scores],
                          "chosen": [n == best for n in scores]}, index=pd.Index(list(scores), name="candidate"))
    return best, table, models
