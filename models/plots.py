"""Plots analysts would rather look at than read (matplotlib, written to files)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.metrics import calibration_table  # noqa: E402


def calibration_plot(y: np.ndarray, scores: Mapping[str, np.ndarray], path: str, title: str = "Calibration") -> None:
    """Reliability diagram (observed rate per probability decile) for each named score."""
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6, 7), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for name, p in scores.items():
        t = calibration_table(y, p, bins=10)
        ax.plot(t["predicted"], t["observed"], marker="o", label=name)
        hx.hist(p, bins=30, range=(0, 1), histtype="step", label=name)
    ax.set_ylabel("observed rate")
    ax.set_title(title)
    ax.legend(loc="upper left")
    hx.set_xlabel("predicted probability")
    hx.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
