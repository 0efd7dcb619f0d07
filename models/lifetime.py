"""How long a lead stays convertible: the correction for leads older than any the model learned from.

A young CRM's models learn from the first months of its history, when no lead was old: on Maven CRM the fit
window's leads are at most about 100 days old, every deal there that closed did so within 138 days, and
by the evaluation window a fifth of the open deals are older than that and never convert. A tree (or a
binned naive Bayes) scores such a lead as one of the oldest it has seen, which still converted at a high
rate; a linear model extrapolates its age effect, whatever it learned.

What the whole history knows about ages the fit window lacks is the conversion curve by age: ``F(a)``, the
probability that a lead open at age ``a`` days converts within the horizon, estimated from every lead's
path up to the cutoff (Aalen-Johansen: conversion the event, disqualification a competing one, leads still
open censored at the cutoff), so ages reached only after the fit window count too. A model's log-odds for
a lead older than the ages it learned from (:attr:`AgeLimit.start`: a high quantile of its fit rows' ages)
move by ``logit F(a) - logit F(start)``: the curve's change beyond the model's range, on top of what the
model says at the edge of it. Within the range nothing changes. Only outcomes before the cutoff are read
(the leads created before it and what became of them by then).

The correction is part of every candidate's raw score and of its contributions (on the age feature), so
the calibration map, the move to the recent rate, the reasons and the API all see it
(:class:`~models.estimators.LogOddsCalibration`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The age quantile of the fit rows up to which a model is taken to know the effect of age.
START_QUANTILE = 0.99
#: The fewest leads open at an age for the curve to be read there; older ages keep the last value read.
MIN_AT_RISK = 30


@dataclass(frozen=True)
class AgeLimit:
    """The log-odds correction by age beyond ``start`` (days) of the feature ``column``."""

    column: str
    start: int
    #: ``logit F(a)`` for a = 0, 1, ... days (the last value for every older age).
    log_odds: np.ndarray

    def offset(self, X: pd.DataFrame) -> np.ndarray:
        """The correction of each row's log-odds (0 up to ``start`` and where the age is missing)."""
        age = X[self.column].to_numpy(dtype=float, na_value=np.nan)
        beyond = np.isfinite(age) & (age > self.start)
        at = np.clip(np.floor(np.where(beyond, age, 0.0)), 0, len(self.log_odds) - 1).astype(int)
        return np.where(beyond, self.log_odds[at] - self.log_odds[min(self.start, len(self.log_odds) - 1)], 0.0)

    def describe(self) -> str:
        """The edge and the curve past it, as ``funnelcast train`` prints it and logs it (``age_limit``)."""
        last = len(self.log_odds) - 1
        ages = sorted({min(self.start, last), *(a for a in range(self.start + 30, last, 30)), last})[:5]
        rates = ", ".join(f"{1 / (1 + np.exp(-self.log_odds[a])):.1%} at {a} d" for a in ages)
        return (f"leads older than {self.start} d (the model's range) follow the conversion curve by age, the chance "
                f"that a lead still open converts within the horizon: {rates}")


def conversion_by_age(leads: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int,
                      min_at_risk: int = MIN_AT_RISK) -> tuple[np.ndarray, np.ndarray]:
    """``F(a)`` for a = 0, 1, ... days while at least ``min_at_risk`` leads were open at age ``a``, and those
    counts: the probability that a lead open at age ``a`` converts in the next ``horizon_days`` (cumulative
    incidence of conversion, disqualification competing, censored at ``cutoff``), from every lead's path.
    Only what happened before ``cutoff`` is read."""
    last = leads.drop_duplicates("lead_id", keep="last")
    last = last[last["created_at"] < cutoff]
    if last.empty:
        return np.empty(0), np.empty(0, dtype=int)
    converted = last["converted_at"].where(last["converted_at"] < cutoff)
    dropped = last["disqualified_at"].where(last["disqualified_at"] < cutoff)
    end = pd.concat([converted, dropped], axis=1).min(axis=1).fillna(cutoff)
    day = np.floor(((end - last["created_at"]) / pd.Timedelta(days=1)).clip(lower=0).to_numpy(dtype=float))
    day = day.astype(int)
    won = converted.notna().to_numpy() & (converted <= end).to_numpy()
    lost = dropped.notna().to_numpy() & ~won
    n = int(day.max()) + horizon_days + 2
    at_risk = np.bincount(day, minlength=n)[::-1].cumsum()[::-1]  # open at the start of day a
    h_won = np.bincount(day[won], minlength=n) / np.maximum(at_risk, 1)
    h_lost = np.bincount(day[lost], minlength=n) / np.maximum(at_risk, 1)
    survive = np.concatenate([[1.0], np.cumprod(1.0 - h_won - h_lost)])[:n]
    incidence = np.concatenate([[0.0], np.cumsum(survive * h_won)])
    ages = np.arange(n - horizon_days - 1)
    read = at_risk[ages] >= min_at_risk
    if not read.any():
        return np.empty(0), np.empty(0, dtype=int)
    ages = ages[: int(np.flatnonzero(read).max()) + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = (incidence[ages + horizon_days] - incidence[ages]) / survive[ages]
    curve = np.nan_to_num(curve, nan=0.0)
    # no conversion among n open leads: half a conversion, not a probability of zero
    floor = 0.5 / np.maximum(at_risk[ages], 1)
    return np.clip(curve, floor, 1.0 - floor), at_risk[ages]


def age_limit(leads: pd.DataFrame, cutoff: pd.Timestamp, horizon_days: int, fit_ages: pd.Series,
              column: str = "lead_age_days") -> AgeLimit | None:
    """The correction for a model fitted on rows of ages ``fit_ages`` (days) with what is known at ``cutoff``,
    or None when the curve reaches no age beyond the model's range (nothing to correct)."""
    ages = pd.to_numeric(fit_ages, errors="coerce").dropna()
    if ages.empty:
        return None
    start = int(np.floor(np.quantile(ages.to_numpy(dtype=float), START_QUANTILE)))
    curve, _ = conversion_by_age(leads, cutoff, horizon_days)
    if len(curve) <= start + 1:
        return None
    return AgeLimit(column, start, np.log(curve) - np.log1p(-curve))
