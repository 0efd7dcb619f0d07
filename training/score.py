"""Batch scoring: every lead open at ``as_of``, scored by the registered champion."""

from __future__ import annotations

import pandas as pd

from features.contract import Export
from features.engine import map_leads
from features.pit import open_leads
from models.scorer import LeadScorer

N_REASONS = 5


def score_open_leads(export: Export, scorer: LeadScorer, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per lead open at ``as_of``, best first: scores, expected value and reasons as text."""
    leads = open_leads(export.leads, as_of)
    # per entity partition in a Dask session (features.engine), else here: the same scorer either way
    scored = map_leads(export, leads, lambda part, accounts, acts: scorer.score(part, accounts, acts, as_of,
                                                                              n_reasons=N_REASONS))
    out = scored[["lead_id", "probability", "score", "grade", "expected_value"]].copy()
    for k in range(N_REASONS):
        out[f"reason_{k + 1}"] = [r[k]["text"] if len(r) > k else "" for r in scored["reasons"]]
    out["warnings"] = ["; ".join(w) for w in scored["warnings"]]
    return out.sort_values(["probability", "lead_id"], ascending=[False, True], ignore_index=True)


# ------------------------------------------------------------------ CSVs people read
#: Float columns read as probabilities or ratios (4 decimals); every other float is money or days (2).
_RATIO_HINTS = ("p_", "probability", "conversion", "drop_off", "rate", "share", "wape", "bias", "coverage", "auc",
                "brier", "lift", "within", "precision", "recall", "psi", "ratio")
_MONEY_EXCEPTIONS = ("p10", "p50", "p90")


def _is_ratio(column: str) -> bool:
    c = column.lower()
    return c not in _MONEY_EXCEPTIONS and any(c.startswith(h) or f"_{h}" in c or c == h.rstrip("_") for h in _RATIO_HINTS)


def rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """Probabilities and ratios to 4 decimals, money and days to 2; other columns as they are."""
    out = frame.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(4 if _is_ratio(str(c)) else 2)
    return out


def _lookup(table: pd.DataFrame | None, key: str, column: str) -> pd.Series | None:
    if table is None or column not in table.columns or table[column].isna().all():
        return None
    return table.drop_duplicates(key).set_index(key)[column]


def with_names(frame: pd.DataFrame, export: Export) -> pd.DataFrame:
    """The names the export has beside the id (lead, deal and account names) and the owner
    (``unassigned`` when a lead or deal has none): what a sales manager reads first."""
    out = frame.copy()
    for key, table in (("opportunity_id", export.opportunities), ("lead_id", export.leads), ("account_id", export.accounts)):
        if key not in out.columns:
            continue
        at = out.columns.get_loc(key) + 1
        extra = {}
        if (names := _lookup(table, key, "name")) is not None and "name" not in out.columns:
            extra["name"] = out[key].map(names)
        if key != "account_id" and "account_id" in table.columns and "account_name" not in out.columns:
            account = out[key].map(table.drop_duplicates(key).set_index(key)["account_id"])
            if (acc_names := _lookup(export.accounts, "account_id", "name")) is not None:
                extra["account_name"] = account.map(acc_names)
        if "owner_id" in table.columns and "owner_id" not in out.columns:
            extra["owner_id"] = out[key].map(table.drop_duplicates(key).set_index(key)["owner_id"]).fillna("unassigned")
        for i, (col, values) in enumerate(extra.items()):
            out.insert(at + i, col, values.to_numpy())
        break
    return out


def readable(frame: pd.DataFrame, as_of: pd.Timestamp, model: str | None = None,
             export: Export | None = None) -> pd.DataFrame:
    """A CSV for people: ``as_of`` and the model (``name@version``) first, the names and owner
    beside the id (when ``export`` is given), numbers rounded (:func:`rounded`)."""
    out = with_names(frame, export) if export is not None else frame.copy()
    context = {"as_of": pd.Timestamp(as_of).isoformat()}
    if model is not None:
        context["model"] = model
    for i, (col, value) in enumerate(context.items()):
        if col in out.columns:
            out = out.drop(columns=col)
        out.insert(i, col, value)
    return rounded(out)
