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
#: Plain labels of the feature columns: the one table the CLI, the API and the page show (a column
#: not named here is labelled by the patterns of :func:`feature_label`, custom fields by their name).
_LABELS = {
    # leads
    "source": "Source",
    "owner_id": "Owner",
    "seniority": "Contact seniority",
    "country": "Country",
    "budget_k": "Budget (thousands)",
    "campaign": "Campaign",
    "lead_age_days": "Lead age (days)",
    "source_conversion_rate": "Recent conversion rate of this source",
    "owner_conversion_rate": "Recent conversion rate of this owner",
    "owner_open_leads": "Open leads of this owner",
    "activities_total": "Activities so far",
    "days_since_activity": "Days since the last activity",
    # the lead's or deal's account
    "industry": "Industry",
    "employees": "Company size (employees)",
    "annual_revenue": "Company revenue",
    "tech_stack": "Tech stack",
    "account_industry": "Industry",
    "account_country": "Account country",
    "account_employees": "Company size (employees)",
    "account_annual_revenue": "Company revenue",
    "account_tech_stack": "Tech stack",
    "account_age_days": "Account age (days)",
    "account_won_deals": "Deals already won with this account",
    "account_won_amount": "Revenue already won with this account",
    "account_lost_deals": "Deals lost with this account",
    "account_open_opportunities": "Open deals with this account",
    # deals
    "stage": "Stage",
    "stage_index": "Stage number",
    "stage_entries": "Stage changes so far",
    "stage_win_rate": "Win rate of deals in this stage",
    "stage_pace": "Pace through the stages",
    "advances": "Stage advances so far",
    "regressions": "Moves back a stage",
    "age_days": "Deal age (days)",
    "days_in_stage": "Days in the current stage",
    "amount": "Deal amount",
    "amount_changes": "Amount changes",
    "amount_change_ratio": "Amount now against at creation",
    "close_date_pushes": "Close date pushes",
    "close_date_push_days": "Days the close date was pushed",
    "days_to_close_date": "Days to the close date",
    "overdue": "Close date passed",
    "type": "Deal type",
    "product": "Product",
    "owner_open_deals": "Open deals of this owner",
    "owner_tenure_days": "Owner's tenure (days)",
    "owner_win_rate": "Owner's win rate",
    "owner_won_amount": "Revenue won by this owner",
    "owner_won_deals": "Deals won by this owner",
    "lead_age_at_conversion": "Days from lead to deal",
    "lead_source": "Lead source",
    "lead_seniority": "Contact seniority",
    "lead_campaign": "Campaign",
    "lead_budget_k": "Budget (thousands)",
    # accounts (high value)
    "leads_total": "Leads from this account",
    "first_deal_amount": "First deal amount",
    "first_deal_product": "First deal product",
    "is_customer": "Already a customer",
    "days_since_first_win": "Days since the first win",
    "early_activities": "Activities in the first weeks",
    "early_meetings": "Meetings in the first weeks",
    "early_support_tickets": "Support tickets in the first weeks",
    "early_survey_score": "Survey score in the first weeks",
}

#: Activity types (``<type>_<direction>`` as the features name them) as people say them: (plural, singular).
_ACTIVITIES = {
    "activities": ("Activities", "activity"),
    "inbound": ("Inbound touches", "inbound touch"),
    "call_outbound": ("Calls made", "call made"),
    "call_inbound": ("Calls received", "call received"),
    "call": ("Calls", "call"),
    "email_outbound": ("Emails sent", "email sent"),
    "email_inbound": ("Emails received", "email received"),
    "email": ("Emails", "email"),
    "meeting": ("Meetings", "meeting"),
    "demo": ("Demos", "demo"),
    "web_visit_inbound": ("Web visits", "web visit"),
    "web_visit": ("Web visits", "web visit"),
    "event_inbound": ("Events attended", "event attended"),
    "event": ("Events", "event"),
    "quote_sent_outbound": ("Quotes sent", "quote sent"),
    "quote_sent": ("Quotes sent", "quote sent"),
    "contract_sent_outbound": ("Contracts sent", "contract sent"),
    "contract_sent": ("Contracts sent", "contract sent"),
    "support_ticket": ("Support tickets", "support ticket"),
    "support_ticket_inbound": ("Support tickets", "support ticket"),
    "survey": ("Surveys", "survey"),
    "survey_inbound": ("Surveys answered", "survey answered"),
}


def _humanize(token: str) -> str:
    return token.replace("_", " ")


def _activity(token: str, singular: bool = False) -> str:
    plural, one = _ACTIVITIES.get(token, (f"{_humanize(token).capitalize()} activities", f"{_humanize(token)} activity"))
    return one if singular else plural


def feature_label(name: str) -> str:
    """A plain label for a feature column: ``meeting_30d`` -> "Meetings in the last 30 days"."""
    if name in _LABELS:
        return _LABELS[name]
    if m := re.fullmatch(r"days_since_(.+)", name):
        return f"Days since the last {_activity(m[1], singular=True)}"
    if m := re.fullmatch(r"days_in_(.+)", name):
        return f"Days spent in {_humanize(m[1])}"
    if m := re.fullmatch(r"(.+)_(\d+)d", name):
        return f"{_activity(m[1])} in the last {m[2]} days"
    if m := re.fullmatch(r"(.+)_per_week", name):
        return f"{_activity(m[1])} per week since the lead came in"
    if m := re.fullmatch(r"(.+)_total", name):
        return f"{_activity(m[1])} so far"
    if name.startswith("account_"):
        return f"Account {_humanize(name[len('account_'):])}"
    if name.startswith("lead_"):
        return f"Lead {_humanize(name[len('lead_'):])}"
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
    """E.g. ``"Source is referral: raises the probability by 9 points"``, or for a number
    ``"Meetings in the last 30 days: 4, raises the probability by 2 points"``."""
    direction = "raises" if points >= 0 else "lowers"
    size = abs(points) * 100
    amount = ("1 point" if round(size) == 1 else f"{size:.0f} points") if size >= 1 else "less than a point"
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if numeric and not (isinstance(value, float) and np.isnan(value)):
        return f"{feature_label(feature)}: {format_value(value)}, {direction} the probability by {amount}"
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
                    "label": feature_label(cols[j]),
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
