"""One time fold for every task: fit / calibrate / evaluate windows with the horizon gap.

With ``last`` the latest snapshot time whose horizon ended by the cutoff (its label is
known) and ``h`` the horizon, a split holds:

* **evaluate**: the snapshots of the latest ``evaluate`` days, ``eval_start <= t <= last``;
* **calibrate**: the ``calibrate`` days of snapshots ending ``h`` before ``eval_start``
  (so no calibration label looks into the evaluation window), ``cal_start < t <= cal_end``;
* **fit**: everything earlier, ``t <= cal_start``.

The final split (:meth:`TimeFold.final`) has no evaluation window: its calibration window
ends at ``last``.

**Short histories.** When the history is too short for the configured ``evaluate`` and
``calibrate`` windows (the fit or calibration window would be empty, or ``enough`` refuses the
split, e.g. too few decided records of a class), both shrink together, by steps of the configured
lengths (3/4, 1/2, 1/3, 1/4, 1/6, 1/8), down to the stated minimums ``min_evaluate`` and
``min_calibrate`` (14 days each by default: two snapshot steps of the default 7-day step, and the
shortest window that holds a fortnight of weekly seasonality). When even the minimums fail,
:class:`NotEnoughHistory` names the months of history found, the windows tried and, for the last of
them, what was missing. :meth:`TimeFold.validation` gives the split as known at the start of a
split's evaluation window: its evaluation window (the *validation* window) lies before the
evaluation window, and models are chosen there. Rolling splits (:meth:`TimeFold.splits`) step back one evaluation window
at a time (time-ordered cross-validation); :meth:`TimeFold.origins` gives backtest origins.
Durations are written ``"91d"`` or ``"13w"`` (or a number of days) and parsed by
:func:`parse_duration` only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from features.errors import FunnelcastError

__all__ = ["InvalidFold", "NotEnoughHistory", "Split", "TimeFold", "parse_duration"]

DAY = pd.Timedelta(days=1)
_DURATION = re.compile(r"^\s*(\d+)\s*([dw])\s*$")


class InvalidFold(FunnelcastError, ValueError):
    """A fold setting that cannot be used, or a history too short for the fold; names the value."""

    def __init__(self, what: str, value: object, reason: str):
        self.what, self.value, self.reason = what, value, reason
        super().__init__(f"{what} {value!r}: {reason}")


class NotEnoughHistory(InvalidFold):
    """The history is too short for a time split even at the smallest windows: names what was found
    (months of labelled history, the windows tried) and what the last try was missing."""

    def __init__(self, found: str, tried: list[str], missing: str):
        self.found, self.tried, self.missing = found, tried, missing
        FunnelcastError.__init__(self, f"not enough history for a time split: found {found}; tried evaluation/"
                                 f"calibration windows {', '.join(tried)}; at the smallest, {missing}. Train on a "
                                 "longer export, a later --as-of, or a shorter --horizon")
        self.what, self.value, self.reason = "history", found, missing


#: Steps by which the evaluation and calibration windows shrink on a short history.
SHRINK = (1.0, 0.75, 0.5, 1 / 3, 0.25, 1 / 6, 0.125)

#: A split the caller accepts (None) or refuses, saying what is missing (e.g. "3 conversions in the fit window").
Enough = Callable[["Split"], "str | None"]


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
    #: The window lengths used (smaller than the fold's when the history is short).
    evaluate_days: int = 0
    calibrate_days: int = 0

    def describe(self) -> dict[str, str]:
        return {"fit": _span(self.fit), "calibrate": _span(self.calibrate), "evaluate": _span(self.evaluate)}


class TimeFold:
    """Validated fold settings: ``horizon`` (label window), ``evaluate`` and ``calibrate`` lengths."""

    def __init__(self, horizon: str | int | pd.Timedelta = "91d", evaluate: str | int | pd.Timedelta = "91d",
                 calibrate: str | int | pd.Timedelta = "91d", min_evaluate: str | int | pd.Timedelta = "14d",
                 min_calibrate: str | int | pd.Timedelta = "14d"):
        self.horizon = parse_duration(horizon, "horizon")
        self.evaluate = parse_duration(evaluate, "evaluate")
        self.calibrate = parse_duration(calibrate, "calibrate")
        self.min_evaluate = min(parse_duration(min_evaluate, "min_evaluate"), self.evaluate)
        self.min_calibrate = min(parse_duration(min_calibrate, "min_calibrate"), self.calibrate)
        if self.horizon < DAY:
            raise InvalidFold("horizon", horizon, "must be at least one day")
        if self.calibrate < DAY:
            raise InvalidFold("calibrate", calibrate, "must be at least one day")
        if self.min_calibrate < DAY:
            raise InvalidFold("min_calibrate", min_calibrate, "must be at least one day")

    def __repr__(self) -> str:
        return f"TimeFold(horizon={_days(self.horizon)!r}, evaluate={_days(self.evaluate)!r}, " \
               f"calibrate={_days(self.calibrate)!r})"

    def describe(self) -> dict[str, str]:
        return {"horizon": _days(self.horizon), "evaluate": _days(self.evaluate), "calibrate": _days(self.calibrate)}

    def labelled(self, times: Sequence[pd.Timestamp], cutoff: pd.Timestamp | None = None) -> list[pd.Timestamp]:
        """The sorted ``times`` whose horizon ended by ``cutoff`` (all of them without one)."""
        ts = sorted(set(times))
        return ts if cutoff is None else [t for t in ts if t + self.horizon <= cutoff]

    def _try(self, times: list[pd.Timestamp], evaluate: pd.Timedelta, calibrate: pd.Timedelta,
             cutoff: pd.Timestamp | None) -> Split | str:
        """The split with these window lengths, or what makes it impossible."""
        last = times[-1]
        eval_start = last - evaluate + DAY if evaluate else None
        cal_end = eval_start - self.horizon if eval_start is not None else last
        cal_start = cal_end - calibrate
        split = Split(
            fit=[t for t in times if t <= cal_start],
            calibrate=[t for t in times if cal_start < t <= cal_end],
            evaluate=[t for t in times if t >= eval_start] if eval_start is not None else [],
            cutoff=eval_start if eval_start is not None else (cutoff if cutoff is not None else last),
            calibrate_start=cal_start, evaluate_days=int(evaluate / DAY), calibrate_days=int(calibrate / DAY),
        )
        empty = [name for name, part in (("fit", split.fit), ("calibration", split.calibrate)) if not part]
        if empty:
            return f"the {' and '.join(empty)} window{'s are' if len(empty) > 1 else ' is'} empty"
        if evaluate and not split.evaluate:
            return "the evaluation window is empty"
        return split

    def _ladder(self, evaluate: pd.Timedelta) -> list[tuple[pd.Timedelta, pd.Timedelta]]:
        """(evaluate, calibrate) lengths to try, the configured ones first, down to the minimums."""
        out: list[tuple[pd.Timedelta, pd.Timedelta]] = []
        for f in SHRINK:
            e = max(self.min_evaluate, pd.Timedelta(days=round(evaluate / DAY * f))) if evaluate else evaluate
            c = max(self.min_calibrate, pd.Timedelta(days=round(self.calibrate / DAY * f)))
            if (e, c) not in out:
                out.append((e, c))
        return out

    def _split(self, times: list[pd.Timestamp], evaluate: pd.Timedelta, cutoff: pd.Timestamp | None,
               enough: Enough | None = None) -> Split:
        if not times:
            raise NotEnoughHistory(f"no snapshot time whose {_days(self.horizon)} horizon ended by the cutoff",
                                   [], "there is nothing to split")
        tried, missing = [], ""
        for e, c in self._ladder(evaluate):
            tried.append(f"{_days(e)}/{_days(c)}" if evaluate else f"-/{_days(c)}")
            split = self._try(times, e, c, cutoff)
            if isinstance(split, str):
                missing = split
                continue
            missing = enough(split) if enough is not None else None
            if not missing:
                return split
        months = (times[-1] - times[0]) / pd.Timedelta(days=30.44)
        found = (f"{months:.1f} months of labelled snapshots ({times[0].date()}..{times[-1].date()}, {len(times)} "
                 f"times) with a {_days(self.horizon)} horizon")
        raise NotEnoughHistory(found, tried, missing)

    def split(self, times: Sequence[pd.Timestamp], cutoff: pd.Timestamp | None = None,
              enough: Enough | None = None) -> Split:
        """The evaluation split of the snapshot ``times`` labelled by ``cutoff``, its windows shrunk as far
        as the minimums when the history (or ``enough``) calls for it."""
        if not self.evaluate:
            raise InvalidFold("evaluate", _days(self.evaluate), "an evaluation split needs an evaluation window")
        return self._split(self.labelled(times, cutoff), self.evaluate, cutoff, enough)

    def validation(self, times: Sequence[pd.Timestamp], split: Split, enough: Enough | None = None) -> Split:
        """The split of ``times`` as known at the start of ``split``'s evaluation window (``split.cutoff``):
        its evaluation window, the validation window, ends a horizon before that start; models are
        chosen on it, never on ``split``'s evaluation window. Same window lengths as ``split``."""
        fold = TimeFold(self.horizon, split.evaluate_days or self.evaluate, split.calibrate_days or self.calibrate,
                        self.min_evaluate, self.min_calibrate)
        return fold.split(times, split.cutoff, enough)

    def final(self, times: Sequence[pd.Timestamp], cutoff: pd.Timestamp | None = None,
              calibrate: str | int | pd.Timedelta | None = None, enough: Enough | None = None) -> Split:
        """The final model's split: no evaluation window, calibration on the latest labelled times
        (``calibrate``: that window's length, e.g. the evaluation split's, shrunk)."""
        fold = self if calibrate is None else TimeFold(self.horizon, self.evaluate, calibrate, self.min_evaluate,
                                                       self.min_calibrate)
        return fold._split(fold.labelled(times, cutoff), pd.Timedelta(0), cutoff, enough)

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
            split = self._try(ts, window, self.calibrate, cutoff) if ts else "there are no labelled times left"
            if isinstance(split, str):
                if out:
                    break
                raise NotEnoughHistory(f"labelled snapshot times {_span(ts)} with a {_days(self.horizon)} horizon",
                                       [f"{_days(window)}/{_days(self.calibrate)}"], split)
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
