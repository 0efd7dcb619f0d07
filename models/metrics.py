"""Evaluation metrics for probability scores (one place, used by training and benchmarks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over equal-frequency bins, weighted by bin size."""
    table = calibration_table(y, p, bins)
    if table.empty:
        return float("nan")
    return float((table["count"] * (table["observed"] - table["predicted"]).abs()).sum() / table["count"].sum())


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per equal-frequency bin of ``p``: count, mean predicted probability, observed rate."""
    frame = pd.DataFrame({"y": np.asarray(y, dtype=float), "p": np.asarray(p, dtype=float)})
    if frame.empty:
        return pd.DataFrame(columns=["count", "predicted", "observed"])
    frame["bin"] = pd.qcut(frame["p"].rank(method="first"), q=min(bins, len(frame)), labels=False)
    g = frame.groupby("bin")
    return pd.DataFrame({"count": g.size(), "predicted": g["p"].mean(), "observed": g["y"].mean()})


def top_decile_capture(y: np.ndarray, p: np.ndarray) -> float:
    """Share of all positives found in the 10% highest-scored rows."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    if y.sum() == 0:
        return float("nan")
    k = max(1, int(np.ceil(0.1 * len(y))))
    top = np.argsort(-p, kind="stable")[:k]
    return float(y[top].sum() / y.sum())


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, Brier, log loss, calibration error and top-decile capture."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "calibration_error": expected_calibration_error(y, p),
        "top_decile_capture": top_decile_capture(y, p),
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "n": float(len(y)),
    }
