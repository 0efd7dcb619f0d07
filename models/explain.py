"""SHAP in one place: TreeSHAP contributions, their units, and reasons people can read.

Contributions come from LightGBM's ``pred_contrib`` (TreeSHAP, the same values as
``shap.TreeExplainer`` and much faster). They are in the model's raw **log-odds**. After
Platt calibration (linear in log-odds) they are rescaled to **probability points** so that
``base probability + sum of points = predicted probability`` exactly: each feature gets
its share of the log-odds, times the secant slope of the sigmoid between base and score.
This module is the only one that imports ``shap`` (for plots).

Linear SHAP of the logistic rung is ``coef * (design - mean)``; :func:`design_rows` computes the
design of a few rows with numpy lookups compiled from the fitted scikit-learn transformer (the
same numbers: its per-column pipelines cost ~50 ms for one lead, most of a request).
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


# ---------------------------------------------------------------- the linear rung's design, compiled
#: A compiled design per fitted ColumnTransformer (None: it has a part this module does not compile).
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_UNSEEN = "\x00 a category never seen \x00"


def _one_hot_rows(encoder, column: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Row vectors of a fitted OneHotEncoder by value, and the unseen value's, computed once by
    the encoder itself (so pooled rare categories and unseen values come out as it encodes them)."""
    cats = [*encoder.categories_[0], _UNSEEN]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unseen value: "encoded as all zeros" (or infrequent)
        rows = encoder.transform(pd.DataFrame({column: np.array(cats, dtype=object)}))
    rows = np.asarray(rows.toarray() if hasattr(rows, "toarray") else rows, dtype=float)
    return {c: rows[i] for i, c in enumerate(cats[:-1])}, rows[-1]


@dataclass
class _Design:
    """A compiled design: categorical blocks by lookup, every numeric column in a few array operations."""

    width: int
    categorical: list[tuple[str, slice, dict[str, np.ndarray], np.ndarray]]
    numeric: list[str]
    func: Callable | None  # the log transform of the skewed columns (one function for all of them)
    func_mask: np.ndarray  # numeric columns it applies to
    fill: np.ndarray  # median per numeric column
    value_at: np.ndarray  # output position of each numeric column's value
    indicator_of: np.ndarray  # numeric columns with a missing indicator, and its output position
    indicator_at: np.ndarray
    scaled_at: np.ndarray  # output positions of every numeric value and indicator, and their scaler
    mean: np.ndarray
    scale: np.ndarray
    positions: dict = field(default_factory=dict)  # the last frame layout seen: its columns -> positions

    def rows(self, X: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(X), self.width), dtype=float)
        key = tuple(X.columns)
        positions = self.positions.get(key)
        if positions is None:  # the same columns in the same order on every call of a served model
            positions = _positions(X, [c for c, *_ in self.categorical] + self.numeric)
            self.positions = {key: positions}
        values = X.to_numpy(dtype=object)[:, positions]  # see _positions
        for k, (_, at, table, unseen) in enumerate(self.categorical):
            keys = ("(missing)" if v is None or v is pd.NA or v != v else str(v) for v in values[:, k])
            out[:, at] = np.array([table.get(k, unseen) for k in keys], dtype=float).reshape(len(X), -1)
        if self.numeric:
            numeric = values[:, len(self.categorical):]
            dtypes = X.dtypes.to_numpy()[positions[len(self.categorical):]]
            if all(isinstance(t, np.dtype) and t.kind in "fiub" for t in dtypes):  # numpy numbers: no pd.NA to map
                x = numeric.astype(float)
            else:
                x = X[self.numeric].to_numpy(dtype=float, na_value=np.nan, copy=True)  # written below
            if self.func is not None:
                x[:, self.func_mask] = self.func(x[:, self.func_mask])
            missing = np.isnan(x)
            out[:, self.value_at] = np.where(missing, self.fill, x)
            out[:, self.indicator_at] = missing[:, self.indicator_of]
            out[:, self.scaled_at] = (out[:, self.scaled_at] - self.mean) / self.scale
        return out


def _positions(X: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Where ``columns`` are in ``X``. For a wide frame of few rows, one ``to_numpy`` of the whole
    frame and a take of these positions cost a third of selecting the columns first (which copies
    them into a new frame); the values are the same objects either way."""
    positions = X.columns.get_indexer(columns)
    if (positions < 0).any():
        raise KeyError(f"columns not in the frame: {[c for c, i in zip(columns, positions) if i < 0]}")
    return positions


def _numeric_steps(pipeline) -> tuple[Callable | None, Any, Any] | None:
    """(function, SimpleImputer, StandardScaler) of a ``[FunctionTransformer] + imputer + scaler`` pipeline."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    steps = [s for _, s in pipeline.steps]
    func = None
    if steps and isinstance(steps[0], FunctionTransformer):
        if steps[0].kw_args or steps[0].validate:
            return None
        func, steps = steps[0].func, steps[1:]
    if (len(steps) != 2 or not isinstance(steps[0], SimpleImputer) or steps[0].strategy != "median"
            or not isinstance(steps[1], StandardScaler) or steps[1].scale_ is None or steps[1].mean_ is None):
        return None
    return func, steps[0], steps[1]


def _compile(design) -> _Design | None:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    cat, numeric, funcs, func_cols, fill, value_at, ind_of, ind_at, scaled_at, mean, scale = ([] for _ in range(11))
    width = 0
    for _, part, columns in design.transformers_:
        if isinstance(part, str) and part == "drop":
            continue
        if len(columns) != 1:
            return None
        if isinstance(part, OneHotEncoder):
            table, unseen = _one_hot_rows(part, columns[0])
            cat.append((columns[0], slice(width, width + len(unseen)), table, unseen))
            width += len(unseen)
            continue
        steps = _numeric_steps(part) if isinstance(part, Pipeline) else None
        if steps is None:
            return None
        func, imputer, scaler = steps
        if func is not None:
            funcs.append(func)
        func_cols.append(func is not None)
        j = len(numeric)
        numeric.append(columns[0])
        fill.append(float(imputer.statistics_[0]))
        value_at.append(width)
        n_out = 1
        if imputer.indicator_ is not None and len(imputer.indicator_.features_):
            ind_of.append(j)
            ind_at.append(width + 1)
            n_out = 2
        if len(scaler.mean_) != n_out:
            return None
        scaled_at += range(width, width + n_out)
        mean += list(scaler.mean_)
        scale += list(scaler.scale_)
        width += n_out
    if len(set(funcs)) > 1:
        return None
    return _Design(width, cat, numeric, funcs[0] if funcs else None, np.array(func_cols, dtype=bool),
                   np.array(fill), np.array(value_at, dtype=int), np.array(ind_of, dtype=int),
                   np.array(ind_at, dtype=int), np.array(scaled_at, dtype=int), np.array(mean), np.array(scale))


def design_rows(design, X: pd.DataFrame) -> np.ndarray | None:
    """The fitted ColumnTransformer ``design`` applied to the rows of ``X`` (its columns by name):
    one-hot categories (missing as ``(missing)``, as the logistic rung writes them) and scaled
    numerics, without scikit-learn's per-call overhead. ``None`` when the design has a part not
    compiled here (the caller then uses ``design.transform``)."""
    try:
        compiled = _COMPILED[design]
    except KeyError:
        compiled = _COMPILED[design] = _compile(design)
    return None if compiled is None else compiled.rows(X)


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
    "days_to_month_end": "Days to the end of the month",
    "days_to_quarter_end": "Days to the end of the quarter",
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
    "activity": ("Activities", "activity"),
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


def activity_label(kind: str, direction: str | None = None, singular: bool = False) -> str:
    """An activity as people say it: ``("call", "outbound")`` -> "call made", ``("meeting", None)`` -> "meeting"."""
    token = f"{kind}_{direction}" if isinstance(direction, str) and f"{kind}_{direction}" in _ACTIVITIES else kind
    return _activity(token, singular)


def feature_label(name: str) -> str:
    """A plain label for a feature column: ``meeting_30d`` -> "Meetings in the last 30 days"."""
    if name in _LABELS:
        return _LABELS[name]
    if m := re.fullmatch(r"days_since_(.+)", name):
        return f"Days since the last {_activity(m[1], singular=True)}"
    if m := re.fullmatch(r"days_in_(.+)", name):
        return f"Days spent in {_humanize(m[1])}"
    if m := re.fullmatch(r"(.+)_per_30d", name):
        return f"{_activity(m[1])} per month so far"
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
        # people read 808 days and 3,878 employees, 4.4 meetings and 0.54 calls (no false precision)
        return f"{value:.2f}" if abs(value) < 1 else f"{value:,.1f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def reason_sentence(feature: str, value: object, points: float) -> str:
    """E.g. ``"Source is referral: raises the probability by 9 points"``, or for a number
    ``"Meetings in the last 30 days: 4, raises the probability by 2 points"``."""
    direction = "raises" if points >= 0 else "lowers"
    size = abs(points) * 100
    amount = ("1 point" if round(size) == 1 else f"{size:.0f} points") if size >= 1 else "less than a point"
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    missing = value is None or (isinstance(value, float) and np.isnan(value))
    if missing and (m := re.fullmatch(r"days_since_(.+)", feature)):  # never happened, not "unknown"
        return f"No {_activity(m[1], singular=True)} yet: {direction} the probability by {amount}"
    if numeric and not (isinstance(value, float) and np.isnan(value)):
        return f"{feature_label(feature)}: {format_value(value)}, {direction} the probability by {amount}"
    return f"{feature_label(feature)} is {format_value(value)}: {direction} the probability by {amount}"


def top_reasons(
    points: np.ndarray, X: pd.DataFrame, n: int = 5
) -> list[list[dict[str, object]]]:
    """Per row, the ``n`` features with the largest absolute contribution, as reason dicts."""
    order = np.argsort(-np.abs(points), axis=1, kind="stable")[:, :n]
    cols = list(X.columns)
    shown = np.unique(order)
    if len(shown) * 4 < len(cols):  # a few rows: only the columns shown (each to objects, as the frame's would be)
        values = np.empty((len(X), len(cols)), dtype=object)
        for j in shown:
            values[:, j] = X.iloc[:, j].to_numpy(dtype=object)
    else:
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
