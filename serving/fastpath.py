"""The fast path of ``POST /v1/leads/score`` for small batches: request records to scores and
reasons without a pandas frame per column.

For up to :data:`FAST_MAX_LEADS` leads, :func:`fast_lead_scores` types the validated request
records value by value (:func:`features.fastrow.typed_rows`, the export loader's rules), builds
each lead's feature row (:func:`features.fastrow.lead_feature_rows`, the same features as
:func:`features.leads.lead_features`) and one feature frame of numpy columns, as that function
builds it, which the model (whichever candidate won) explains as ever; the contributions become the same probability, score, grade, expected value, reasons and
warnings as :meth:`models.scorer.LeadScorer.score_with_features`. It returns ``None`` for anything it
does not cover (a record linked to another parent, a duplicate id, a value or rule the loader
checks, a lead created at or after ``as_of``, a scorer of another kind), and the route then takes
the frame path, which answers (or refuses) exactly as before. ``tests/serving/test_fastpath.py``
is the oracle: both paths on the sample's leads, field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.fastrow import LeadRows, lead_feature_rows, typed_rows
from models.explain import feature_label, reason_sentence, to_probability
from models.scorer import LeadScorer
from serving.records import custom_kinds
from serving.schemas.leads import LeadScoreItem

__all__ = ["FAST_MAX_LEADS", "FastScores", "fast_lead_scores"]

#: Batches up to this many leads take the fast path (larger ones: pandas' per-column cost is spread).
FAST_MAX_LEADS = 8


@dataclass(frozen=True)
class FastScores:
    """What the route needs of a scoring: per lead (in request order) its id, probability, score,
    grade, expected value, base probability, reasons and warnings; and the feature rows."""

    lead_id: list[str]
    probability: list[float]
    score: list[int]
    grade: list[str]
    expected_value: list[float]
    base_probability: list[float]
    reasons: list[list[dict[str, Any]]]
    warnings: list[list[str]]
    rows: LeadRows


def _dumped(record: Any) -> dict:
    return record.model_dump(mode="python")


def _as_sent(row: dict) -> dict:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


def _request_records(items: Sequence[LeadScoreItem]) -> tuple[list[dict], list[dict], list[dict]] | None:
    """The leads, accounts (each once) and activities of a request as dicts, linked as
    :class:`serving.records.RequestRecords` links them; ``None`` where that would refuse one."""
    leads, accounts, activities = [], [], []
    shared: dict[str, dict] = {}
    for it in items:
        lead = _dumped(it.lead)
        lead_id = it.lead.lead_id.strip()
        if it.account is not None:
            acc = _dumped(it.account)
            key = str(acc["account_id"]).strip()
            if key in shared:
                if _as_sent(shared[key]) != _as_sent(acc):
                    return None  # conflicting copies of one account: the frame path's 422
            else:
                shared[key] = acc
                accounts.append(acc)
            if not _link(lead, "account_id", key):
                return None
        leads.append(lead)
        for activity in it.activities:
            act = _dumped(activity)
            if not _link(act, "lead_id", lead_id):
                return None
            activities.append(act)
    return leads, accounts, activities


def _link(row: dict, column: str, parent: str) -> bool:
    sent = row.get(column)
    if sent is None or not str(sent).strip():
        row[column] = parent
        return True
    return str(sent).strip() == parent


def _reasons(points: np.ndarray, rows: LeadRows, n: int) -> list[list[dict[str, Any]]]:
    """:func:`models.explain.top_reasons` of the rows."""
    order = np.argsort(-np.abs(points), axis=1, kind="stable")[:, :n]
    out = []
    for i, row in enumerate(rows.values):
        reasons = []
        for j in order[i].tolist():
            v = row[j]
            v = None if v is None or (isinstance(v, float) and v != v) else v
            name, p = rows.names[j], float(points[i, j])
            reasons.append({"feature": name, "label": feature_label(name), "value": v, "contribution": p,
                            "text": reason_sentence(name, v, p)})
        out.append(reasons)
    return out


def _warnings(scorer: LeadScorer, X: pd.DataFrame, rows: LeadRows, leads: list[dict],
              accounts: list[dict]) -> list[list[str]]:
    """:meth:`LeadScorer._warnings`: unseen categories (as the model tells them), missing watched
    fields, accounts named but not sent; each row's in that order."""
    index = {n: j for j, n in enumerate(rows.names)}
    watched = [*scorer.spec.lead_categoricals, *(f"account_{c}" for c in scorer.spec.account_categoricals)]
    out: list[list[str]] = [[] for _ in rows.values]
    for col, mask in scorer.classifier.unseen_categories(X).items():
        for i in np.flatnonzero(mask):
            out[i].append(f"{col} {rows.values[i][index[col]]!r} was not seen in training: scored as unknown")
    known_accounts = {a["account_id"] for a in accounts}
    for i, (lead, row) in enumerate(zip(leads, rows.values, strict=True)):
        out[i] += [f"{c} is missing: scored as unknown" for c in watched if not isinstance(row[index[c]], str)]
        a = lead["account_id"]
        if isinstance(a, str) and a not in known_accounts:
            out[i].append(f"account {a!r} was not sent: firmographics scored as unknown")
    return out


def _value_if_converted(scorer: LeadScorer, rows: LeadRows) -> list[float]:
    if "account_industry" not in rows.names:
        return [scorer.value_overall] * len(rows.values)
    j = rows.names.index("account_industry")
    out = []
    for row in rows.values:
        key = row[j]
        v = scorer.value_if_converted.get(key) if isinstance(key, str) else None
        out.append(scorer.value_overall if v is None or v != v else v)
    return out


def fast_lead_scores(items: Sequence[LeadScoreItem], scorer: Any, as_of: pd.Timestamp,
                     n_reasons: int = 5) -> FastScores | None:
    """The scores of a small batch, the same as the frame path's, or ``None`` (take the frame path)."""
    if not isinstance(scorer, LeadScorer) or not 0 < len(items) <= FAST_MAX_LEADS:
        return None
    records = _request_records(items)
    if records is None:
        return None
    kinds = custom_kinds(scorer.spec)
    typed = [typed_rows(t, r, kinds.get(t, {})) for t, r in zip(("leads", "accounts", "activities"), records, strict=True)]
    if any(t is None for t in typed):
        return None
    leads, accounts, activities = typed
    as_of_ns = as_of.value
    ids = [lead["lead_id"] for lead in leads]
    if len(set(ids)) < len(ids) or any(lead["created_at"] >= as_of_ns for lead in leads):
        return None  # duplicates and leads not yet created: the frame path's 422 names them
    scorer.check_as_of(as_of)  # an as_of before the training cutoff: the same 422 either way
    rows = lead_feature_rows(leads, accounts, activities, as_of, scorer.context, scorer.spec)
    if rows is None or rows.names != list(scorer.classifier.feature_names_) or any(
            c not in rows.names for c in scorer.spec.categorical_features):
        return None
    return _scored(scorer, rows, leads, accounts, n_reasons)


def _scored(scorer: LeadScorer, rows: LeadRows, leads: list[dict], accounts: list[dict], n_reasons: int) -> FastScores:
    X = rows.frame()  # the model's own predict and contributions, whichever candidate it is
    contrib = to_probability(scorer.explain(X))
    p = contrib.base + contrib.values.sum(axis=1)
    value = np.asarray(_value_if_converted(scorer, rows), dtype=float)
    reasons = _reasons(contrib.values, rows, n_reasons) if n_reasons else [[] for _ in rows.values]
    return FastScores(lead_id=list(rows.lead_ids), probability=p.tolist(), score=np.rint(p * 100).astype(int).tolist(),
                      grade=scorer.grade(p).tolist(), expected_value=(p * value).tolist(),
                      base_probability=contrib.base.tolist(), reasons=reasons,
                      warnings=_warnings(scorer, X, rows, leads, accounts), rows=rows)
