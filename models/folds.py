"""One time fold for every task: fit / calibrate / evaluate windows with the horizon gap.

With ``last`` the latest snapshot time whose horizon ended by the cutoff (its label is
known) and ``h`` the horizon, a split holds:

* **evaluate**: the snapshots of the latest ``evaluate`` days, ``eval_start <= t <= last``;
* **calibrate**: the ``calibrate`` days of snapshots ending ``h`` before ``eval_start``
  (so no calibration label looks into the evaluation window), ``cal_start < t <= cal_end``;
* **fit**: everything earlier, ``t <= cal_start``.

The final split (:meth:`TimeFold.final`) has no evaluation window: its calibration window
ends at ``last``. Rolling splits (:meth:`TimeFold.splits`) step back one evaluation window
at a time (time-ordered cross-validation); :meth:`TimeFold.origins` gives backtest origins.
Durations are written ``"91d"`` or ``"13w"`` (or a number of days) and parsed by
:func:`parse_duration` only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from features.errors import FunnelcastError

__all__ = ["InvalidFold", "Split", "TimeFold", "parse_duration"]

DAY = pd.Timedelta(days=1)
_DURATION = re.compile(r"^\s*(\d+)\s*([dw])\s*$")


class InvalidFold(FunnelcastError, ValueError):
    """A fold setting that cannot be used, or a history too short for the fold; names the value."""

    def __init__(self, what: str, value: object, reason: str):
        self.what, self.value, self.reason = what, value, reason
        super().__init__(f"{what} {value!r}: {reason}")


def parse_duration(value: str | int | pd.Timedelta, what: str = "duration") -> pd.Timedelta:
    """``"91d"``, ``"13w"``, ``91`` (days) or a Timedelta, as a whole number of days >= 0."""
    if isinstance(value, pd.Timedelta):
        days = value / DAY
    elif isinstance(value, bool):
        raise InvalidFold(what, value, "is not a duration; write it as days or weeks, e.g. '91d' or '13w'")
    elif isinstance(value, int):
        days = value
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise InvalidFold(what, value, "is not a duration; write it as days or weeks, e.g. '91d' or '13w'")
        days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
    if days < 0 or days != int(days):
        raise InvalidFold(what, value, "must be a whole, non-negative number of days")
    return pd.Timedelta(days=int(days))


def _days(td: pd.Timedelta) -> str:
    return f"{int(td / DAY)}d"


def _span(ts: list[pd.Timestamp]) -> str:
    return f"{ts[0].date()}..{ts[-1].date()} ({len(ts)})" if ts else "none"


@dataclass(frozen=True)
class Split:
    """One split's windows over snapshot times (see the module docstring)."""

    fit: list[pd.Timestamp]
    calibrate: list[pd.Timestamp]
    evaluate: list[pd.Timestamp]
    #: What the fit may know: the start of the evaluation window (the cutoff for the final split).
    cutoff: pd.Timestamp
    #: The fit rows' last snapshot time (the calibration window starts after it).
    calibrate_start: pd.Timestamp

    def describe(self) -> dict[str, str]:
        return {"fit": _span(self.fit), "calibrate": _span(self.calibrate), "evaluate": _span(self.evaluate)}


class TimeFold:
    """Validated fold settings: ``horizon`` (label window), ``evaluate`` and ``calibrate`` lengths."""

    def __init__(self, horizon: str | int | pd.Timedelta = "91d", evaluate: str | int | pd.Timedelta = "91d",
                 calibrate: str | int | pd.Timedelta = "91d"):
        self.horizon = parse_duration(horizon, "horizon")
        self.evaluate = parse_duration(evaluate, "evaluate")
        self.calibrate = parse_duration(calibrate, "calibrate")
        if self.horizon < DAY:
            raise InvalidFold("horizon", horizon, "must be at least one day")
        if self.calibrate < DAY:
            raise InvalidFold("calibrate", calibrate, "must be at least one day")

    def __repr__(self) -> str:
        return f"TimeFold(horizon={_days(self.horizon)!r}, evaluate={_days(self.evaluate)!r}, " \
               f"calibrate={_days(self.calibrate)!r})"

    def describe(self) -> dict[str, str]:
        return {"horizon": _days(self.horizon), "evaluate": _days(self.evaluate), "calibrate": _days(self.calibrate)}

    def labelled(self, times: Sequence[pd.Timestamp], cutoff: pd.Timestamp | None = None) -> list[pd.Timestamp]:
        """The sorted ``times`` whose horizon ended by ``cutoff`` (all of them without one)."""
        ts = sorted(set(times))
        return ts if cutoff is None else [t for t in ts if t + self.horizon <= cutoff]

    def _split(self, times: list[pd.Timestamp], evaluate: pd.Timedelta, cutoff: pd.Timestamp | None) -> Split:
        if not times:
            raise InvalidFold("snapshot times", "none", "no snapshot has a complete horizon before the cutoff")
        last = times[-1]
        eval_start = last - evaluate + DAY if evaluate else None
        cal_end = eval_start - self.horizon if eval_start is not None else last
        cal_start = cal_end - self.calibrate
        split = Split(
            fit=[t for t in times if t <= cal_start],
            calibrate=[t for t in times if cal_start < t <= cal_end],
            evaluate=[t for t in times if t >= eval_start] if eval_start is not None else [],
            cutoff=eval_start if eval_start is not None else (cutoff if cutoff is not None else last),
            calibrate_start=cal_start,
        )
        if not split.fit or not split.calibrate:
            raise InvalidFold(
                "snapshot times", f"{times[0].date()}..{last.date()}",
                f"not enough history for a time split with {self!r}: the fit or calibration window is empty",
            )
        return split

    def split(self, times: Sequence[pd.Timestamp], cutoff: pd.Timestamp | None = None) -> Split:
        """The evaluation split of the snapshot ``times`` labelled by ``cutoff``."""
        if not self.evaluate:
            raise InvalidFold("evaluate", _days(self.evaluate), "an evaluation split needs an evaluation window")
        return self._split(self.labelled(times, cutoff), self.evaluate, cutoff)

    def final(self, times: Sequence[pd.Timestamp], cutoff: pd.Timestamp | None = None) -> Split:
        """The final model's split: no evaluation window, calibration on the latest labelled times."""
        return self._split(self.labelled(times, cutoff), pd.Timedelta(0), cutoff)

    def splits(self, times: Sequence[pd.Timestamp], cutoff: pd.Timestamp | None = None, n: int = 3,
               evaluate: str | int | pd.Timedelta | None = None) -> list[Split]:
        """Up to ``n`` rolling evaluation splits, oldest first, each evaluating just before the next;
        those without enough history are left out (none at all raises InvalidFold)."""
        if n < 1:
            raise InvalidFold("n", n, "must be at least 1")
        window = self.evaluate if evaluate is None else parse_duration(evaluate, "evaluate")
        if not window:
            raise InvalidFold("evaluate", evaluate, "rolling splits need an evaluation window")
        ts = self.labelled(times, cutoff)
        out: list[Split] = []
        for _ in range(n):
            try:
                split = self._split(ts, window, cutoff)
            except InvalidFold:
                if out:
                    break
                raise
            out.insert(0, split)
            ts = [t for t in ts if t < split.evaluate[0]]
        return out

    def origins(self, cutoff: pd.Timestamp, span: str | int | pd.Timedelta, every: str | int | pd.Timedelta,
                ) -> list[pd.Timestamp]:
        """Backtest origins every ``every`` over ``span``, the latest a horizon before ``cutoff``, oldest first."""
        step = parse_duration(every, "every")
        if step < DAY:
            raise InvalidFold("every", every, "must be at least one day")
        last = (cutoff - self.horizon).floor("D")
        n = int(parse_duration(span, "span") / step)
        return [last - k * step for k in range(n, -1, -1)]
