"""Batch scoring: every lead open at ``as_of``, scored by the registered champion."""

from __future__ import annotations

import pandas as pd

from features.contract import Export
from features.pit import open_leads
from models.scorer import LeadScorer

N_REASONS = 5


def score_open_leads(export: Export, scorer: LeadScorer, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per lead open at ``as_of``, best first: scores, expected value and reasons as text."""
    leads = open_leads(export.leads, as_of)
    scored = scorer.score(leads, export.accounts, export.activities, as_of, n_reasons=N_REASONS)
    out = scored[["lead_id", "probability", "score", "grade", "expected_value"]].copy()
    for k in range(N_REASONS):
        out[f"reason_{k + 1}"] = [r[k]["text"] if len(r) > k else "" for r in scored["reasons"]]
    out["warnings"] = ["; ".join(w) for w in scored["warnings"]]
    return out.sort_values(["probability", "lead_id"], ascending=[False, True], ignore_index=True)
