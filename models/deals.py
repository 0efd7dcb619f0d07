"""The deal scorer: stage conversion, win, and when, for every open opportunity.

One object (logged to MLflow as ``stage_conversion``, loaded by serving) holds:

* ``next_stage``: P(the deal enters its next stage within the horizon), a calibrated
  LightGBM on snapshots (stage is a feature);
* the **timing** model, a discrete-time survival model with competing risks on the same
  snapshots: time after ``as_of`` is cut in periods of ``horizon / 3`` days;
  ``win_hazard`` is P(the deal is won in period j | still open at its start, features at
  ``as_of``) and ``loss_hazard`` P(it is lost in period j | open at its start). Deals still
  open at the training cutoff contribute the periods they were observed open (censored, not
  dropped). From them: the probability of a win in each period, hence P(won within the
  horizon), P(won eventually) (the mass of ``n_periods`` periods plus the deals still open
  after them, at the last period's share of wins among closes) and an expected close date
  (the mean win time, given a win). Two cause-specific hazards, rather than one close hazard
  times P(won | closed), because each learns its own drivers from all rows at risk (a rep
  who loses fast and one who wins slowly look alike to a close hazard): see the README;
* ``surrogate``: a regression tree on the log-odds of P(won) used only for reasons
  (TreeSHAP of the surrogate, rescaled so that base + points = P(won) exactly);
* the context of its training cutoff (stage win rates, typical amounts, owners, accounts).

Expected value = P(won) x amount (the last known amount, else predicted from similar deals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Export
from features.deals import (
    CALENDAR_FEATURES,
    DealContext,
    DealFeatureSpec,
    deal_features,
    period_calendar,
    deal_state,
    open_opportunities,
    predicted_amount,
)
from features.errors import InvalidRecord
from models.base import Scorer
from models.estimators import CalibratedBoostedClassifier
from models.explain import to_probability, top_reasons
from models.tasks import Task

#: Periods of the timing model per horizon (a period is horizon / 3 days: about a month).
PERIODS_PER_HORIZON = 3
#: How many periods the timing model looks ahead (12 of ~30 days: a year).
N_PERIODS = 12

def period_frame(X: pd.DataFrame, periods: np.ndarray, period_days: float | None = None) -> pd.DataFrame:
    """Rows of ``X`` repeated with a ``period`` column: the input of the timing models; with
    ``period_days``, each period's calendar too (:func:`features.deals.period_calendar`)."""
    periods = np.asarray(periods, dtype=float)
    cal = period_calendar(X, periods * period_days) if period_days is not None else {}
    return X.assign(period=periods, **cal)


def timing_columns(spec: DealFeatureSpec) -> list[str]:
    """The timing models' columns: the deal features, ``period``, and each period's calendar
    when the features hold the snapshot's (see :func:`period_frame`)."""
    names = spec.feature_names
    return [*names, "period", *(f"period_{c}" for c in CALENDAR_FEATURES if c in names)]


def win_mass(win: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """P(won in period j) for j < J, and in a last column the deals still open after J periods
    times the last period's share of wins among closes. ``win`` and ``loss`` are ``(n, J)``
    cause-specific hazards (two separate models, so their sum is capped at 1: a deal cannot
    close more than surely); rows sum to P(won)."""
    n, J = win.shape
    win, loss = capped_hazards(win, loss)
    total = win + loss
    survive = np.cumprod(np.c_[np.ones(n), 1.0 - total], axis=1)  # (n, J + 1): open at the start of j
    mass = survive[:, :J] * win
    with np.errstate(invalid="ignore", divide="ignore"):
        tail_share = np.where(total[:, -1] > 0, win[:, -1] / total[:, -1], 0.0)
    return np.c_[mass, survive[:, J] * tail_share]


def capped_hazards(win: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The win and loss hazards scaled, where they add up to more than 1, to sum to 1 (two
    separate models: a deal cannot close more than surely)."""
    total = win + loss
    over = total > 1.0
    if not over.any():
        return win, loss
    scale = np.where(over, 1.0 / np.where(over, total, 1.0), 1.0)
    return win * scale, loss * scale


def timing_distribution(win_hazard: Any, loss_hazard: Any, X: pd.DataFrame, n_periods: int,
                        period_days: float | None = None) -> np.ndarray:
    """``(n, n_periods + 1)``: P(won in each period after as_of) from a pair of hazards (see
    :func:`win_mass`); what :meth:`DealScorer.win_distribution` and the timing candidates use."""
    n, J = len(X), n_periods
    big = period_frame(X.loc[X.index.repeat(J)], np.tile(np.arange(J), n), period_days)
    win = win_hazard.predict_proba(big).reshape(n, J)
    loss = loss_hazard.predict_proba(big).reshape(n, J)
    return win_mass(win, loss)


def mass_within(mass: np.ndarray, days: float, period_days: float, n_periods: int) -> np.ndarray:
    """P(won within ``days``) from a :func:`timing_distribution` (a partial period pro rata)."""
    k = min(days / period_days, float(n_periods))
    full = int(np.floor(k))
    out = mass[:, :full].sum(axis=1)
    if full < n_periods:
        out = out + (k - full) * mass[:, full]
    return out


@dataclass
class SplitHazard:
    """A cause-specific hazard from the **close-share** layout: P(closes in period j) times
    P(won | closes then) (``won``) or its complement. Scorers saved before the competing-risks
    layout load into it and score exactly as they did; training may also choose this layout
    (see :func:`training.deals.timing_models`)."""

    close_hazard: CalibratedBoostedClassifier
    win_share: CalibratedBoostedClassifier
    won: bool

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        share = self.win_share.predict_proba(X)
        return self.close_hazard.predict_proba(X) * (share if self.won else 1.0 - share)


@dataclass
class DealScorer(Scorer):
    spec: DealFeatureSpec
    context: DealContext
    next_stage: CalibratedBoostedClassifier
    win_hazard: CalibratedBoostedClassifier | SplitHazard
    loss_hazard: CalibratedBoostedClassifier | SplitHazard
    surrogate: CalibratedBoostedClassifier | None
    period_days: float
    n_periods: int = N_PERIODS
    task: str = Task.STAGE_CONVERSION.value
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def trained_until(self) -> pd.Timestamp:
        return self.context.as_of

    def __setstate__(self, state: dict) -> None:
        if "close_hazard" in state:  # saved before the competing-risks layout (see SplitHazard)
            close, share = state.pop("close_hazard"), state.pop("win_share")
            state["win_hazard"] = SplitHazard(close, share, won=True)
            state["loss_hazard"] = SplitHazard(close, share, won=False)
        self.__dict__.update(state)

    @property
    def explained(self) -> CalibratedBoostedClassifier:
        """The surrogate of logit P(won) (reasons): trained scorers have one, evaluation-only fits do not."""
        if self.surrogate is None:
            raise ValueError("this deal scorer was fitted without its surrogate, so it has no reasons")
        return self.surrogate

    # ------------------------------------------------------------------ features
    def features(
        self,
        opportunities: pd.DataFrame,
        stage_history: pd.DataFrame,
        activities: pd.DataFrame,
        leads: pd.DataFrame,
        accounts: pd.DataFrame,
        as_of: pd.Timestamp,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The feature frame and the deal state, refusing a leaking ``as_of`` or a closed deal."""
        self.check_as_of(as_of, opportunities, "opportunity_id", "opportunity")
        state = deal_state(opportunities, stage_history, as_of, self.spec.open_stages)
        closed = ~state["stage"].isin(self.spec.open_stages)
        if closed.any():
            first = state.index[closed.to_numpy()][0]
            raise InvalidRecord(
                f"opportunity {first}",
                f"is already {state.loc[first, 'stage']} before as_of {as_of.isoformat()}: only open deals are scored",
            )
        X = deal_features(opportunities, stage_history, activities, leads, accounts, as_of, self.context, self.spec,
                          state=state)
        return X, state

    # ------------------------------------------------------------------ predictions
    def win_distribution(self, X: pd.DataFrame) -> np.ndarray:
        """``(n, n_periods + 1)``: P(won in each period after as_of), the last column beyond them."""
        return timing_distribution(self.win_hazard, self.loss_hazard, X, self.n_periods, self.period_days)

    def within(self, mass: np.ndarray, days: float) -> np.ndarray:
        """P(won within ``days``) from :meth:`win_distribution` (a partial period pro rata)."""
        return mass_within(mass, days, self.period_days, self.n_periods)

    def predict(self, X: pd.DataFrame, horizon_days: float | None = None) -> pd.DataFrame:
        """P(won), P(won within the horizon), P(next stage within the model's horizon), expected
        days to a win. ``horizon_days`` other than the model's reads the timing distribution."""
        mass = self.win_distribution(X)
        p_win = mass.sum(axis=1)
        mid = (np.arange(mass.shape[1]) + 0.5) * self.period_days
        with np.errstate(invalid="ignore", divide="ignore"):
            days = np.where(p_win > 0, (mass * mid).sum(axis=1) / p_win, np.nan)
        return pd.DataFrame(
            {
                "p_win": p_win,
                "p_win_within_horizon": self.within(mass, horizon_days or self.spec.horizon_days),
                "p_next_stage": self.next_stage.predict_proba(X),
                "expected_days_to_win": days,
            },
            index=X.index,
        )

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """P(won eventually): what the pyfunc serves."""
        return self.predict(X)["p_win"].to_numpy()

    def reasons(self, X: pd.DataFrame, p_win: np.ndarray, n_reasons: int) -> list[list[dict[str, object]]]:
        """Top reasons for P(won), in probability points that add up to P(won) exactly."""
        if self.surrogate is None or not n_reasons:
            return [[] for _ in range(len(X))]
        contrib = to_probability(self.explain(X))
        values, base = contrib.values, contrib.base
        residual = (p_win - base) - values.sum(axis=1)
        weight = np.abs(values)
        total = weight.sum(axis=1, keepdims=True)
        values = values + residual[:, None] * np.where(total > 0, weight / np.where(total > 0, total, 1), 1 / values.shape[1])
        return top_reasons(values, X[self.surrogate.feature_names_], n_reasons)

    def score_frame(
        self, X: pd.DataFrame, state: pd.DataFrame, opportunities: pd.DataFrame, as_of: pd.Timestamp, n_reasons: int = 5,
        horizon_days: float | None = None,
    ) -> pd.DataFrame:
        pred = self.predict(X, horizon_days)
        known = state["amount"].to_numpy(dtype=float)
        guess = predicted_amount(opportunities, self.context)
        amount = np.where(np.isnan(known), guess, known)
        close = as_of + pd.to_timedelta(pred["expected_days_to_win"].to_numpy(), unit="D")
        out = pd.DataFrame(
            {
                "opportunity_id": X.index.to_numpy(),
                "stage": state["stage"].to_numpy(),
                "p_win": pred["p_win"].to_numpy(),
                "p_win_within_horizon": pred["p_win_within_horizon"].to_numpy(),
                "p_next_stage": pred["p_next_stage"].to_numpy(),
                "expected_close_date": pd.DatetimeIndex(close).floor("D"),
                "amount": amount,
                "amount_predicted": np.isnan(known),
                "expected_value": pred["p_win"].to_numpy() * amount,
            }
        )
        out["reasons"] = self.reasons(X, out["p_win"].to_numpy(), n_reasons)
        return out

    def _warnings(self, X: pd.DataFrame, state: pd.DataFrame, opportunities: pd.DataFrame) -> list[list[str]]:
        warnings: list[list[str]] = [[] for _ in range(len(X))]
        for col, mask in self.next_stage.unseen_categories(X).items():
            for i in np.flatnonzero(mask):
                warnings[i].append(f"{col} {X[col].iloc[i]!r} was not seen in training: scored as unknown")
        for i in np.flatnonzero(np.isnan(state["amount"].to_numpy(dtype=float))):
            warnings[i].append("amount is missing: predicted from deals of the same product and type")
        for i in np.flatnonzero(state["stage_entries"].to_numpy() == 0):
            warnings[i].append("no stage history before as_of: taken as in the first stage since creation")
        return warnings

    def score(
        self,
        opportunities: pd.DataFrame,
        stage_history: pd.DataFrame,
        activities: pd.DataFrame,
        leads: pd.DataFrame,
        accounts: pd.DataFrame,
        as_of: pd.Timestamp,
        n_reasons: int = 5,
        horizon_days: float | None = None,
    ) -> pd.DataFrame:
        """Score open deals as of ``as_of``: probabilities, expected close date and value, reasons, warnings."""
        X, state = self.features(opportunities, stage_history, activities, leads, accounts, as_of)
        out = self.score_frame(X, state, opportunities, as_of, n_reasons, horizon_days)
        out["crm_close_date"] = state["expected_close_date"].to_numpy()
        out["warnings"] = self._warnings(X, state, opportunities)
        return out


def score_open_deals(
    export: Export, scorer: DealScorer, as_of: pd.Timestamp, n_reasons: int = 5, horizon_days: float | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every deal open at ``as_of``, scored, and the open deals themselves."""
    opps = open_opportunities(export.opportunities, export.stage_history, as_of)
    scored = scorer.score(opps, export.stage_history, export.activities, export.leads, export.accounts, as_of,
                          n_reasons=n_reasons, horizon_days=horizon_days)
    return scored, opps


# ---------------------------------------------------------------------- plain baselines of P(won)
_MISSING = "(missing)"


def _plain_columns(X: pd.DataFrame, categorical: list[str]) -> tuple[list[str], list[str]]:
    cats = [c for c in X.columns if c in categorical]
    return [c for c in X.columns if c not in cats], cats


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype("str").where(frame.notna(), _MISSING).astype(object)


class PlainLogisticRegression:
    """The best plain logistic regression of P(won) on the deal features, a baseline the deal models
    must beat: numerics median-imputed (with a missing indicator), standardised; categories one-hot
    (values seen fewer than ``min_frequency`` times pooled, unseen ones all-zero); L2 penalty ``C``
    (chosen on the validation window by the caller); no class weights (they would trade
    calibration for nothing a ranking needs). scikit-learn's pipeline, not a hand-rolled one."""

    def __init__(self, categorical: list[str], C: float = 1.0, min_frequency: int = 20):
        self.categorical, self.C, self.min_frequency = list(categorical), C, min_frequency

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> PlainLogisticRegression:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

        num, cats = _plain_columns(X, self.categorical)
        prep = ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                                  StandardScaler()), num),
            ("cat", make_pipeline(FunctionTransformer(_as_text),
                                  OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=self.min_frequency)),
             cats),
        ])
        self.model_ = make_pipeline(prep, LogisticRegression(C=self.C, max_iter=2000)).fit(
            X.astype({c: float for c in num}), np.asarray(y, dtype=int))
        self.numeric_ = num
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(X.astype({c: float for c in self.numeric_}))[:, 1]


class BinnedNaiveBayes:
    """Naive Bayes (Odoo's method) of P(won) over every deal feature: categories as they are,
    numerics cut at the training rows' quintiles (missing its own value), Laplace smoothing
    ``alpha`` (chosen on the validation window by the caller); ``models.baselines.NaiveBayesLeadScore``
    does the counting. Its summed log-odds are Platt-scaled on the training rows: naive Bayes counts
    each of the correlated deal features as independent evidence, and its raw probabilities were
    overconfident (log loss 2.27 on a 0.3-scale sample, worse than the base rate), a baseline too
    broken to compare log losses with; the scaling keeps its ranking and fixes its confidence."""

    def __init__(self, categorical: list[str], alpha: float = 1.0, bins: int = 5):
        self.categorical, self.alpha, self.bins = list(categorical), alpha, bins

    def _binned(self, X: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for c, edges in self.edges_.items():
            v = X[c].to_numpy(dtype=float, na_value=np.nan)
            out[c] = np.where(np.isnan(v), _MISSING, np.searchsorted(edges, v, side="right").astype(str))
        return X.assign(**{c: pd.Series(v, index=X.index, dtype=object) for c, v in out.items()})

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> BinnedNaiveBayes:
        from models.baselines import NaiveBayesLeadScore

        num, _ = _plain_columns(X, self.categorical)
        qs = np.linspace(0, 1, self.bins + 1)[1:-1]
        self.edges_ = {c: np.unique(np.nanquantile(X[c].to_numpy(dtype=float, na_value=np.nan), qs))
                       if X[c].notna().any() else np.array([]) for c in num}
        from sklearn.linear_model import LogisticRegression

        binned = self._binned(X)
        self.model_ = NaiveBayesLeadScore(list(X.columns), alpha=self.alpha).fit(binned, y)
        score = self.model_.raw_score(binned).reshape(-1, 1)
        self.platt_ = LogisticRegression(C=1e6, max_iter=1000).fit(score, np.asarray(y, dtype=int))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.platt_.predict_proba(self.model_.raw_score(self._binned(X)).reshape(-1, 1))[:, 1]
