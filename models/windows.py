"""Windows from the data: the prediction horizon a task's own decision times call for.

A task's :meth:`~models.tasks.TaskDefinition.decision_durations` gives, for each entity decided
before the cutoff, the time from its creation to its decision (a lead converted or disqualified,
a deal closed), indexed by the creation time. :func:`choose_horizon` turns them into a horizon:

* a high quantile (``quantile``, 90% by default) of the decision times,
* rounded **up** to whole days below two weeks and to whole weeks from two weeks on,
* clamped to ``[min_days, max_days]`` (7 and 182 days by default) and to a quarter of the
  history (``history``), so that a time fold still has room to fit, calibrate and evaluate.

**Right-censoring.** An export only shows the decisions made before the cutoff, so the entities
created in its last months are decided fast or not at all: a quantile over every decided entity is
biased towards short times, more so the younger the export. The quantile is therefore taken over the
*cohort* created at least ``max_days`` before the cutoff, whose decisions up to ``max_days`` are all
observable (and counted as ``max_days`` beyond it, where the horizon is clamped anyway), as long as
that cohort holds at least ``min_decided`` decisions. A younger export falls back to every decided
entity, and the :class:`Horizon` says so in its ``note`` (a lower bound: the horizon may be short).
Only decisions before the cutoff are ever read, so nothing after it reaches the choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.errors import FunnelcastError

__all__ = ["Horizon", "NoDecisions", "choose_horizon"]

DAY = pd.Timedelta(days=1)


class NoDecisions(FunnelcastError, ValueError):
    """Too few decided records before the cutoff to choose a horizon from; names what was found."""

    def __init__(self, found: int, needed: int, what: str = "records"):
        self.found, self.needed = found, needed
        super().__init__(f"only {found} {what} were decided (converted, won, lost or disqualified) before the "
                         f"cutoff: at least {needed} are needed to choose the horizon from the data; pass "
                         "--horizon (e.g. --horizon 30d) or train on a longer export")


@dataclass(frozen=True)
class Horizon:
    """A chosen horizon, where it came from, and what it was chosen from."""

    days: int
    source: str  # "data" or "user"
    #: The quantile of the decision times before rounding and clamping (days; None for "user").
    quantile_days: float | None = None
    decided: int = 0
    note: str = ""

    def params(self) -> dict[str, object]:
        """What a training run logs about its horizon."""
        out: dict[str, object] = {"horizon_days": self.days, "horizon_source": self.source}
        if self.quantile_days is not None:
            out["horizon_quantile_days"] = round(self.quantile_days, 1)
            out["horizon_decided"] = self.decided
        return out

    def describe(self) -> str:
        if self.source == "user":
            return f"horizon {self.days}d (set by the user)"
        text = (f"horizon {self.days}d chosen from the data (90% of {self.decided} decisions within "
                f"{self.quantile_days:.1f} days)")
        return f"{text}; {self.note}" if self.note else text


def _round_up(days: float) -> int:
    """Whole days below two weeks, whole weeks from two weeks on (always up)."""
    whole = max(1, math.ceil(days - 1e-9))
    return whole if whole < 14 else 7 * math.ceil(whole / 7)


def choose_horizon(durations: pd.Series, cutoff: pd.Timestamp, *, quantile: float = 0.9, min_days: int = 7,
                   max_days: int = 182, history: pd.Timedelta | None = None, min_decided: int = 30) -> Horizon:
    """The horizon of the decision times ``durations`` (timedeltas, indexed by creation time; see the
    module docstring for the quantile, the rounding, the bounds and right-censoring).

    Raises :class:`NoDecisions` when fewer than ``min_decided`` entities were decided."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), not {quantile!r}")
    if not 1 <= min_days <= max_days:
        raise ValueError(f"need 1 <= min_days <= max_days, not {min_days!r}, {max_days!r}")
    created = pd.DatetimeIndex(durations.index)
    days = durations.to_numpy(dtype="timedelta64[ns]") / np.timedelta64(1, "D")
    ok = np.isfinite(days) & (days >= 0) & np.asarray(created + pd.to_timedelta(days, unit="D") <= cutoff)
    days, created = days[ok], created[ok]
    if len(days) < min_decided:
        raise NoDecisions(int(len(days)), min_decided)
    note = ""
    old = np.asarray(created <= cutoff - pd.Timedelta(days=max_days))
    if old.sum() >= min_decided:
        sample = np.minimum(days[old], max_days)
    else:
        sample = days
        note = (f"only {int(old.sum())} decisions of records created over {max_days} days before the cutoff: "
                "chosen from every decision, which favours the fast ones in a young export")
    q = float(np.quantile(sample, quantile))
    upper = max_days
    if history is not None:
        upper = max(min_days, min(max_days, int(history / DAY) // 4))
        if upper < max_days and _round_up(q) > upper:
            note = "; ".join(filter(None, [note, f"clamped to a quarter of the {int(history / DAY)} days of history"]))
    chosen = int(min(max(_round_up(q), min_days), upper))
    return Horizon(days=chosen, source="data", quantile_days=q, decided=int(len(sample)), note=note)
