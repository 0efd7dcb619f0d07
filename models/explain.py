"""SHAP in one place: TreeSHAP contributions, their units, and reasons people can read.

Contributions come from LightGBM's ``pred_contrib`` (TreeSHAP, the same values as
``shap.TreeExplainer`` and much faster). They are in the model's raw **log-odds**. After
Platt calibration (linear in log-odds) they are rescaled to **probability points** so that
``base probability + sum of points = predicted probability`` exactly: each feature gets
its share of the log-odds, times the secant slope of the sigmoid between base and score.
This module is the only one that imports ``shap`` (for plots).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Contributions:
    """Per-row contributions of each feature; ``base + values.sum(1)`` is the model output."""

    base: np.ndarray
    values: np.ndarray
    feature_names: list[str]
    unit: str  # "log-odds" or "probability"


def log_odds_contributions(raw: np.ndarray, feature_names: list[str], slope: float = 1.0, intercept: float = 0.0) -> Contributions:
    """Calibrated log-odds contributions from ``pred_contrib`` output (features..., base)."""
    values = raw[:, :-1] * slope
    base = raw[:, -1] * slope + intercept
    return Contributions(base=base, values=values, feature_names=list(feature_names), unit="log-odds")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def to_probability(c: Contributions) -> Contributions:
    """Rescale log-odds contributions to probability points that add up exactly."""
    if c.unit != "log-odds":
        raise ValueError(f"expected log-odds contributions, got {c.unit}")
    total = c.values.sum(axis=1)
    p_base, p = _sigmoid(c.base), _sigmoid(c.base + total)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(np.abs(total) > 1e-9, (p - p_base) / total, p_base * (1 - p_base))
    return Contributions(base=p_base, values=c.values * slope[:, None], feature_names=c.feature_names, unit="probability")


# ---------------------------------------------------------------- reasons as sentences
_LABELS = {
    "source": "Source",
    "owner_id": "Owner",
    "seniority": "Contact seniority",
    "country": "Country",
    "account_industry": "Industry",
    "account_country": "Account country",
    "account_employees": "Company size (employees)",
    "account_annual_revenue": "Company revenue",
    "lead_age_days": "Lead age (days)",
    "account_age_days": "Account age (days)",
    "activities_total": "Activities so far",
    "days_since_activity": "Days since the last activity",
    "source_conversion_rate": "Recent conversion rate of this source",
    "owner_conversion_rate": "Recent conversion rate of this owner",
    "owner_open_leads": "Open leads of this owner",
    "account_won_deals": "Deals already won with this account",
    "account_won_amount": "Revenue already won with this account",
    "account_lost_deals": "Deals lost with this account",
    "account_open_opportunities": "Open deals with this account",
}


def _humanize(token: str) -> str:
    return token.replace("_", " ")


def feature_label(name: str) -> str:
    """A short human name for a feature column."""
    if name in _LABELS:
        return _LABELS[name]
    if m := re.fullmatch(r"inbound_(\d+)d", name):
        return f"Inbound touches in the last {m[1]} days"
    if m := re.fullmatch(r"days_since_(.+)", name):
        return f"Days since the last {_humanize(m[1])}"
    if m := re.fullmatch(r"(.+)_(\d+)d", name):
        return f"{_humanize(m[1]).capitalize()} count, last {m[2]} days"
    if m := re.fullmatch(r"(.+)_per_week", name):
        return f"{_humanize(m[1]).capitalize()}s per week since the lead came in"
    if m := re.fullmatch(r"(.+)_total", name):
        return f"{_humanize(m[1]).capitalize()} count, all time"
    if name.startswith("account_"):
        return f"Account {_humanize(name[len('account_'):])}"
    return _humanize(name).capitalize()


def format_value(value: object) -> str:
    """A feature value as a person would write it."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "unknown"
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer():
            return f"{int(value):,}"
        return f"{value:.2f}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def reason_sentence(feature: str, value: object, points: float) -> str:
    """E.g. ``"Source is referral: raises the probability by 9 points"``."""
    direction = "raises" if points >= 0 else "lowers"
    size = abs(points) * 100
    amount = f"{size:.0f} points" if size >= 1 else "less than a point"
    return f"{feature_label(feature)} is {format_value(value)}: {direction} the probability by {amount}"


def top_reasons(
    points: np.ndarray, X: pd.DataFrame, n: int = 5
) -> list[list[dict[str, object]]]:
    """Per row, the ``n`` features with the largest absolute contribution, as reason dicts."""
    order = np.argsort(-np.abs(points), axis=1, kind="stable")[:, :n]
    cols = list(X.columns)
    values = X.to_numpy(dtype=object)
    out = []
    for i in range(len(X)):
        row = []
        for j in order[i]:
            v = values[i, j]
            v = None if v is None or (isinstance(v, float) and np.isnan(v)) else v
            row.append(
                {
                    "feature": cols[j],
                    "value": v.item() if isinstance(v, np.generic) else v,
                    "contribution": float(points[i, j]),
                    "text": reason_sentence(cols[j], v, float(points[i, j])),
                }
            )
        out.append(row)
    return out


def shap_summary_plot(contributions: Contributions, X: pd.DataFrame, path: str, max_display: int = 20) -> None:
    """Write a SHAP beeswarm summary plot of ``contributions`` (any unit) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    shown = X.copy()
    for c in shown.columns:
        if not pd.api.types.is_numeric_dtype(shown[c]):
            shown[c] = shown[c].astype("category").cat.codes.replace(-1, np.nan).astype(float)
    plt.figure()
    shap.summary_plot(contributions.values, shown, max_display=max_display, show=False)
    plt.title(f"SHAP values ({contributions.unit})")
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close("all")
