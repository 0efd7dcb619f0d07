"""Deal histories as of any time: the state of every open opportunity, point-in-time.

The ``opportunities`` table is a snapshot at export time: its ``stage``, ``amount``,
``expected_close_date``, ``outcome`` and ``closed_at`` are what the CRM held *then*. A
deal's state as of an earlier ``as_of`` therefore comes from ``stage_history`` rows entered
before ``as_of`` (stage, amount and close date at each stage change), from activities
before ``as_of`` and from ``closed_at`` only when it is before ``as_of``. Nothing else of the
snapshot row is read, except the fields that never change (account, owner, type, product,
the originating lead, custom fields: the same caveat as for leads applies to those).

Features fall in four groups, all as of ``as_of``:

* the deal's history (:func:`deal_state`): current stage, days in it, age, advances and
  regressions, days spent in each open stage, pace against the typical time in the stage,
  amount and its changes, the close date, how often and how far it was pushed, overdue;
* its activities by kind (meetings, calls, emails, quotes, ...) over several windows, and
  their recency;
* its originating lead's fields and its account's firmographics;
* the *context* (:class:`DealContext`): what the history said at ``as_of`` about stages
  (typical time, win rates), owners (wins, win rate, revenue, tenure, open deals) and
  accounts (prior wins, revenue, customer tenure).

As for leads, one function (:func:`deal_features`) serves the batch job and the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.columns import activity_rows, first_rows_before, joined_columns, kind_counts, latest, take
from features.contract import DEFAULT_OPEN_STAGES, TERMINAL_STAGES, Export
from features.errors import NothingToLearnFrom
from features.leads import snapshot_times  # the deals' snapshot times are the leads'
from features.pit import NEVER, TimeOrder, epoch_ns, known_as_of, rows_before
from features.specs import FeatureSpec

DAY = pd.Timedelta(days=1)
#: How far back the point-in-time win rates of stages and owners look.
RATE_LOOKBACK = pd.Timedelta(days=365)
#: Smoothing weight (pseudo-deals) of the point-in-time win rates.
RATE_PRIOR_WEIGHT = 10.0

OPPORTUNITY_CATEGORICALS = ("type", "product", "owner_id")
LEAD_CATEGORICALS = ("source", "seniority")
ACCOUNT_CATEGORICALS = ("industry", "country")
ACCOUNT_NUMERICS = ("employees", "annual_revenue")

def stage_codes(stages: pd.Series | np.ndarray, open_stages: Sequence[str]) -> np.ndarray:
    """Open stage ``i`` -> ``i``; ``won`` -> ``len(open_stages)``; ``lost`` -> ``+1``; anything else -1."""
    order = pd.Index([*open_stages, *TERMINAL_STAGES])
    return order.get_indexer(np.asarray(stages, dtype=object))


def open_opportunities(
    opportunities: pd.DataFrame, stage_history: pd.DataFrame, as_of: pd.Timestamp
) -> pd.DataFrame:
    """Deals open at ``as_of``: created before it, no won/lost entered before it, not closed before it."""
    created = opportunities["created_at"] < as_of
    closed = known_as_of(opportunities["closed_at"], as_of).notna()
    hist = rows_before(stage_history, "entered_at", as_of)
    ended = hist.loc[hist["stage"].isin(TERMINAL_STAGES), "opportunity_id"].unique()
    return opportunities[created & ~closed & ~opportunities["opportunity_id"].isin(ended)]


def _days(values: pd.Series | np.ndarray) -> np.ndarray:
    """UTC timestamps as float days since the epoch (NaT -> NaN)."""
    v = pd.DatetimeIndex(values).as_unit("ns")  # asi8 is in the index's own unit (s, ms, us or ns)
    out = v.asi8.astype(float) / 86_400e9
    out[v.isna()] = np.nan
    return out


def deal_state(
    opportunities: pd.DataFrame,
    stage_history: pd.DataFrame,
    as_of: pd.Timestamp,
    open_stages: Sequence[str] = DEFAULT_OPEN_STAGES,
) -> pd.DataFrame:
    """Each deal's history as of ``as_of``, from ``stage_history`` rows entered before it.

    One row per deal of ``opportunities`` (indexed by ``opportunity_id``, same order).
    Entries of a deal are taken in time order (ties in file order). A deal without any
    entry before ``as_of`` is in the first open stage since its creation, amount and close
    date unknown. Amount and close date are the last known (non-missing) values; a push is
    a close date later than the previous known one. Days in a stage add up every sojourn.
    """
    ids = pd.Index(opportunities["opportunity_id"], name="opportunity_id")
    t_now = _days(pd.DatetimeIndex([as_of]))[0]
    created = _days(opportunities["created_at"])
    e = _entries(ids, stage_history, as_of, open_stages)
    n = len(ids)
    cur_code, entered, per_stage, advances, regressions = _stage_path(e, n, len(open_stages), created, t_now)
    amt, amt0, amt_changes, _ = _last_first_changes(e.p, e.amount, n)
    close, close0, _, pushes = _last_first_changes(e.p, e.ecd, n)
    names = np.array([*open_stages, *TERMINAL_STAGES], dtype=object)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(amt0 > 0, amt / amt0, np.nan)
    to_close = close - t_now
    out = pd.DataFrame(
        {
            "stage": names[cur_code],
            "stage_index": cur_code.astype(float),
            "stage_entered_at": _timestamps(entered),
            "days_in_stage": t_now - entered,
            "age_days": t_now - created,
            "stage_entries": np.bincount(e.p, minlength=n).astype(float),
            "advances": advances,
            "regressions": regressions,
            "amount": amt,
            "first_amount": amt0,
            "amount_changes": amt_changes,
            "amount_change_ratio": ratio,
            "expected_close_date": _timestamps(close),
            "first_expected_close_date": _timestamps(close0),
            "close_date_pushes": pushes[0].astype(float),
            "close_date_push_days": pushes[1],
            "days_to_close_date": to_close,
            "overdue": np.where(np.isnan(to_close), np.nan, (to_close < 0).astype(float)),
        },
        index=ids,
    )
    for j, s in enumerate(open_stages):
        out[f"days_in_{s}"] = per_stage[:, j]
    return out


def _timestamps(days: np.ndarray) -> pd.DatetimeIndex:
    """Float days since the epoch as UTC timestamps (the inverse of :func:`_days`)."""
    return pd.to_datetime(days * 86_400e9, utc=True).as_unit("ns")


@dataclass(frozen=True)
class _Entries:
    """The stage entries of the deals before ``as_of``, in time order per deal (ties in file
    order): the deal's position, the time (days), the stage code, amount and close date, and
    whether the entry is the deal's first and last; ``dur`` is the time until the next entry
    (until ``as_of`` for the last)."""

    p: np.ndarray
    t: np.ndarray
    code: np.ndarray
    amount: np.ndarray
    ecd: np.ndarray
    first: np.ndarray
    last: np.ndarray
    dur: np.ndarray


def _entries(ids: pd.Index, stage_history: pd.DataFrame, as_of: pd.Timestamp, open_stages: Sequence[str]) -> _Entries:
    t_now = _days(pd.DatetimeIndex([as_of]))[0]
    hist = rows_before(stage_history, "entered_at", as_of)
    pos = ids.get_indexer(hist["opportunity_id"])
    hist, pos = hist[pos >= 0], pos[pos >= 0]
    t = _days(hist["entered_at"])
    order = np.lexsort((t, pos))  # stable: ties keep file order
    p, t = pos[order], t[order]
    first = np.r_[True, p[1:] != p[:-1]] if len(p) else np.zeros(0, bool)
    last = np.r_[p[1:] != p[:-1], True] if len(p) else np.zeros(0, bool)
    nxt = np.r_[t[1:], np.nan]
    nxt[last] = t_now
    return _Entries(
        p=p,
        t=t,
        code=stage_codes(hist["stage"].to_numpy(dtype=object)[order], open_stages),
        amount=hist["amount"].to_numpy(dtype=float)[order],
        ecd=_days(hist["expected_close_date"])[order],
        first=first,
        last=last,
        dur=nxt - t,
    )


def _stage_path(
    e: _Entries, n: int, k: int, created: np.ndarray, t_now: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per deal: the current stage code and when it was entered, days in each open stage,
    advances and regressions. A deal without entries is in the first stage since its creation."""
    p, code, first, last = e.p, e.code, e.first, e.last
    prev = np.r_[-1, code[:-1]]
    prev[first] = -1
    has = np.bincount(p, minlength=n) > 0
    cur_code = np.zeros(n, dtype=np.int64)
    entered = created.copy()
    cur_code[p[last]] = code[last]
    entered[p[last]] = e.t[last]
    per_stage = np.zeros((n, k))
    in_open = (code >= 0) & (code < k)
    np.add.at(per_stage, (p[in_open], code[in_open]), e.dur[in_open])
    per_stage[~has, 0] = t_now - created[~has]
    moved = ~first
    advances = np.bincount(p[moved & (code > prev)], minlength=n).astype(float)
    regressions = np.bincount(p[moved & (code < prev) & (code >= 0)], minlength=n).astype(float)
    return cur_code, entered, per_stage, advances, regressions


def _last_first_changes(p: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Last and first known value per deal (``p``: the entries' deal positions, in time order),
    the count of changes, and the count and total of increases."""
    known = ~np.isnan(values)
    vp, vv = p[known], values[known]
    lastv, firstv = np.full(n, np.nan), np.full(n, np.nan)
    lastv[vp] = vv  # later rows overwrite: the last known value
    firstv[vp[::-1]] = vv[::-1]
    # sized from the known entries (none at all when no deal of the batch has the field)
    same = np.zeros(len(vp), dtype=bool)
    same[1:] = vp[1:] == vp[:-1]
    diff = np.zeros(len(vv))
    diff[1:] = np.diff(vv)
    changed = same & (diff != 0)
    up = same & (diff > 0)
    return (
        lastv,
        firstv,
        np.bincount(vp[changed], minlength=n).astype(float),
        np.stack([np.bincount(vp[up], minlength=n), np.bincount(vp[up], weights=diff[up], minlength=n)]),
    )


# ----------------------------------------------------------------------------- the context
@dataclass
class DealContext:
    """What the CRM's history said at ``as_of`` about stages, owners and accounts."""

    as_of: pd.Timestamp
    horizon_days: int
    open_stages: tuple[str, ...]
    global_win_rate: float
    stage_days_median: dict[str, float] = field(default_factory=dict)
    stage_days_p90: dict[str, float] = field(default_factory=dict)
    stage_win_rate: dict[str, float] = field(default_factory=dict)
    owner_history: pd.DataFrame = field(default_factory=pd.DataFrame)
    account_history: pd.DataFrame = field(default_factory=pd.DataFrame)
    amount_median: dict[str, float] = field(default_factory=dict)
    amount_overall: float = float("nan")


def decided_deals(export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
    """Deals decided before ``as_of``: ``opportunity_id``, ``outcome`` (won/lost), ``closed_at``,
    ``amount`` (last known before the close), ``owner_id``, ``account_id``.

    A deal is decided when it entered won or lost before ``as_of`` (its first terminal
    entry counts) or its ``closed_at`` is before ``as_of``.
    """
    hist = rows_before(export.stage_history, "entered_at", as_of)
    term = hist[hist["stage"].isin(TERMINAL_STAGES)].sort_values("entered_at", kind="stable")
    term = term.drop_duplicates("opportunity_id")[["opportunity_id", "stage", "entered_at"]]
    term = term.rename(columns={"stage": "outcome", "entered_at": "closed_at"})
    opps = export.opportunities
    closed = opps[known_as_of(opps["closed_at"], as_of).notna() & ~opps["opportunity_id"].isin(term["opportunity_id"])]
    more = closed[["opportunity_id", "outcome", "closed_at"]]
    out = pd.concat([term, more], ignore_index=True)
    amounts = hist.dropna(subset=["amount"]).sort_values("entered_at", kind="stable").groupby("opportunity_id")["amount"].last()
    out["amount"] = out["opportunity_id"].map(amounts)
    info = opps.set_index("opportunity_id")
    for c in ("owner_id", "account_id", "created_at"):
        # an export without decided deals (or without deals): empty columns of the table's types
        out[c] = out["opportunity_id"].map(info[c]) if len(out) else pd.Series(dtype=info[c].dtype)
    return out


def _smoothed(hits: pd.Series, keys: pd.Series, prior: float) -> pd.Series:
    g = pd.DataFrame({"k": keys, "y": hits}).dropna(subset=["k"]).groupby("k")["y"]
    return (g.sum() + RATE_PRIOR_WEIGHT * prior) / (g.count() + RATE_PRIOR_WEIGHT)


def deal_context(export: Export, as_of: pd.Timestamp, horizon_days: int = 91) -> DealContext:
    """Point-in-time history statistics at ``as_of``, from rows before ``as_of`` only."""
    stages = tuple(export.open_stages)
    hist = rows_before(export.stage_history, "entered_at", as_of).sort_values(
        ["opportunity_id", "entered_at"], kind="stable"
    )
    same = hist["opportunity_id"].eq(hist["opportunity_id"].shift(-1))
    dur = ((hist["entered_at"].shift(-1) - hist["entered_at"]) / DAY).where(same)
    done = pd.DataFrame({"stage": hist["stage"], "days": dur}).dropna()
    entered = hist.loc[hist["stage"].isin(stages), ["opportunity_id", "stage"]].drop_duplicates()
    opps = rows_before(export.opportunities, "created_at", as_of)
    leads = rows_before(export.leads, "created_at", as_of)
    first_seen = pd.concat([opps[["owner_id", "created_at"]], leads[["owner_id", "created_at"]]]).groupby("owner_id")[
        "created_at"
    ].min()
    open_now = open_opportunities(opps, export.stage_history, as_of)["owner_id"].value_counts()
    # typical amounts by product and type (first known amount of deals created before as_of)
    first_amount = hist.dropna(subset=["amount"]).groupby("opportunity_id")["amount"].first()
    info = opps.set_index("opportunity_id")
    a = pd.DataFrame({"amount": first_amount})
    a["key"] = _amount_key(info["product"].reindex(a.index), info["type"].reindex(a.index))
    a["type_key"] = _amount_key(pd.Series(np.nan, index=a.index, dtype=object), info["type"].reindex(a.index))
    return _context_from(as_of, horizon_days, stages, done=done, decided=decided_deals(export, as_of),
                         entered=entered, first_seen=first_seen, open_now=open_now, amounts=a)


def _context_from(
    as_of: pd.Timestamp, horizon_days: int, stages: tuple[str, ...], *, done: pd.DataFrame, decided: pd.DataFrame,
    entered: pd.DataFrame, first_seen: pd.Series, open_now: pd.Series, amounts: pd.DataFrame,
) -> DealContext:
    """The :class:`DealContext` from what the history held at ``as_of``: ``done`` (stage, days) the
    completed stage sojourns, ``decided`` :func:`decided_deals`, ``entered`` the (deal, open stage)
    pairs entered, ``first_seen`` each owner's first lead or deal, ``open_now`` the open deals per
    owner and ``amounts`` (amount, key, type_key) each deal's first known amount."""
    median = done.groupby("stage")["days"].median()
    p90 = done.groupby("stage")["days"].quantile(0.9)
    recent = decided[decided["closed_at"] >= as_of - RATE_LOOKBACK]
    won = (recent["outcome"] == "won").astype(float)
    global_rate = float(won.mean()) if len(won) else 0.0
    entered = entered.merge(recent[["opportunity_id", "outcome"]], on="opportunity_id")
    stage_rate = _smoothed((entered["outcome"] == "won").astype(float), entered["stage"], global_rate)

    owner = pd.DataFrame(
        {
            "won_deals": won.groupby(recent["owner_id"]).sum(),
            "lost_deals": (1 - won).groupby(recent["owner_id"]).sum(),
            "won_amount": recent["amount"].where(won == 1, 0.0).fillna(0.0).groupby(recent["owner_id"]).sum(),
            "win_rate": _smoothed(won, recent["owner_id"], global_rate),
        }
    )
    owner = owner.reindex(owner.index.union(first_seen.index))
    owner["first_seen_day"] = _days(first_seen.reindex(owner.index))
    owner["open_deals"] = open_now.reindex(owner.index).fillna(0.0).astype(float)
    owner.index.name = "owner_id"

    dwon = (decided["outcome"] == "won").astype(float)
    account = pd.DataFrame(
        {
            "won_deals": dwon.groupby(decided["account_id"]).sum(),
            "lost_deals": (1 - dwon).groupby(decided["account_id"]).sum(),
            "won_amount": decided["amount"].where(dwon == 1, 0.0).fillna(0.0).groupby(decided["account_id"]).sum(),
        }
    )
    first_won = decided["closed_at"].where(dwon == 1).groupby(decided["account_id"]).min()
    account["first_won_day"] = _days(first_won.reindex(account.index))
    account.index.name = "account_id"

    a = amounts
    med = {**a.groupby("type_key")["amount"].median().to_dict(), **a.groupby("key")["amount"].median().to_dict()}
    return DealContext(
        as_of=as_of,
        horizon_days=horizon_days,
        open_stages=stages,
        global_win_rate=global_rate,
        stage_days_median={str(k): float(v) for k, v in median.items()},
        stage_days_p90={str(k): float(v) for k, v in p90.items()},
        stage_win_rate={str(k): float(v) for k, v in stage_rate.items()},
        owner_history=owner,
        account_history=account,
        amount_median={str(k): float(v) for k, v in med.items()},
        amount_overall=float(a["amount"].median()) if len(a) else float("nan"),
    )


def _amount_key(product: pd.Series, type_: pd.Series) -> pd.Series:
    return product.astype("str").fillna("?").astype(object).where(product.notna(), "?") + "|" + type_.astype(
        "str"
    ).astype(object).where(type_.notna(), "?")


def predicted_amount(opportunities: pd.DataFrame, context: DealContext) -> np.ndarray:
    """An amount for deals without one: the median first amount of deals of the same product
    and type (else the same type, else all deals) created before the context's ``as_of``."""
    key = _amount_key(opportunities["product"], opportunities["type"])
    tkey = _amount_key(pd.Series(np.nan, index=opportunities.index, dtype=object), opportunities["type"])
    by_key = key.map(context.amount_median).astype(float)
    by_type = tkey.map(context.amount_median).astype(float)
    return by_key.fillna(by_type).fillna(context.amount_overall).to_numpy(dtype=float)


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class DealFeatureSpec(FeatureSpec):
    """Which columns a deal feature frame has: fixed when a model is trained, reused to score."""

    ACTIVITY_OWNER: ClassVar[str] = "opportunity_id"
    SOURCE_TABLES: ClassVar = {
        "opportunity": ("opportunities", OPPORTUNITY_CATEGORICALS, ()),
        "lead": ("leads", LEAD_CATEGORICALS, ()),
        "account": ("accounts", ACCOUNT_CATEGORICALS, ACCOUNT_NUMERICS),
    }

    open_stages: tuple[str, ...] = DEFAULT_OPEN_STAGES
    opportunity_categoricals: tuple[str, ...] = OPPORTUNITY_CATEGORICALS
    opportunity_numerics: tuple[str, ...] = ()
    lead_categoricals: tuple[str, ...] = LEAD_CATEGORICALS
    lead_numerics: tuple[str, ...] = ()
    account_categoricals: tuple[str, ...] = ACCOUNT_CATEGORICALS
    account_numerics: tuple[str, ...] = ACCOUNT_NUMERICS

    @classmethod
    def columns_of(cls, export: Export, exclude: Sequence[str]) -> dict[str, tuple[str, ...]]:
        return {"open_stages": tuple(export.open_stages), **super().columns_of(export, exclude)}

    @property
    def categorical_features(self) -> list[str]:
        cols = [
            "stage",
            *self.opportunity_categoricals,
            *(f"lead_{c}" for c in self.lead_categoricals),
            *(f"account_{c}" for c in self.account_categoricals),
        ]
        return [c for c in cols if c not in self.excluded]

    @property
    def feature_names(self) -> list[str]:
        acts = []
        for t in self.activity_types:
            acts += [f"{t}_{w}d" for w in self.windows] + [f"{t}_total", f"days_since_{t}"]
        cols = [
            "stage",
            *self.opportunity_categoricals,
            *self.opportunity_numerics,
            *(f"lead_{c}" for c in self.lead_categoricals),
            *(f"lead_{c}" for c in self.lead_numerics),
            *(f"account_{c}" for c in self.account_categoricals),
            *(f"account_{c}" for c in self.account_numerics),
            "stage_index",
            "days_in_stage",
            "stage_pace",
            "age_days",
            "stage_entries",
            "advances",
            "regressions",
            *(f"days_in_{s}" for s in self.open_stages),
            "amount",
            "amount_changes",
            "amount_change_ratio",
            "days_to_close_date",
            "overdue",
            "close_date_pushes",
            "close_date_push_days",
            *CALENDAR_FEATURES,
            "lead_age_at_conversion",
            *acts,
            *activity_rate_names(self.activity_types),
            "activities_total",
            "activities_30d",
            "days_since_activity",
            "stage_win_rate",
            "owner_win_rate",
            "owner_won_deals",
            "owner_won_amount",
            "owner_tenure_days",
            "owner_open_deals",
            "account_won_deals",
            "account_lost_deals",
            "account_won_amount",
            "account_customer_days",
        ]
        return [c for c in cols if c not in self.excluded]


def _activity_features(
    activities: pd.DataFrame, ids: pd.Index, as_of: pd.Timestamp, spec: DealFeatureSpec
) -> dict[str, np.ndarray]:
    """Per deal and activity kind: counts per window, all-time count, days since the last one;
    all activities, those of the last 30 days and days since the last one."""
    rows, pos, age = activity_rows(activities, "opportunity_id", ids, as_of)
    n = len(ids)
    cols, _ = kind_counts(activities, rows, pos, age, n, spec.activity_types, spec.windows)
    cols["activities_total"] = np.bincount(pos, minlength=n).astype(float)
    cols["activities_30d"] = np.bincount(pos[age < 30], minlength=n).astype(float)
    cols["days_since_activity"] = latest(pos, age, n)
    return cols


# -- activity rates (stage_conversion's helper, issue 15): kept apart from the counts above
#: The fewest days of age a rate is taken over: a deal a day old with one meeting is not a rate of 30 a month.
RATE_MIN_AGE_DAYS = 14.0


def activity_rate_names(activity_types: Sequence[str]) -> list[str]:
    return [f"{t}_per_30d" for t in activity_types]


def activity_rates(cols: dict[str, np.ndarray], activity_types: Sequence[str]) -> dict[str, np.ndarray]:
    """``{kind}_per_30d``: the deal's activities of each kind since it was created, per 30 days of
    its age (``age_days``, at least ``RATE_MIN_AGE_DAYS``), from the ``{kind}_total`` counts. The
    pace of meetings and calls says how engaged a buyer is; a total alone mixes it up with the
    deal's age (on generated CRMs, the model's P(won) was furthest below the truth's for deals with
    frequent meetings and calls)."""
    age = np.maximum(np.nan_to_num(cols["age_days"], nan=0.0), RATE_MIN_AGE_DAYS)
    return {name: cols[f"{t}_total"] * 30.0 / age for t, name in zip(activity_types, activity_rate_names(activity_types))}


# -- the sales calendar (issue 15): where the snapshot falls in the month and the quarter
#: Days from ``as_of`` to the end of its calendar month and quarter (see :func:`calendar_features`).
CALENDAR_FEATURES = ("days_to_month_end", "days_to_quarter_end")


def _days_to_period_end(as_of: pd.Timestamp, freq: str) -> float:
    """Days (fractional) from ``as_of`` to the start of the next calendar period ``freq`` ("M", "Q"), in UTC."""
    t = as_of.tz_convert("UTC").tz_localize(None) if as_of.tzinfo is not None else as_of
    return float((((t.to_period(freq) + 1).to_timestamp()) - t) / DAY)


def calendar_features(as_of: pd.Timestamp, n: int) -> dict[str, np.ndarray]:
    """``days_to_month_end`` and ``days_to_quarter_end``: days from ``as_of`` to the end of its
    calendar month (0 < d <= 31) and quarter (0 < d <= 92), in UTC, the same for the ``n`` deals
    of one snapshot. Sales teams close against monthly and quarterly targets: a deal still open just
    after a quarter's end has been through a close push and missed it, one open two weeks before the
    end is about to be pushed. Known at ``as_of`` (the calendar), so nothing leaks; what they are
    worth is the validation window's to say (on Maven CRM 80% of the deals closing in a quarter's
    last month are won, 49% in its first)."""
    return {"days_to_month_end": np.full(n, _days_to_period_end(as_of, "M")),
            "days_to_quarter_end": np.full(n, _days_to_period_end(as_of, "Q"))}


#: The calendar of each timing period (see :func:`period_calendar`).
PERIOD_CALENDAR_FEATURES = ("period_days_to_month_end", "period_days_to_quarter_end")
_MEAN_DAYS = {"days_to_month_end": 365.2425 / 12, "days_to_quarter_end": 365.2425 / 4}


def period_calendar(X: pd.DataFrame, start_days: np.ndarray) -> dict[str, np.ndarray]:
    """``period_days_to_month_end`` and ``period_days_to_quarter_end`` of timing periods starting
    ``start_days`` after their snapshot (rows of ``X``, aligned): the snapshot's
    :func:`calendar_features` less the offset, wrapped by the mean month (30.4 days) and quarter
    (91.3 days), so within a day or two of the calendar's. A period holding a quarter's end starts
    fewer days before it than the period is long: what a hazard needs to see a close push coming
    within the horizon, without learning calendar time. Empty when ``X`` has no calendar features."""
    start = np.asarray(start_days, dtype=float)
    out = {}
    for name in CALENDAR_FEATURES:
        if name in X:
            length = _MEAN_DAYS[name]
            left = X[name].to_numpy(dtype=float) - start  # the snapshot's own end while the period starts before it
            left = left + np.maximum(np.ceil(-left / length), 0.0) * length
            out[f"period_{name}"] = np.where(left <= 0, left + length, left)
    return out


def _history_lookup(history: pd.DataFrame, keys: np.ndarray, column: str, default: float = 0.0) -> np.ndarray:
    if column not in history or history.empty:
        return np.full(len(keys), default)
    row = history.index.get_indexer(keys)
    values = history[column].to_numpy()
    out = np.where(row >= 0, values[np.maximum(row, 0)] if len(values) else default, default)
    return out


def deal_features(
    opportunities: pd.DataFrame,
    stage_history: pd.DataFrame,
    activities: pd.DataFrame,
    leads: pd.DataFrame,
    accounts: pd.DataFrame,
    as_of: pd.Timestamp,
    context: DealContext,
    spec: DealFeatureSpec,
    state: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The feature frame of ``opportunities`` as of ``as_of``, one row per deal, indexed by ``opportunity_id``.

    Only rows before ``as_of`` are read (stage entries, activities, leads' conversion,
    accounts created). ``context`` must not be newer than ``as_of``. ``state`` is
    :func:`deal_state` when the caller already has it.
    """
    if context.as_of > as_of:
        raise ValueError(f"context as of {context.as_of} is newer than as_of {as_of}: it would leak")
    ids = pd.Index(opportunities["opportunity_id"], name="opportunity_id")
    if state is None:
        state = deal_state(opportunities, stage_history, as_of, spec.open_stages)
    cols: dict[str, np.ndarray] = {"stage": state["stage"].to_numpy(dtype=object)}
    cols.update(joined_columns(opportunities, None, "", spec.opportunity_categoricals, spec.opportunity_numerics))
    lead_rows, _ = first_rows_before(leads, "lead_id", "created_at", opportunities["lead_id"], as_of)
    cols.update(joined_columns(leads, lead_rows, "lead_", spec.lead_categoricals, spec.lead_numerics))
    acc_rows, _ = first_rows_before(accounts, "account_id", "created_at", opportunities["account_id"], as_of)
    cols.update(joined_columns(accounts, acc_rows, "account_", spec.account_categoricals, spec.account_numerics))
    for c in ("stage_index", "days_in_stage", "age_days", "stage_entries", "advances", "regressions", "amount",
              "amount_changes", "amount_change_ratio", "days_to_close_date", "overdue", "close_date_pushes",
              "close_date_push_days", *(f"days_in_{s}" for s in spec.open_stages)):
        cols[c] = state[c].to_numpy(dtype=float)
    typical = state["stage"].map(context.stage_days_median).to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["stage_pace"] = np.where(typical > 0, cols["days_in_stage"] / typical, np.nan)
    cols["lead_age_at_conversion"] = _days(opportunities["created_at"]) - take(_days(leads["created_at"]), lead_rows)
    cols.update(_activity_features(activities, ids, as_of, spec))
    cols.update(activity_rates(cols, spec.activity_types))
    cols.update(calendar_features(as_of, len(ids)))
    cols["stage_win_rate"] = state["stage"].map(context.stage_win_rate).fillna(context.global_win_rate).to_numpy(float)
    owners = opportunities["owner_id"].to_numpy(dtype=object)
    oh = context.owner_history
    cols["owner_win_rate"] = _history_lookup(oh, owners, "win_rate", context.global_win_rate).astype(float)
    cols["owner_win_rate"] = np.where(np.isnan(cols["owner_win_rate"]), context.global_win_rate, cols["owner_win_rate"])
    cols["owner_won_deals"] = np.nan_to_num(_history_lookup(oh, owners, "won_deals").astype(float))
    cols["owner_won_amount"] = np.nan_to_num(_history_lookup(oh, owners, "won_amount").astype(float))
    cols["owner_open_deals"] = np.nan_to_num(_history_lookup(oh, owners, "open_deals").astype(float))
    t_now = _days(pd.DatetimeIndex([as_of]))[0]
    cols["owner_tenure_days"] = t_now - _history_lookup(oh, owners, "first_seen_day", np.nan).astype(float)
    ah = context.account_history
    accounts_of = opportunities["account_id"].to_numpy(dtype=object)
    for c in ("won_deals", "lost_deals", "won_amount"):
        cols[f"account_{c}"] = np.nan_to_num(_history_lookup(ah, accounts_of, c).astype(float))
    cols["account_customer_days"] = t_now - _history_lookup(ah, accounts_of, "first_won_day", np.nan).astype(float)
    return pd.DataFrame({c: cols[c] for c in spec.feature_names}, index=ids)


# ----------------------------------------------------------------------------- labels, snapshots
def deal_outcomes(export: Export) -> pd.DataFrame:
    """What became of each deal, as far as the export knows (labels only: reads the future on
    purpose). Indexed by ``opportunity_id``: ``closed_at`` (NaT while open: censored at the
    export time) and ``won`` (1, 0, NaN while open) and ``won_amount`` (the last amount
    known at the close)."""
    dec = decided_deals(export, pd.Timestamp.max.tz_localize("UTC"))
    dec = dec.set_index("opportunity_id")
    ids = pd.Index(export.opportunities["opportunity_id"], name="opportunity_id")
    out = pd.DataFrame(index=ids)
    out["closed_at"] = dec["closed_at"].reindex(ids)
    out["won"] = (dec["outcome"] == "won").astype(float).reindex(ids)
    out["won_amount"] = dec["amount"].where(dec["outcome"] == "won").reindex(ids)
    return out


def next_stage_entered_at(
    stage_history: pd.DataFrame, ids: pd.Index, stage: pd.Series | np.ndarray, as_of: pd.Timestamp,
    open_stages: Sequence[str],
) -> pd.arrays.DatetimeArray:
    """When each deal first entered the stage after its stage at ``as_of`` (won after the last
    open stage), at or after ``as_of``; NaT when it has not (yet). A label: reads the future.
    Always UTC, also when no deal has reached its next stage (an all-NaT column)."""
    code = stage_codes(np.asarray(stage, dtype=object), open_stages)
    target = np.array([*open_stages, "won"], dtype=object)[np.clip(code + 1, 0, len(open_stages))]
    want = pd.DataFrame({"opportunity_id": ids.to_numpy(), "stage": target})
    later = stage_history[stage_history["entered_at"] >= as_of][["opportunity_id", "stage", "entered_at"]]
    hit = want.merge(later, on=["opportunity_id", "stage"], how="left").groupby("opportunity_id", sort=False)["entered_at"].min()
    return pd.to_datetime(hit.reindex(ids), utc=True).array


def _snapshot_frame(
    export: Export, opps: pd.DataFrame, tables: dict[str, pd.DataFrame], later_stages: pd.DataFrame,
    as_of: pd.Timestamp, ctx: DealContext, spec: DealFeatureSpec, outcomes: pd.DataFrame,
) -> pd.DataFrame:
    """One snapshot of :func:`deal_snapshots`: ``tables`` the stage history, activities, leads and
    accounts :func:`deal_features` reads, ``later_stages`` the stage entries its label reads."""
    state = deal_state(opps, tables["stage_history"], as_of, spec.open_stages)
    X = deal_features(opps, tables["stage_history"], tables["activities"], tables["leads"], tables["accounts"], as_of,
                      ctx, spec, state=state)
    X.insert(0, "as_of", as_of)
    X["amount_filled"] = np.where(np.isnan(state["amount"]), predicted_amount(opps, ctx), state["amount"])
    X["expected_close_date"] = state["expected_close_date"].to_numpy()
    X["crm_stage_win_rate"] = X["stage_win_rate"].to_numpy()
    X["next_stage_at"] = next_stage_entered_at(later_stages, X.index, state["stage"], as_of, spec.open_stages)
    return X.join(outcomes).reset_index()


def _concat_snapshots(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        raise NothingToLearnFrom("stage_conversion needs deals open at the snapshot times",
                                 "no deal open at any of them: the export is too short or has no opportunities")
    return pd.concat(parts, ignore_index=True)


def deal_snapshots(
    export: Export,
    as_ofs: Sequence[pd.Timestamp],
    spec: DealFeatureSpec,
    *,
    progress: bool = False,
    contexts: Mapping[pd.Timestamp, DealContext] | None = None,
) -> pd.DataFrame:
    """For each ``as_of``, every deal open then: its features (point-in-time) and what happened
    later as the export knows it (``closed_at``, ``won``, ``won_amount``, ``next_stage_at``).

    The future columns are labels: the trainer censors them at its own cutoff, so one
    snapshot frame serves every cutoff of a backtest.

    The tables are sorted by time once (:class:`DealHistory`): each snapshot finds the deals
    open then, its context and the rows :func:`deal_features` reads by binary searches and
    masks instead of full scans. The frame equals :func:`_deal_snapshots_naive`, the tests' oracle.
    ``contexts``: the context of each ``as_of`` computed elsewhere (the Dask engine's, from the whole
    export, when ``export`` holds one partition of the deals); else from ``export``.
    """
    outcomes = deal_outcomes(export)
    history = DealHistory(export)
    parts = []
    for as_of in tqdm(as_ofs, desc="deal snapshots", disable=not progress, unit="snapshot"):
        is_open = history.open_at(as_of)
        if not is_open.any():
            continue
        opps = export.opportunities[is_open]
        parts.append(_snapshot_frame(export, opps, history.tables(is_open, as_of), history.later_stages(is_open, as_of),
                                     as_of, history.context(as_of, is_open, spec.horizon_days)
                                     if contexts is None else contexts[as_of], spec, outcomes))
    return _concat_snapshots(parts)


def _deal_snapshots_naive(
    export: Export, as_ofs: Sequence[pd.Timestamp], spec: DealFeatureSpec, *, progress: bool = False
) -> pd.DataFrame:
    """:func:`deal_snapshots` the plain way: the per-``as_of`` functions over the full tables, once
    per snapshot time. The reference the one-pass version is tested and benchmarked against."""
    outcomes = deal_outcomes(export)
    parts = []
    tables = {"stage_history": export.stage_history, "activities": export.activities, "leads": export.leads,
              "accounts": export.accounts}
    for as_of in tqdm(as_ofs, desc="deal snapshots (naive)", disable=not progress, unit="snapshot"):
        opps = open_opportunities(export.opportunities, export.stage_history, as_of)
        if opps.empty:
            continue
        ctx = deal_context(export, as_of, spec.horizon_days)
        parts.append(_snapshot_frame(export, opps, tables, export.stage_history, as_of, ctx, spec, outcomes))
    return _concat_snapshots(parts)


def _rows_of(table: pd.DataFrame, column: str, keys: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``table[column]`` and of ``keys``, shared by both (-1: missing)."""
    codes, _ = pd.factorize(pd.concat([table[column], keys], ignore_index=True))
    return codes[: len(table)], codes[len(table):]


class DealHistory:
    """An export's deals, stage entries and activities sorted and coded once, to build the deal
    snapshots of many ``as_of`` times without scanning the full tables for each.

    :meth:`open_at` equals :func:`open_opportunities`, :meth:`context` equals
    :func:`deal_context`; :meth:`tables` keeps, of each table :func:`deal_features` reads, the rows
    of the given deals (or of their leads and accounts) that it can read at ``as_of``, in file order."""

    def __init__(self, export: Export) -> None:
        self._export = export
        opps, sh, acts = export.opportunities, export.stage_history, export.activities
        self._n = len(opps)
        # one code per deal id, shared by the deals, their stage entries and their activities
        acts = acts[acts["opportunity_id"].notna()]
        ids = pd.concat([opps["opportunity_id"], sh["opportunity_id"], acts["opportunity_id"]], ignore_index=True)
        codes, self._ids = pd.factorize(ids)
        self._opp, self._sh_code = codes[: self._n], codes[self._n : self._n + len(sh)]
        self._created = epoch_ns(opps["created_at"])
        self._closed = epoch_ns(opps["closed_at"])
        self._sh_t = epoch_ns(sh["entered_at"])
        self._sh_known = sh["entered_at"].notna().to_numpy()
        self._acts = acts
        self._act_time = TimeOrder.of(acts["occurred_at"])
        self._act_code = codes[self._n + len(sh):][self._act_time.order]
        self._lead_rows, self._lead_keys = _rows_of(export.leads, "lead_id", opps["lead_id"])
        self._account_rows, self._account_keys = _rows_of(export.accounts, "account_id", opps["account_id"])
        self._context = _ContextHistory(export, self._ids, codes[: self._n], self._sh_code)
        self._ended = self._context.ended[self._opp]  # each deal's first terminal entry

    def open_at(self, as_of: pd.Timestamp) -> np.ndarray:
        """Which deals are open at ``as_of`` (see :func:`open_opportunities`), as a mask."""
        t = epoch_ns(as_of)[0]
        return (self._created < t) & (self._closed >= t) & (self._ended >= t)

    def _wanted(self, is_open: np.ndarray) -> np.ndarray:
        wanted = np.zeros(len(self._ids) + 1, dtype=bool)  # the extra last slot: code -1, no deal
        wanted[self._opp[is_open]] = True
        return wanted

    def tables(self, is_open: np.ndarray, as_of: pd.Timestamp) -> dict[str, pd.DataFrame]:
        """The stage entries and activities of the open deals before ``as_of``, and the leads and
        accounts they name (every row of those ids: :func:`deal_features` picks the one visible)."""
        export, wanted, t = self._export, self._wanted(is_open), epoch_ns(as_of)[0]
        k = self._act_time.count_before(as_of)
        act_rows = np.sort(self._act_time.order[:k][wanted[self._act_code[:k]]])

        def named(rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
            hit = np.zeros(max(rows.max(initial=-1), keys.max(initial=-1)) + 2, dtype=bool)
            hit[keys[is_open]] = True
            hit[-1] = False
            return hit[rows]

        return {
            "stage_history": export.stage_history[wanted[self._sh_code] & (self._sh_t < t)],
            "activities": self._acts.take(act_rows),
            "leads": export.leads[named(self._lead_rows, self._lead_keys)],
            "accounts": export.accounts[named(self._account_rows, self._account_keys)],
        }

    def later_stages(self, is_open: np.ndarray, as_of: pd.Timestamp) -> pd.DataFrame:
        """The stage entries of the open deals at or after ``as_of`` (what their labels read)."""
        later = self._sh_known & (self._sh_t >= epoch_ns(as_of)[0])
        return self._export.stage_history[self._wanted(is_open)[self._sh_code] & later]

    def context(self, as_of: pd.Timestamp, is_open: np.ndarray, horizon_days: int = 91) -> DealContext:
        """:func:`deal_context` at ``as_of`` (``is_open``: :meth:`open_at` of it)."""
        open_now = self._export.opportunities.loc[is_open, "owner_id"].value_counts()
        return self._context.at(as_of, horizon_days, open_now)


class _ContextHistory:
    """The inputs of :func:`_context_from` at any ``as_of``, from stage entries and deals sorted once.

    Each is a prefix of a table sorted by the time it becomes known: a completed sojourn when the
    next stage is entered, a decision at the first terminal entry (else the deal's close), a
    (deal, stage) pair at its first entry, a first amount when entered. The last known amount of a
    decided deal is the entry whose time is before ``as_of`` and whose successor's is not."""

    def __init__(self, export: Export, ids: pd.Index, opp_codes: np.ndarray, sh_codes: np.ndarray) -> None:
        opps, sh = export.opportunities, export.stage_history
        self._stages = tuple(export.open_stages)
        self._ids, self._opp_codes = ids, opp_codes
        known = sh[sh["entered_at"].notna()]
        code = sh_codes[sh["entered_at"].notna().to_numpy()]
        t = epoch_ns(known["entered_at"])
        # completed sojourns, as deal_context finds them, known from the next entry on
        by_deal = known.iloc[np.lexsort((t, code))]
        same = by_deal["opportunity_id"].eq(by_deal["opportunity_id"].shift(-1))
        dur = ((by_deal["entered_at"].shift(-1) - by_deal["entered_at"]) / DAY).where(same)
        done = pd.DataFrame({"stage": by_deal["stage"], "days": dur, "_at": by_deal["entered_at"].shift(-1)}).dropna()
        self._done, self._done_at = self._by_time(done.drop(columns="_at"), done["_at"])
        # decisions by a terminal entry (the first of each deal)
        term = known[known["stage"].isin(TERMINAL_STAGES)].sort_values("entered_at", kind="stable")
        term = term.drop_duplicates("opportunity_id")[["opportunity_id", "stage", "entered_at"]]
        self._term = term.rename(columns={"stage": "outcome", "entered_at": "closed_at"}).reset_index(drop=True)
        self._term_at = TimeOrder(order=np.arange(len(term)), ns=epoch_ns(term["entered_at"]))
        self._term_code = ids.get_indexer(term["opportunity_id"])
        self.ended = np.full(len(ids) + 1, NEVER)  # per deal code (slot -1: no deal)
        self.ended[self._term_code] = epoch_ns(term["entered_at"])
        self._closed = epoch_ns(opps["closed_at"])
        self._closed_rows = opps[["opportunity_id", "outcome", "closed_at"]]
        self._info = opps.set_index("opportunity_id")[["owner_id", "account_id", "created_at"]].reindex(ids)
        self._amounts_known(known, code, t)
        # (deal, open stage) pairs at their first entry
        pairs = known.loc[known["stage"].isin(self._stages), ["opportunity_id", "stage", "entered_at"]]
        pairs = pairs.sort_values("entered_at", kind="stable").drop_duplicates(["opportunity_id", "stage"])
        self._pairs, self._pairs_at = self._by_time(pairs[["opportunity_id", "stage"]], pairs["entered_at"])
        leads = export.leads
        both = pd.concat([opps[["owner_id", "created_at"]], leads[["owner_id", "created_at"]]])
        self._first_seen = both.groupby("owner_id")["created_at"].min()
        self._first_seen_ns = epoch_ns(self._first_seen)
        self._first_amounts(known, opps)

    @staticmethod
    def _by_time(frame: pd.DataFrame, at: pd.Series) -> tuple[pd.DataFrame, TimeOrder]:
        order = TimeOrder.of(at)
        return frame.iloc[order.order].reset_index(drop=True), TimeOrder(order=np.arange(len(frame)), ns=order.ns)

    def _amounts_known(self, known: pd.DataFrame, code: np.ndarray, t: np.ndarray) -> None:
        """Entries with an amount in time order, each with the time of its deal's next such entry."""
        has = known["amount"].notna().to_numpy()
        order = np.argsort(t[has], kind="stable")
        c, self._amount_t = code[has][order], t[has][order]
        self._amount = known["amount"].to_numpy(dtype=float)[has][order]
        nxt = np.full(len(c), NEVER)
        by_deal = np.lexsort((np.arange(len(c)), c))  # time order within each deal
        same = c[by_deal][1:] == c[by_deal][:-1]
        nxt[by_deal[:-1][same]] = self._amount_t[by_deal[1:][same]]
        self._amount_code, self._amount_next = c, nxt

    def _first_amounts(self, known: pd.DataFrame, opps: pd.DataFrame) -> None:
        """Each deal's first known amount, its time, and its amount keys while its deal is visible."""
        first = known.dropna(subset=["amount"]).sort_values("entered_at", kind="stable")
        first = first.drop_duplicates("opportunity_id").sort_values("opportunity_id", kind="stable")
        self._first = pd.DataFrame({"amount": first["amount"].to_numpy()},
                                   index=pd.Index(first["opportunity_id"], name="opportunity_id"))
        self._first_ns = epoch_ns(first["entered_at"])
        info = opps.set_index("opportunity_id").reindex(self._first.index)
        self._first_created = epoch_ns(info["created_at"])
        hidden = pd.Series(np.nan, index=self._first.index, dtype=object)
        self._first_key = _amount_key(info["product"], info["type"]).to_numpy(dtype=object)
        self._first_type_key = _amount_key(hidden, info["type"]).to_numpy(dtype=object)
        self._hidden_key = _amount_key(hidden, hidden).to_numpy(dtype=object)

    def decided(self, as_of: pd.Timestamp) -> pd.DataFrame:
        """:func:`decided_deals` at ``as_of``."""
        t = epoch_ns(as_of)[0]
        k = self._term_at.count_before(as_of)
        closed = (self._closed < t) & ~(self.ended[self._opp_codes] < t)
        codes = np.r_[self._term_code[:k], self._opp_codes[closed]]
        out = pd.concat([self._term.iloc[:k], self._closed_rows[closed]], ignore_index=True)
        last = (self._amount_t < t) & (self._amount_next >= t)
        amount = np.full(len(self._ids) + 1, np.nan)
        amount[self._amount_code[last]] = self._amount[last]
        out["amount"] = amount[codes]
        info = self._info.take(codes)  # every code is a deal's, of the stage history or the deals
        for c in ("owner_id", "account_id", "created_at"):
            out[c] = info[c].array
        return out

    def at(self, as_of: pd.Timestamp, horizon_days: int, open_now: pd.Series) -> DealContext:
        t = epoch_ns(as_of)[0]
        visible = self._first_ns < t
        shown = self._first_created[visible] < t
        a = self._first.loc[visible].copy()
        a["key"] = np.where(shown, self._first_key[visible], self._hidden_key[visible])
        a["type_key"] = np.where(shown, self._first_type_key[visible], self._hidden_key[visible])
        return _context_from(
            as_of, horizon_days, self._stages,
            done=self._done.iloc[: self._done_at.count_before(as_of)],
            decided=self.decided(as_of),
            entered=self._pairs.iloc[: self._pairs_at.count_before(as_of)],
            first_seen=self._first_seen[self._first_seen_ns < t],
            open_now=open_now,
            amounts=a,
        )
