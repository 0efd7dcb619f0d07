"""Funnel analytics from deal histories: stage-to-stage conversion, time in stage, drop-off,
and the bottleneck stage, over a period, by any group.

A deal *entered* stage s in the period when it has a stage entry of s in ``[start, end)``.
From that entry, what happened next (as known at ``end``, point-in-time): it moved on to a
later stage, went back, was lost from s, or is still in s. Per stage:

* ``conversion``: the share of entries that moved on to a later stage within ``window_days``
  of entering s, an Aalen-Johansen cumulative incidence (moving on competes with being lost
  and going back; an entry still in s at ``known_at`` is censored there). Counting only the
  entries resolved by ``end`` would favour whatever resolves quickly and make the latest
  period read differently from the older ones; with censoring the latest period estimates
  the same quantity as the older, fully observed ones;
* ``drop_off``: lost from s / entries;
* ``median_days``, ``p90_days``: time in s of the sojourns that ended before ``end``;
* ``value_lost``: the **expected value lost** at s: the amount of each deal lost from s times
  the win rate a deal in s had (the stage win rate at ``start``, point-in-time). The
  bottleneck is the stage losing most expected value; against the previous period of the
  same length, the stage whose loss changed most is reported too.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import TERMINAL_STAGES, Export
from features.deals import deal_context, stage_codes
from features.pit import rows_before
from models.forecast import group_keys

FUNNEL_COLUMNS = ("entered", "moved_on", "lost", "still_open", "conversion", "drop_off", "median_days", "p90_days",
                  "value_lost")


def moved_on_within(days: np.ndarray, event: np.ndarray, window: float) -> float:
    """Aalen-Johansen cumulative incidence of moving on within ``window`` days.

    ``days``: time to the stage exit, or to censoring; ``event``: 1 moved on, 2 any other exit
    (lost, went back), 0 censored. Exits at a time come before censorings at that time."""
    days = np.asarray(days, float)
    event = np.asarray(event, int)
    if len(days) == 0:
        return float("nan")
    order = np.lexsort((event == 0, days))
    days, event = days[order], event[order]
    at_risk = len(days) - np.arange(len(days))
    surv, cif = 1.0, 0.0
    times, first, count = np.unique(days, return_index=True, return_counts=True)
    for t, i, c in zip(times, first, count, strict=True):
        if t > window:
            break
        here = event[i: i + c]
        n = at_risk[i]
        moved, other = np.count_nonzero(here == 1), np.count_nonzero(here == 2)
        cif += surv * moved / n
        surv *= 1.0 - (moved + other) / n
    return float(cif)


def stage_sojourns(export: Export, end: pd.Timestamp) -> pd.DataFrame:
    """Every stage entry before ``end`` with what followed it before ``end``: ``next_stage``,
    ``left_at`` (NaT while still there), ``days`` and the deal's last known ``amount``."""
    h = rows_before(export.stage_history, "entered_at", end).sort_values(["opportunity_id", "entered_at"], kind="stable")
    same = h["opportunity_id"].eq(h["opportunity_id"].shift(-1))
    out = h[["opportunity_id", "stage", "entered_at"]].copy()
    out["next_stage"] = h["stage"].shift(-1).where(same)
    out["left_at"] = h["entered_at"].shift(-1).where(same)
    out["days"] = (out["left_at"] - out["entered_at"]) / pd.Timedelta(days=1)
    amounts = h.dropna(subset=["amount"]).groupby("opportunity_id")["amount"].last()
    out["amount"] = out["opportunity_id"].map(amounts)
    return out[out["stage"].isin(export.open_stages)]


_WIN_RATES: dict[tuple[int, pd.Timestamp], tuple[weakref.ref, dict[str, float]]] = {}
_WIN_RATES_LOCK = threading.Lock()


def _stage_win_rate(export: Export, start: pd.Timestamp) -> dict[str, float]:
    """``deal_context(export, start).stage_win_rate``, once per export and start: a refresh asks for
    the same ones for every grouping and quarter (the latest 32 kept)."""
    key = (id(export), start)
    hit = _WIN_RATES.get(key)
    if hit is None or hit[0]() is not export:  # an id can be reused once its export is gone
        hit = (weakref.ref(export), deal_context(export, start).stage_win_rate)
        with _WIN_RATES_LOCK:
            _WIN_RATES[key] = hit
            while len(_WIN_RATES) > 32:
                _WIN_RATES.pop(next(iter(_WIN_RATES)))
    return hit[1]


def funnel_table(
    export: Export, start: pd.Timestamp, end: pd.Timestamp, by: str = "none",
    window_days: float = 91.0, known_at: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Per group and open stage: entries in ``[start, end)`` and what became of them by
    ``known_at`` (default ``end``; nothing later is read); ``conversion`` is the censoring-
    corrected share moved on within ``window_days``."""
    known_at = end if known_at is None else known_at
    if known_at < end:
        raise ValueError(f"funnel: known_at {known_at} is before the period end {end}")
    if not window_days > 0:
        raise ValueError(f"funnel: window_days must be positive, got {window_days}")
    soj = stage_sojourns(export, known_at)
    soj = soj[(soj["entered_at"] >= start) & (soj["entered_at"] < end)]
    stages = tuple(export.open_stages)
    opps = export.opportunities.set_index("opportunity_id")
    soj = soj.assign(group=group_keys(opps.loc[soj["opportunity_id"]], export, by).to_numpy())
    here = stage_codes(soj["stage"], stages)
    nxt = stage_codes(soj["next_stage"].fillna(""), stages)
    lost_code = len(stages) + 1
    soj["moved_on"] = (nxt > here) & (nxt != lost_code)
    soj["lost"] = nxt == lost_code
    soj["still_open"] = soj["next_stage"].isna()
    rate = _stage_win_rate(export, start)
    soj["value_lost"] = np.where(soj["lost"], soj["amount"].fillna(0.0).to_numpy(float) * soj["stage"].map(rate).astype(float).fillna(0.0).to_numpy(), 0.0)
    g = soj.groupby(["group", "stage"])
    out = pd.DataFrame(
        {
            "entered": g.size(),
            "moved_on": g["moved_on"].sum(),
            "lost": g["lost"].sum(),
            "still_open": g["still_open"].sum(),
            "median_days": g["days"].median(),
            "p90_days": g["days"].quantile(0.9),
            "value_lost": g["value_lost"].sum(),
        }
    )
    followed = soj["days"].fillna((known_at - soj["entered_at"]) / pd.Timedelta(days=1))
    event = np.where(soj["still_open"], 0, np.where(soj["moved_on"], 1, 2))
    soj = soj.assign(_days=followed.to_numpy(float), _event=event)
    out["conversion"] = pd.Series(
        {k: moved_on_within(d["_days"].to_numpy(), d["_event"].to_numpy(), window_days)
         for k, d in soj.groupby(["group", "stage"])}, dtype=float)
    out["drop_off"] = out["lost"] / out["entered"]
    out = out.reset_index()
    out["stage"] = pd.Categorical(out["stage"], categories=stages, ordered=True)
    out = out.sort_values(["group", "stage"]).reset_index(drop=True)
    out["stage"] = out["stage"].astype(str)
    return out[["group", "stage", *FUNNEL_COLUMNS]]


@dataclass
class FunnelReport:
    table: pd.DataFrame  # this period, by group and stage
    previous: pd.DataFrame  # the previous period, overall
    overall: pd.DataFrame  # this period, overall
    by_quarter: pd.DataFrame  # conversion per stage per quarter, overall
    bottleneck: str
    most_changed: str
    start: pd.Timestamp
    end: pd.Timestamp

    def summary(self) -> str:
        cur = self.overall.set_index("stage")
        prev = self.previous.set_index("stage")
        now = (cur["value_lost"] / cur["entered"]).get(self.most_changed, np.nan)
        before = (prev["value_lost"] / prev["entered"]).get(self.most_changed, np.nan)
        return (
            f"bottleneck: {self.bottleneck} (expected value lost {cur.loc[self.bottleneck, 'value_lost']:,.0f}, "
            f"conversion {cur.loc[self.bottleneck, 'conversion']:.1%}); "
            f"changed most against the previous period: {self.most_changed} "
            f"(expected value lost per entry {before:,.0f} in the previous period, {now:,.0f} in this one)"
        )


def funnel_report(export: Export, as_of: pd.Timestamp, period_days: int = 91, by: str = "none",
                  quarters: int = 6) -> FunnelReport:
    """The funnel over ``[as_of - period, as_of)`` by ``by``, the overall view, the previous period,
    conversion per quarter, the bottleneck stage and where it changed most."""
    p = pd.Timedelta(days=period_days)
    start = as_of - p
    table = funnel_table(export, start, as_of, by)
    overall = funnel_table(export, start, as_of, "none").drop(columns="group")
    previous = funnel_table(export, start - p, start, "none").drop(columns="group")
    cur, prev = overall.set_index("stage"), previous.set_index("stage")
    bottleneck = str(cur["value_lost"].idxmax()) if len(cur) else ""
    change = ((cur["value_lost"] / cur["entered"]) - (prev["value_lost"] / prev["entered"])).abs().dropna()
    most_changed = str(change.idxmax()) if len(change) else ""
    rows = []
    for k in range(quarters, 0, -1):
        a, b = as_of - k * p, as_of - (k - 1) * p
        q = funnel_table(export, a, b, "none").assign(period_start=a.date())
        rows.append(q)
    by_quarter = pd.concat(rows, ignore_index=True).pivot(index="period_start", columns="stage", values="conversion")
    by_quarter = by_quarter[[s for s in export.open_stages if s in by_quarter]]
    return FunnelReport(table=table, previous=previous, overall=overall, by_quarter=by_quarter,
                        bottleneck=bottleneck, most_changed=most_changed, start=start, end=as_of)


def funnel_plot(report: FunnelReport, path: str) -> None:
    """Entries and conversion per stage, time in stage (median, p90), conversion over quarters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o = report.overall
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    x = np.arange(len(o))
    ax.bar(x, o["entered"], color="#9ab", label="entered")
    ax.bar(x, o["moved_on"], color="#2a6", label="moved on")
    ax.bar(x, -o["lost"], color="#c44", label="lost (below 0)")
    ax.set_xticks(x, o["stage"])
    for i, (c, s) in enumerate(zip(o["conversion"], o["stage"], strict=True)):
        ax.annotate(f"{c:.0%}" + (" (bottleneck)" if s == report.bottleneck else ""), (i, o["entered"].iloc[i]),
                    ha="center", va="bottom", fontsize=9)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(f"Stage entries {report.start.date()}..{report.end.date()}")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(x - 0.2, o["median_days"], 0.4, label="median")
    ax.bar(x + 0.2, o["p90_days"], 0.4, label="90th percentile")
    ax.set_xticks(x, o["stage"])
    ax.set_ylabel("days in stage")
    ax.set_title("Time in stage")
    ax.legend(fontsize=8)
    ax = axes[2]
    for s in report.by_quarter.columns:
        ax.plot([str(d) for d in report.by_quarter.index], report.by_quarter[s], marker="o", label=s)
    ax.set_ylabel("conversion to a later stage")
    ax.set_title("Conversion by period")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["FunnelReport", "funnel_plot", "funnel_report", "funnel_table", "stage_sojourns", "TERMINAL_STAGES"]
