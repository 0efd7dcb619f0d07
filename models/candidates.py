"""The candidate ladder: models fitted on the user's data and chosen on a validation window.

Every candidate keeps one small contract (the one of
:class:`~models.estimators.CalibratedBoostedClassifier`), so the scorers, SHAP reasons and the
registry work with whichever wins:

* ``fit(X, y, X_cal, y_cal, sample_weight=None)``: learn on ``X``, calibrate (Platt scaling of the
  log-odds) on the later window ``X_cal``; ``set_calibration(raw, y, method)`` re-calibrates it with
  another map (:class:`~models.estimators.LogOddsCalibration`: Platt or the monotone spline);
* ``raw_score(X)``: uncalibrated log-odds; ``calibrated_log_odds(raw)``; ``predict_proba(X)``: calibrated
  probability;
* ``contributions(X)``: per-feature log-odds contributions plus the base value last, additive
  (``base + sum == raw_score``); :func:`~models.estimators.calibrated_contributions` turns them into the
  calibrated score's (``calib_slope_ * contributions`` under Platt, the secant slope under a spline);
* ``unseen_categories(X)``, ``feature_names_``, ``calib_intercept_`` (the level a rate shift moves); picklable.

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

naive Bayes and the logistic regression are the *baselines* (``role == "baseline"``). A model is
chosen by the validation log loss with the one-standard-error rule (:func:`choose`: the simplest
candidate within one paired standard error of the best; ties within 1e-4 broken by ROC AUC).

**The calibration** is chosen on the validation window too (:func:`choose_calibration`), for the chosen
candidate as fitted there: the map (Platt, or the monotone spline of :mod:`models.estimators`) and the
calibration window's length (all of it, or its most recent half: :data:`CALIBRATION_SHARES`): Platt on the
whole window unless another lowers the validation log loss by more than one paired standard error and
:data:`CALIBRATION_MIN_GAIN`; every candidate of the evaluation split and the registered model are then
calibrated the same way (:func:`fit_every`). Without a validation window, Platt scaling on the whole
calibration window is used.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from models.estimators import (
    CALIBRATION_METHODS,
    CalibratedBoostedClassifier,
    LogOddsCalibration,
    calibrated_contributions,
    calibrated_score,
    fit_log_odds_map,
    lifetime_offset,
    platt,
    ramps,
)
from models.explain import design_rows
from models.metrics import classification_metrics

__all__ = ["CALIBRATION_SHARES", "BlendClassifier", "Calibration", "Candidate", "Choice", "LogisticClassifier",
           "NaiveBayesClassifier", "RecentOutcomes", "beats", "calibrate", "calibration_rows", "candidate_table",
           "choose", "choose_calibration", "choose_on_validation", "choose_refit", "decided_share", "fit_candidate",
           "fit_every", "ladder", "paired_gain", "platt", "recent_outcomes", "recent_rate_shift", "row_log_losses",
           "training_rows"]

#: Conservative LightGBM settings over the shared defaults: 3 leaves, 100 rows a leaf, strong L2, and a
#: faster learning rate (fewer rounds: the cheap rung of the ladder).
CONSERVATIVE_PARAMS: dict[str, Any] = {"num_leaves": 3, "min_child_samples": 100, "lambda_l2": 10.0,
                                       "learning_rate": 0.15, "feature_fraction": 0.7, "bagging_fraction": 0.5,
                                       "cat_smooth": 50.0}
#: Most rounds of the conservative rung (with its faster learning rate and half the rows a round, it is
#: the cheap rung: about a quarter of the current settings' fit).
CONSERVATIVE_ROUNDS = 150
#: Logistic-regression strengths tried on the calibration window (strongest first, each warm-started
#: from the previous solution).
C_GRID = (0.05, 1.0)
#: Requests of fewer rows build the logistic design with models.explain.design_rows (serving);
#: larger frames (training, batch scoring) with scikit-learn's transform.
FAST_DESIGN_ROWS = 200
#: Two validation log losses closer than this are a tie (broken by ROC AUC).
TIE = 1e-4
#: The attributes of a fitted calibration map (what a refit keeps).
CALIBRATION_STATE = ("calib_slope_", "calib_intercept_", "calib_knots_", "calib_slopes_", "calibration_method_")


class _Calibrated(LogOddsCalibration):
    """Calibrated probability and unseen categories over ``raw_score`` (shared by the non-LightGBM rungs)."""

    categorical_features: Sequence[str]

    def _categories(self, X: pd.DataFrame) -> None:
        self.feature_names_ = list(X.columns)
        self.categories_ = {c: set(X[c].dropna().astype("str")) for c in self.categorical_features if c in X}

    def _calibrate(self, X_cal: pd.DataFrame | None, y_cal: np.ndarray | None, method: str = "platt") -> None:
        self.calib_slope_, self.calib_intercept_, self.calib_knots_, self.calib_slopes_ = 1.0, 0.0, np.empty(0), None
        if X_cal is not None and y_cal is not None and len(X_cal):
            self.set_calibration(self.raw_score(X_cal), np.asarray(y_cal, dtype=int), method)

    def _calibration_state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in CALIBRATION_STATE if hasattr(self, k)}

    def refit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None = None) -> _Calibrated:
        """Learn again on ``X`` (e.g. the fit and calibration windows together) with the settings the first fit
        chose, keeping the calibration map fitted before (see :func:`choose_refit`)."""
        state = self._calibration_state()
        self._refit(X, y, sample_weight)
        self.__dict__.update(state)
        return self

    def _refit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        self.fit(X, y, sample_weight=sample_weight)

    def raw_score(self, X: pd.DataFrame) -> np.ndarray:
        return self.contributions(X).sum(axis=1)

    def contributions(self, X: pd.DataFrame) -> np.ndarray:  # pragma: no cover - each rung defines it
        raise NotImplementedError

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-calibrated_score(self, X)))

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
                 random_state: int = 0, columns: Sequence[str] | None = None):
        self.categorical_features = categorical_features
        self.C = C
        self.min_frequency = min_frequency
        self.random_state = random_state
        #: Only these features (None: every one); the others get a zero contribution (a task's one-field baseline).
        self.columns = columns

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
        keep = set(X.columns if self.columns is None else self.columns)
        self.categories_ = {c: v for c, v in self.categories_.items() if c in keep}
        # every feature: those with a value; the named ones (``columns``) even without (then a constant)
        self.numeric_ = [c for c in X.columns if c in keep and c not in self.categories_
                         and c not in self.categorical_features and (self.columns is not None or X[c].notna().any())]
        self.used_ = [c for c in X.columns if c in self.categories_ or c in self.numeric_]
        if not self.used_:
            raise ValueError(f"none of the columns {sorted(keep)} is in the frame")
        self.skewed_ = {c for c in self.numeric_ if abs(float(X[c].astype(float).skew() or 0.0)) > 2}
        self.design_ = self._design()
        T, y = self.design_.fit_transform(self._frame(X)), np.asarray(y, dtype=int)
        T_cal = self.design_.transform(self._frame(X_cal)) if X_cal is not None and len(X_cal) else None
        grid = [self.C] if self.C is not None else list(C_GRID)
        best = None
        start = None
        for C in grid:  # the design is built once; each strength refits the regression only, warm-started
            lr = LogisticRegression(C=C, max_iter=500, tol=1e-3, warm_start=start is not None)
            if start is not None:
                lr.coef_, lr.intercept_ = start.coef_.copy(), start.intercept_.copy()
            lr.fit(T, y, sample_weight=sample_weight)
            start = lr
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

    def _refit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        C, self.C = self.C, self.C_  # the strength the calibration window chose
        try:
            self.fit(X, y, sample_weight=sample_weight)
        finally:
            self.C = C

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        T = design_rows(self.design_, X) if len(X) < FAST_DESIGN_ROWS else None  # the same numbers, in numpy
        if T is None:
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
        return np.mean([calibrated_contributions(m, m.contributions(X), X) for m in self.members], axis=0)

    def _refit(self, X: pd.DataFrame, y: np.ndarray, sample_weight: np.ndarray | None) -> None:
        for m in self.members:  # each keeps its own map; the blend keeps its own
            m.refit(X, y, sample_weight=sample_weight)

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


def row_log_losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Each row's log loss (``p`` clipped to [1e-7, 1 - 1e-7]); their mean is the log loss."""
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    y = np.asarray(y, dtype=float)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def paired_gain(before: np.ndarray, after: np.ndarray, groups: np.ndarray | None = None) -> tuple[float, float]:
    """The mean of ``before - after`` (per-row losses of two models on the same rows) and its standard error.

    With ``groups`` (one key per row, e.g. the deal of each weekly snapshot) the error is clustered by group:
    a deal's snapshots share its outcome, so treating them as independent would understate the error and let a
    noise-level win through. Without, the rows are taken as independent."""
    d = np.asarray(before, dtype=float) - np.asarray(after, dtype=float)
    n = len(d)
    if n < 2:
        return (float(d.mean()) if n else 0.0), 0.0
    mean = float(d.mean())
    if groups is None:
        return mean, float(d.std(ddof=1) / np.sqrt(n))
    sums = pd.Series(d - mean).groupby(np.asarray(groups)).sum().to_numpy()
    g = len(sums)
    return mean, (float(np.sqrt(g / (g - 1) * np.sum(sums ** 2)) / n) if g > 1 else 0.0)


def beats(before: np.ndarray, after: np.ndarray, groups: np.ndarray | None = None,
          floor: float = TIE) -> tuple[bool, float, float]:
    """Whether ``after`` (per-row losses) beats ``before`` on the same rows by more than one paired standard
    error (:func:`paired_gain`, clustered by ``groups``) and more than ``floor``: the rule every choice on a
    validation window follows, so a noise-level win changes nothing. Returns it, the gain and its error."""
    gain, se = paired_gain(before, after, groups)
    return bool(gain > max(se, floor)), gain, se


def choose(models: dict[str, Any], X_val: pd.DataFrame, y_val: np.ndarray, X_cal: pd.DataFrame,
           y_cal: np.ndarray, roles: dict[str, str], groups: np.ndarray | None = None,
           ) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    """The candidate chosen on the validation window: the *simplest* (ladder order, the blend last) whose log
    loss is within one standard error of the best one's (the paired standard error of the per-row loss
    differences, clustered by ``groups`` when given, e.g. the lead of each snapshot: :func:`paired_gain`;
    the one-standard-error rule, so a noise-level win of a complex model does not count); the blend of the
    two best is tried and kept only when it beats both.

    Returns the name, one row per candidate (``role``, ``validation_log_loss``, ``validation_roc_auc``,
    ``chosen``) and the models (with the blend)."""
    models = dict(models)
    preds = {n: m.predict_proba(X_val) for n, m in models.items()}
    scores = {n: classification_metrics(y_val, p) for n, p in preds.items()}
    ranked = sorted(scores, key=lambda n: (scores[n]["log_loss"], -np.nan_to_num(scores[n]["roc_auc"])))
    if len(ranked) >= 2:
        blend = BlendClassifier([models[ranked[0]], models[ranked[1]]], ranked[:2]).fit(X_cal=X_cal, y_cal=y_cal)
        preds["blend"] = blend.predict_proba(X_val)
        s = classification_metrics(y_val, preds["blend"])
        if all(_better(s, scores[n]) for n in ranked[:2]):
            ranked.insert(0, "blend")
        models["blend"], scores["blend"] = blend, s
        roles = {**roles, "blend": "model"}
    best = ranked[0]
    losses = {n: row_log_losses(y_val, p) for n, p in preds.items()}
    for name in models:  # ladder order: the simplest first (the blend was added last)
        if name == "blend" and best != "blend":
            continue
        if name == best or not beats(losses[name], losses[best], groups)[0]:
            best = name
            break
    table = pd.DataFrame({"role": [roles[n] for n in scores],
                          "validation_log_loss": [scores[n]["log_loss"] for n in scores],
                          "validation_roc_auc": [scores[n]["roc_auc"] for n in scores],
                          "chosen": [n == best for n in scores]}, index=pd.Index(list(scores), name="candidate"))
    return best, table, models


# ---------------------------------------------------------------- choosing the calibration
#: The calibration windows tried, as shares of a split's calibration window (its most recent snapshot times).
CALIBRATION_SHARES: tuple[float, ...] = (1.0, 0.5)


@dataclass(frozen=True)
class Calibration:
    """A chosen calibration: the map (``models.estimators.CALIBRATION_METHODS``) and the share of the calibration
    window it is fitted on (its most recent snapshot times; 1: all of it)."""

    method: str = "platt"
    share: float = 1.0
    #: One row per map and window tried on the validation window (empty: nothing was tried).
    grid: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False, repr=False)

    def params(self) -> dict[str, object]:
        return {"calibration_method": self.method,
                "calibration_window": "all" if self.share >= 1 else f"most recent {self.share:.0%}"}


def calibration_rows(cal: pd.DataFrame, share: float, time: str = "as_of") -> pd.DataFrame:
    """The rows of the most recent ``share`` of ``cal``'s snapshot times (all of them when ``share >= 1``)."""
    if share >= 1:
        return cal
    times = sorted(set(cal[time]))
    return cal[cal[time].isin(times[len(times) - max(1, round(len(times) * share)):])]


#: Least validation log loss a calibration other than Platt on the whole window has to gain to replace it
#: (besides one paired standard error): maps that differ by less calibrate alike, and near-identical
#: maps have tiny paired errors, so the standard error alone lets noise through.
CALIBRATION_MIN_GAIN = 1e-3


def _default_unless_beaten(losses: dict[object, np.ndarray], groups: np.ndarray | None = None) -> object:
    """The first key (the default) unless the key with the lowest mean row loss beats it by more than one
    paired standard error (clustered by ``groups``: :func:`paired_gain`) and :data:`CALIBRATION_MIN_GAIN`."""
    default = next(iter(losses))
    best = min(losses, key=lambda k: losses[k].mean())
    return best if beats(losses[default], losses[best], groups, CALIBRATION_MIN_GAIN)[0] else default


def _groups(frame: pd.DataFrame, column: str | None) -> np.ndarray | None:
    """The cluster key of each row of ``frame`` (``column``), or None (rows independent) without one."""
    return frame[column].to_numpy() if column is not None and column in frame.columns else None


def choose_calibration(model: Any, cal: pd.DataFrame, val: pd.DataFrame, cols: list[str], label: str = "label",
                       methods: Sequence[str] = CALIBRATION_METHODS,
                       shares: Sequence[float] = CALIBRATION_SHARES, groups: str | None = None) -> Calibration:
    """The calibration map and window of ``model`` (fitted before ``cal``) chosen on ``val``: every map fitted on
    every window (the most recent ``share`` of ``cal``; one with fewer than :data:`MIN_CLASS_ROWS` of a class, or
    a spline with too few rows for a knot, is not tried) and scored on ``val``; Platt on all of ``cal`` unless
    the one with the lowest validation log loss beats it by more than one paired standard error and
    :data:`CALIBRATION_MIN_GAIN` (``groups``: the column of ``val`` the error is clustered by). Only ``cal`` and
    ``val`` are read: nothing after ``val``."""
    raw_val, y_val = model.raw_score(val[cols]), val[label].to_numpy(dtype=int)
    age_val = lifetime_offset(model, val[cols])  # the age correction is added after the map
    losses: dict[tuple[str, float], np.ndarray] = {}
    grid = []
    for share in shares:
        rows = calibration_rows(cal, share)
        y = rows[label].to_numpy(dtype=int)
        if share < 1 and (len(rows) == len(cal) or np.bincount(y, minlength=2).min() < MIN_CLASS_ROWS):
            continue
        raw = model.raw_score(rows[cols])
        for method in methods:
            intercept, knots, slopes = fit_log_odds_map(raw, y, method)
            if method != "platt" and not len(knots):
                continue
            p = 1.0 / (1.0 + np.exp(-(intercept + ramps(raw_val, knots) @ slopes + age_val)))
            losses[(method, share)] = row_log_losses(y_val, p)
            m = classification_metrics(y_val, p)
            grid.append({"method": method, "window": "all" if share >= 1 else f"most recent {share:.0%}",
                         "rows": len(rows), "knots": len(knots), "validation_log_loss": m["log_loss"],
                         "validation_calibration_error": m["calibration_error"]})
    if not losses:
        return Calibration()
    method, share = _default_unless_beaten(losses, _groups(val, groups))  # type: ignore[misc]
    table = pd.DataFrame(grid)
    table["chosen"] = [(r["method"], r["window"]) == (method, "all" if share >= 1 else f"most recent {share:.0%}")
                       for _, r in table.iterrows()]
    return Calibration(method, share, table)


def calibrate(model: Any, cal: pd.DataFrame, cols: list[str], calibration: Calibration, label: str = "label") -> Any:
    """``model`` re-calibrated in place with ``calibration`` on ``cal`` (Platt on all of it: as fitted)."""
    if calibration.method == "platt" and calibration.share >= 1:
        return model
    rows = calibration_rows(cal, calibration.share)
    model.set_calibration(model.raw_score(rows[cols]), rows[label].to_numpy(dtype=int), calibration.method)
    return model


# ---------------------------------------------------------------- choosing on the validation window
#: The history lengths tried (days before the split's cutoff; None: all of it) and the recency
#: half-lives (days; None: every row weighs the same). Kept tiny: each point is one more fit.
HISTORIES: tuple[int | None, ...] = (None, 365)
HALF_LIVES: tuple[int | None, ...] = (None, 180)
#: The rung that tries the histories and weightings for a LightGBM winner (a cheap proxy of the same family).
PROXY = {"lgbm": "lgbm_conservative"}
#: Fewest rows of each class a shortened history must keep to be tried.
MIN_CLASS_ROWS = 10


@dataclass(frozen=True)
class Choice:
    """What the validation window chose: the candidate (a blend names its members), the history and weighting."""

    name: str
    members: tuple[str, ...]
    history_days: int | None
    half_life_days: int | None
    #: Validation metrics, one row per candidate (and per history/weighting tried for the winner).
    table: pd.DataFrame
    grid: pd.DataFrame
    #: The chosen candidate as fitted on the validation split, calibrated as chosen (for choices made after
    #: it, e.g. the drift correction); not part of what was chosen.
    model: Any = field(default=None, compare=False, repr=False)
    #: The calibration map and window chosen for the candidate (:func:`choose_calibration`).
    calibration: Calibration = field(default_factory=Calibration)
    #: Whether the models learn again on the fit and calibration windows together once calibrated
    #: (:func:`choose_refit`), and the validation figures that decided it.
    refit: bool = False
    refit_note: str = ""

    def params(self) -> dict[str, object]:
        out: dict[str, object] = {"candidate": self.name, "history_days": self.history_days or "all",
                                  "half_life_days": self.half_life_days or "none", **self.calibration.params(),
                                  "refit_on_calibration": "yes" if self.refit else "no"}
        if self.refit_note:
            out["refit_note"] = self.refit_note
        return out


def training_rows(rows: pd.DataFrame, cutoff: pd.Timestamp, history_days: int | None, half_life_days: int | None,
                  time: str = "as_of") -> tuple[pd.DataFrame, np.ndarray | None]:
    """The rows of the last ``history_days`` before ``cutoff`` and their recency weights (None: unweighted)."""
    if history_days is not None:
        rows = rows[rows[time] >= cutoff - pd.Timedelta(days=history_days)]
    if half_life_days is None:
        return rows, None
    age = (cutoff - rows[time]) / pd.Timedelta(days=1)
    return rows, np.power(0.5, age.to_numpy(dtype=float) / half_life_days)


def _fit_rows(candidate: Candidate, fit: pd.DataFrame, cal: pd.DataFrame, cols: list[str], cutoff: pd.Timestamp,
              history_days: int | None, half_life_days: int | None, label: str = "label") -> Any:
    rows, w = training_rows(fit, cutoff, history_days, half_life_days)
    return fit_candidate(candidate, rows[cols], rows[label].to_numpy(), cal[cols], cal[label].to_numpy(), w)


def choose_on_validation(rungs: list[Candidate], fit: pd.DataFrame, cal: pd.DataFrame, val: pd.DataFrame,
                         cols: list[str], cutoff: pd.Timestamp, label: str = "label",
                         histories: Sequence[int | None] = HISTORIES,
                         half_lives: Sequence[int | None] = HALF_LIVES, groups: str | None = None,
                         refit: bool = False) -> Choice:
    """Every rung fitted on ``fit`` (calibrated on ``cal``) and compared on ``val`` (:func:`choose`); then, for
    the winner (a blend: its better member; LightGBM: its conservative rung, :data:`PROXY`, to keep training
    time), the history lengths and recency weightings, each kept only if it lowers the validation log loss
    of all the history, unweighted, by more than one paired standard error (the rule :func:`choose` applies
    to the candidates: a noise-level win does not throw history away) and more than the best point so far
    (one point at a time: every point is one more fit). ``cutoff``: what the fit may know. ``groups``: the
    column of ``val`` whose rows are one record seen at several snapshot times (a lead open for weeks); every
    standard error here is clustered by it (:func:`paired_gain`). Last, with ``refit``, whether the calibrated
    models learn again on ``fit`` and ``cal`` together (:func:`choose_refit`)."""
    by_name = {c.name: c for c in rungs}
    models = {c.name: _fit_rows(c, fit, cal, cols, cutoff, None, None, label) for c in rungs}
    y_val = val[label].to_numpy()
    g = _groups(val, groups)
    name, table, models = choose(models, val[cols], y_val, cal[cols], cal[label].to_numpy(),
                                 {c.name: c.role for c in rungs}, g)
    members = tuple(models["blend"].member_names) if name == "blend" else (name,)
    base = PROXY.get(members[0], members[0])
    best = (float(table.loc[base, "validation_log_loss"]), None, None)
    all_rows = row_log_losses(y_val, models[base].predict_proba(val[cols]))
    grid = [{"candidate": base, "history_days": "all", "half_life_days": "none", "validation_log_loss": best[0]}]
    for history in histories:
        for half_life in half_lives:
            if (history is None) == (half_life is None):  # the baseline point, and no combined point
                continue
            rows, _ = training_rows(fit, cutoff, history, None)
            counts = np.bincount(rows[label].to_numpy(dtype=int), minlength=2)
            if (history is not None and len(rows) == len(fit)) or counts.min() < MIN_CLASS_ROWS:
                continue
            model = _fit_rows(by_name[base], fit, cal, cols, cutoff, history, half_life, label)
            p = model.predict_proba(val[cols])
            loss = classification_metrics(y_val, p)["log_loss"]
            grid.append({"candidate": base, "history_days": history or "all", "half_life_days": half_life or "none",
                         "validation_log_loss": loss})
            if loss < best[0] - TIE and beats(all_rows, row_log_losses(y_val, p), g)[0]:
                best = (loss, history, half_life)
    calibration = choose_calibration(models[name], cal, val, cols, label, groups=groups)
    model = calibrate(models[name], cal, cols, calibration, label)
    if refit and best[1] is None and best[2] is None:
        keep, note, again = choose_refit(model, fit, cal, val, cols, cutoff, label, g)
    else:  # a shorter history or a recency weighting already leans on the recent rows (and was chosen without it)
        keep, note, again = False, "not tried: a shorter history or a recency weighting was chosen" if refit else "", None
    return Choice(name, members, best[1], best[2], table, pd.DataFrame(grid), again if keep else model,
                  calibration, keep, note)


def refit_rows(fit: pd.DataFrame, cal: pd.DataFrame, cutoff: pd.Timestamp, history_days: int | None,
               half_life_days: int | None) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The rows a refit learns from: the fit and calibration windows together, with the chosen history and
    weighting (:func:`training_rows`)."""
    return training_rows(pd.concat([fit, cal]), cutoff, history_days, half_life_days)


def choose_refit(model: Any, fit: pd.DataFrame, cal: pd.DataFrame, val: pd.DataFrame, cols: list[str],
                 cutoff: pd.Timestamp, label: str = "label", groups: np.ndarray | None = None,
                 ) -> tuple[bool, str, Any]:
    """Whether the calibrated ``model`` should learn again on the fit and calibration windows together, keeping
    its settings (rounds, strength) and its calibration map (``refit``): the calibration window is the most
    recent decided data, which the fit window lacks, and on a small or drifting CRM a model without it lags;
    but the map was fitted on the scores of a model that had not seen those rows, so the refitted model may be
    over-confident. Decided on the validation window, like every choice: kept only when the refitted copy
    beats the model as calibrated by more than one paired standard error (clustered by ``groups``) and
    :data:`TIE`. Returns the decision, the figures that made it and the refitted copy."""
    rows, w = refit_rows(fit, cal, cutoff, None, None)
    again = copy.deepcopy(model).refit(rows[cols], rows[label].to_numpy(), sample_weight=w)
    y_val = val[label].to_numpy()
    before, after = (row_log_losses(y_val, m.predict_proba(val[cols])) for m in (model, again))
    keep, gain, se = beats(before, after, groups)
    note = f"validation log loss {before.mean():.4f} as fitted, {after.mean():.4f} refitted (gain {gain:+.4f} +/- {se:.4f})"
    return keep, note, again


def fit_every(rungs: list[Candidate], choice: Choice, fit: pd.DataFrame, cal: pd.DataFrame, cols: list[str],
              cutoff: pd.Timestamp, label: str = "label", only_chosen: bool = False) -> dict[str, Any]:
    """The rungs (``only_chosen``: just the chosen one, or a blend's members) fitted on ``fit`` with the chosen
    history and weighting, calibrated on ``cal`` with the chosen map and window (the blend after its members);
    with the blend when it was chosen or tried."""
    names = set(choice.members) if only_chosen else {c.name for c in rungs}
    models = {c.name: calibrate(_fit_rows(c, fit, cal, cols, cutoff, choice.history_days, choice.half_life_days,
                                          label), cal, cols, choice.calibration, label)
              for c in rungs if c.name in names}
    if ("blend" in choice.table.index and not only_chosen) or choice.name == "blend":
        pair = choice.members if choice.name == "blend" else _blend_pair(choice.table)
        if all(p in models for p in pair):
            blend = BlendClassifier([models[p] for p in pair], pair).fit(X_cal=cal[cols], y_cal=cal[label].to_numpy())
            models["blend"] = calibrate(blend, cal, cols, choice.calibration, label)
    if choice.refit:  # every map is fitted by now; the blend's members are refitted with the single models
        rows, w = refit_rows(fit, cal, cutoff, choice.history_days, choice.half_life_days)
        for name, model in models.items():
            if name != "blend":
                model.refit(rows[cols], rows[label].to_numpy(), sample_weight=w)
    return models


def _blend_pair(table: pd.DataFrame) -> tuple[str, ...]:
    """The two best single candidates on validation (the pair a blend averages)."""
    single = table.drop(index="blend", errors="ignore")
    order = single.sort_values(["validation_log_loss", "validation_roc_auc"], ascending=[True, False]).index
    return tuple(order[:2])


#: The evaluation-window metrics a candidate table shows (beside role, validation figures and chosen).
TABLE_METRICS = ("roc_auc", "pr_auc", "brier", "log_loss", "calibration_error", "top_decile_capture")


def candidate_table(choice: Choice | None, roles: dict[str, str], chosen: str,
                    metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per candidate of ``metrics`` (evaluation-window figures by name): role, the validation
    figures (NaN for a candidate validation did not see), whether it is ``chosen``, then :data:`TABLE_METRICS`
    (what ``TrainResult.candidates`` and ``report/candidates.csv`` hold, for every task)."""
    names = list(metrics)
    val = choice.table if choice is not None else pd.DataFrame(columns=["validation_log_loss", "validation_roc_auc"])
    table = pd.DataFrame({
        "role": [roles.get(n, "model") for n in names],
        "validation_log_loss": [float(val["validation_log_loss"].get(n, np.nan)) for n in names],
        "validation_roc_auc": [float(val["validation_roc_auc"].get(n, np.nan)) for n in names],
        "chosen": [n == chosen for n in names],
    }, index=pd.Index(names, name="candidate"))
    for k in TABLE_METRICS:
        table[k] = [metrics[n].get(k, np.nan) for n in names]
    return table


# ---------------------------------------------------------------- base-rate shift
#: A shift is "sharp" when a two-proportion z-test gives |z| > Z_SHARP and the odds ratio is outside
#: [1 / ODDS_SHARP, ODDS_SHARP] (both: a large sample makes tiny shifts significant, a small one noisy).
Z_SHARP = 3.0
ODDS_SHARP = 1.25


def base_rate_shift(train_positives: int, train_n: int, recent_positives: int, recent_n: int) -> str | None:
    """A sentence describing a sharp shift of the positive rate from training to a recent window (else None).

    ``*_n`` should count distinct entities, not snapshot rows (rows of one lead are not independent)."""
    if min(train_n, recent_n) == 0:
        return None
    p1, p2 = train_positives / train_n, recent_positives / recent_n
    pooled = (train_positives + recent_positives) / (train_n + recent_n)
    se = np.sqrt(pooled * (1 - pooled) * (1 / train_n + 1 / recent_n))
    if se == 0 or not 0 < p1 < 1 or not 0 < p2 < 1:
        return None
    z = (p2 - p1) / se
    odds = (p2 / (1 - p2)) / (p1 / (1 - p1))
    if abs(z) > Z_SHARP and not 1 / ODDS_SHARP <= odds <= ODDS_SHARP:
        return f"the positive rate moved from {p1:.1%} in training to {p2:.1%} (z {z:+.1f}, odds ratio {odds:.2f})"
    return None


def shift_to_rate(model: Any, X: pd.DataFrame, y: np.ndarray) -> float:
    """Move ``model``'s calibrated intercept so that its mean probability on ``X`` is the rate of ``y``;
    returns the shift (log-odds)."""
    from models.estimators import _intercept_shift

    z = calibrated_score(model, X)
    shift = _intercept_shift(z, np.asarray(y, dtype=float))
    model.calib_intercept_ += shift
    return shift


# ---------------------------------------------------------------- the recent rate: a prior shift from partly decided outcomes
#: Rows whose follow-up would have seen less than this share of a decided window's positives carry too
#: little about the rate and are left out of the estimate.
MIN_DECIDED_SHARE = 0.2
#: Fewest positives already decided among the recent rows for the rate to be estimated from them.
MIN_RECENT_POSITIVES = 10


@dataclass(frozen=True)
class RecentOutcomes:
    """The rows of the last horizon before a cutoff (after the calibration window), whose labels are
    only partly decided at the cutoff: what they say about the current positive rate.

    A row followed up for ``f`` days of its horizon would have seen ``share`` of its positives decided
    if it were like the calibration window's (the empirical distribution of the time from a snapshot to
    its positive outcome, there): ``decided`` of them are. Under a stable timing this is an unbiased
    view of the rate now, a horizon later than any fully decided window."""

    X: pd.DataFrame
    #: Per row: the share of a fully decided row's positives decided within its follow-up (0..1].
    share: np.ndarray
    #: Per row: a positive outcome already decided by the cutoff.
    decided: np.ndarray
    #: Distinct entities among the rows (rows of one entity are not independent).
    entities: int

    @property
    def rate(self) -> float:
        """The positive rate the decided outcomes imply (decided positives over expected exposure)."""
        return float(self.decided.sum() / self.share.sum())

    @property
    def effective_n(self) -> int:
        """Entities, discounted by how much of their horizon was seen (for a test of the shift)."""
        return int(round(self.entities * float(self.share.mean())))


def decided_share(delays: np.ndarray, follow_up: np.ndarray) -> np.ndarray:
    """Per ``follow_up`` (days), the share of ``delays`` (days from snapshot to positive outcome, of a
    fully decided window's positives) at most that long: the empirical distribution function."""
    delays = np.sort(np.asarray(delays, dtype=float))
    return np.searchsorted(delays, np.asarray(follow_up, dtype=float), side="right") / max(len(delays), 1)


def recent_outcomes(X: pd.DataFrame, follow_up: np.ndarray, decided: np.ndarray, delays: np.ndarray,
                    entities: pd.Series) -> RecentOutcomes | None:
    """The recent rows that saw at least :data:`MIN_DECIDED_SHARE` of their horizon's positives, or None when
    they hold fewer than :data:`MIN_RECENT_POSITIVES` decided positives (or no delays to compare with)."""
    if len(delays) < MIN_RECENT_POSITIVES or not len(X):
        return None
    share = decided_share(delays, follow_up)
    keep = share >= MIN_DECIDED_SHARE
    decided = np.asarray(decided, dtype=bool)[keep]
    if decided.sum() < MIN_RECENT_POSITIVES:
        return None
    return RecentOutcomes(X[keep], share[keep], decided, int(pd.Series(entities)[keep].nunique()))


def recent_rate_shift(model: Any, recent: RecentOutcomes) -> float:
    """The log-odds shift ``b`` of ``model``'s calibrated score with which the outcomes it expects already
    decided among the recent rows equal those decided: ``sum share * sigmoid(z + b) = sum decided`` (the
    score equation of an intercept on an offset, each row exposed for its ``share``). A prior-shift
    correction that keeps the model's ranking, estimated from outcomes, not from the features alone
    (an EM prior adjustment assumes the features' distribution given the outcome stays put, which a
    drifting CRM breaks)."""
    from scipy.optimize import brentq
    from scipy.special import expit

    z = calibrated_score(model, recent.X)
    target = float(recent.decided.sum())
    cap = float(recent.share.sum()) - 1e-9
    target = min(max(target, 1e-9), cap)
    lo, hi = -20.0 - float(z.max()), 20.0 - float(z.min())
    return float(brentq(lambda b: float((recent.share * expit(z + b)).sum()) - target, lo, hi))
