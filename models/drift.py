"""Drift: how far recent data has moved from what a model was trained on.

A *reference profile* is taken at training time from the model's latest training rows and
saved with the model: per feature, the bins (numeric: deciles of the reference; categorical:
its most frequent values plus "other") with their shares, and the missing rate; and the
same for the model's scores. :func:`drift_report` compares new rows with it:

* **PSI**, the population stability index, ``sum((new - ref) * ln(new / ref))`` over the
  bins (missing values being a bin of their own); by the usual rule of thumb < 0.1 is
  stable, 0.1-0.25 a moderate shift, > 0.25 a major one;
* the **missing-rate change** (new minus reference, in share points);
* for the score: its PSI and the change of its mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: Shares are floored at this value inside the PSI's logarithm (an empty bin is not infinite drift).
PSI_EPSILON = 1e-4
#: PSI above which a feature is flagged.
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25
_MISSING, _OTHER = "__missing__", "__other__"


def _numeric_edges(values: np.ndarray, bins: int) -> list[float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return []
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(e) for e in edges]


def _numeric_shares(values: np.ndarray, edges: Sequence[float]) -> dict[str, float]:
    n = len(values)
    missing = ~np.isfinite(values)
    idx = np.searchsorted(np.asarray(edges, dtype=float), values[~missing], side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    shares = {str(i): float(c) / n for i, c in enumerate(counts)} if n else {}
    shares[_MISSING] = float(missing.sum()) / n if n else 0.0
    return shares


def _categorical_shares(values: pd.Series, categories: Sequence[str]) -> dict[str, float]:
    n = len(values)
    text = values.astype("str").where(values.notna())
    shares = {c: float((text == c).sum()) / n for c in categories} if n else {}
    known = text.isin(list(categories))
    shares[_OTHER] = float((text.notna() & ~known).sum()) / n if n else 0.0
    shares[_MISSING] = float(text.isna().sum()) / n if n else 0.0
    return shares


def reference_profile(
    X: pd.DataFrame, scores: np.ndarray, categorical: Sequence[str] = (), bins: int = 10, top_categories: int = 20
) -> dict[str, Any]:
    """The reference distributions of a feature frame and its scores (plain JSON-able dicts)."""
    features: dict[str, Any] = {}
    for col in X.columns:
        if col in categorical:
            counts = X[col].dropna().astype("str").value_counts()
            cats = sorted(counts.index[:top_categories].tolist())
            features[col] = {"kind": "categorical", "categories": cats, "shares": _categorical_shares(X[col], cats)}
        else:
            values = pd.to_numeric(X[col], errors="coerce").to_numpy(dtype=float)
            edges = _numeric_edges(values, bins)
            features[col] = {"kind": "numeric", "edges": edges, "shares": _numeric_shares(values, edges)}
    s = np.asarray(scores, dtype=float)
    score_edges = _numeric_edges(s, bins)
    return {
        "rows": int(len(X)),
        "features": features,
        "score": {"edges": score_edges, "shares": _numeric_shares(s, score_edges), "mean": float(np.mean(s)) if len(s) else None},
    }


def psi(reference: dict[str, float], new: dict[str, float]) -> float:
    """Population stability index between two share dicts over the same bins."""
    keys = sorted(set(reference) | set(new))
    e = np.maximum(np.array([reference.get(k, 0.0) for k in keys]), PSI_EPSILON)
    a = np.maximum(np.array([new.get(k, 0.0) for k in keys]), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _level(value: float) -> str:
    return "major" if value > PSI_MAJOR else "moderate" if value > PSI_MODERATE else "stable"


def drift_report(profile: dict[str, Any], X: pd.DataFrame, scores: np.ndarray | None = None) -> dict[str, Any]:
    """Per feature PSI and missing-rate change of ``X`` against ``profile``; the score shift.

    Returns ``{"rows", "reference_rows", "features": DataFrame-like records sorted by PSI,
    "score": {...}}``. A feature of the profile absent from ``X`` is reported fully missing.
    """
    n = len(X)
    rows = []
    for col, ref in profile["features"].items():
        series = X[col] if col in X else pd.Series(np.nan, index=X.index)
        if ref["kind"] == "categorical":
            shares = _categorical_shares(series, ref["categories"])
        else:
            shares = _numeric_shares(pd.to_numeric(series, errors="coerce").to_numpy(dtype=float), ref["edges"])
        value = psi(ref["shares"], shares) if n else float("nan")
        rows.append(
            {
                "feature": col,
                "kind": ref["kind"],
                "psi": value,
                "level": _level(value) if n else "no data",
                "missing_reference": ref["shares"].get(_MISSING, 0.0),
                "missing_recent": shares.get(_MISSING, 0.0),
                "missing_change": shares.get(_MISSING, 0.0) - ref["shares"].get(_MISSING, 0.0),
            }
        )
    rows.sort(key=lambda r: -r["psi"] if np.isfinite(r["psi"]) else 0.0)
    out: dict[str, Any] = {"rows": n, "reference_rows": profile.get("rows"), "features": rows, "score": None}
    if scores is not None and profile.get("score"):
        s = np.asarray(scores, dtype=float)
        ref = profile["score"]
        shares = _numeric_shares(s, ref["edges"])
        value = psi(ref["shares"], shares) if len(s) else float("nan")
        mean = float(np.mean(s)) if len(s) else None
        out["score"] = {
            "psi": value,
            "level": _level(value) if len(s) else "no data",
            "mean_reference": ref.get("mean"),
            "mean_recent": mean,
            "mean_change": (mean - ref["mean"]) if mean is not None and ref.get("mean") is not None else None,
            "rows": int(len(s)),
        }
    return out


def drift_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The per-feature part of a drift report as a table."""
    return pd.DataFrame(report["features"])


def drift_plot(report: dict[str, Any], path: str, top: int = 20) -> None:
    """Bar chart of the largest feature PSIs (with the 0.1 / 0.25 guides) to ``path``."""
    from models.plots import plt

    table = drift_frame(report).head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(table) + 1)))
    colors = ["#c0392b" if v > PSI_MAJOR else "#e67e22" if v > PSI_MODERATE else "#2e86c1" for v in table["psi"]]
    ax.barh(table["feature"], table["psi"], color=colors)
    for x in (PSI_MODERATE, PSI_MAJOR):
        ax.axvline(x, ls="--", color="grey", lw=1)
    score = report.get("score")
    title = "Feature drift (PSI) against the training reference"
    if score:
        title += f"\nscore PSI {score['psi']:.3f}, mean {score['mean_reference']:.3f} -> {score['mean_recent']:.3f}"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("population stability index")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
