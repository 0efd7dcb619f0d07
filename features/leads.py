"""Point-in-time lead features and labels.

A training example is a snapshot: a lead open at ``as_of``, its features computed only from
rows before ``as_of``, and its label "became an opportunity within the horizon after
``as_of``". The same :func:`lead_features` serves the batch job (many leads) and the API
(the records a CRM sends for one lead): there is one feature code path.

Features fall in three groups:

* the lead's own records: its fields (incl. custom fields), its account's firmographics,
  its age, and counts and recency of its activities by type over several windows;
* the *context*: what the CRM's history said at ``as_of`` about the lead's source, owner
  and account (point-in-time conversion rates, workload, prior wins). Offline it is
  computed per snapshot; a trained model carries the context of its training cutoff, so
  scoring online and in batch use the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.columns import (
    activity_rows,
    days_before,
    first_rows_before,
    joined_columns,
    kind_counts,
    latest,
    lookup,
    take,
)
from features.contract import Export
from features.errors import NothingToLearnFrom
from features.pit import TimeOrder, epoch_ns, known_as_of, open_leads, rows_before
from features.specs import FeatureSpec

#: Lead fields of the contract used as categorical features (the owner stands for the rep's skill).
LEAD_CATEGORICALS = ("source", "seniority", "country", "owner_id")
#: Account fields of the contract used as features (prefixed ``account_`` in the frame).
ACCOUNT_CATEGORICALS = ("industry", "country")
ACCOUNT_NUMERICS = ("employees", "annual_revenue")

#: Smoothing weight (pseudo-leads) of the point-in-time conversion rates.
RATE_PRIOR_WEIGHT = 20.0
#: How far back the point-in-time conversion rates look.
RATE_LOOKBACK = pd.Timedelta(days=365)


@dataclass(frozen=True)
class LeadFeatureSpec(FeatureSpec):
    """Which columns a lead feature frame has: fixed when a model is trained, reused to score."""

    ACTIVITY_OWNER: ClassVar[str] = "lead_id"
    SOURCE_TABLES: ClassVar = {
        "lead": ("leads", LEAD_CATEGORICALS, ()),
        "account": ("accounts", ACCOUNT_CATEGORICALS, ACCOUNT_NUMERICS),
    }

    lead_categoricals: tuple[str, ...] = LEAD_CATEGORICALS
    lead_numerics: tuple[str, ...] = ()
    account_categoricals: tuple[str, ...] = ACCOUNT_CATEGORICALS
    account_numerics: tuple[str, ...] = ACCOUNT_NUMERICS

    @property
    def categorical_features(self) -> list[str]:
        cols = [*self.lead_categoricals, *(f"account_{c}" for c in self.account_categoricals)]
        return [c for c in cols if c not in self.excluded]

    @property
    def feature_names(self) -> list[str]:
        acts = []
        for t in self.activity_types:
            acts += [f"{t}_{w}d" for w in self.windows] + [f"{t}_total", f"{t}_per_week", f"days_since_{t}"]
        cols = [
            *self.lead_categoricals,
            *self.lead_numerics,
            *(f"account_{c}" for c in self.account_categoricals),
            *(f"account_{c}" for c in self.account_numerics),
            "lead_age_days",
            "account_age_days",
            *acts,
            *(f"inbound_{w}d" for w in self.windows),
            "activities_total",
            "days_since_activity",
            "source_conversion_rate",
            "owner_conversion_rate",
            "owner_open_leads",
            "account_won_deals",
            "account_won_amount",
            "account_lost_deals",
            "account_open_opportunities",
        ]
        return [c for c in cols if c not in self.excluded]


#: The account history columns of a :class:`LeadContext` (prefixed ``account_`` as features).
HISTORY_COLUMNS = ("won_deals", "won_amount", "lost_deals", "open_opportunities")


@dataclass
class LeadContext:
    """What the CRM's history said at ``as_of`` about sources, owners and accounts.

    ``account_row`` and ``account_totals`` are ``account_history`` as a dict from account id
    to row and an array of :data:`HISTORY_COLUMNS` with a last row of zeros (row -1: an account
    without history), built with the context: a lookup in them costs a microsecond where a
    pandas index lookup costs tens."""

    as_of: pd.Timestamp
    horizon_days: int
    global_rate: float
    source_rate: dict[str, float] = field(default_factory=dict)
    owner_rate: dict[str, float] = field(default_factory=dict)
    owner_open_leads: dict[str, int] = field(default_factory=dict)
    account_history: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(HISTORY_COLUMNS), dtype=float)
    )
    account_row: dict[str, int] = field(init=False, repr=False, compare=False)
    account_totals: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hist = self.account_history
        self.account_row = {k: i for i, k in enumerate(hist.index) if isinstance(k, str)}
        totals = [hist[c].to_numpy(dtype=float) if c in hist else np.zeros(len(hist)) for c in HISTORY_COLUMNS]
        self.account_totals = np.vstack([np.column_stack(totals).reshape(len(hist), len(HISTORY_COLUMNS)),
                                         np.zeros(len(HISTORY_COLUMNS))])

    def __getstate__(self) -> dict:
        # the lookups are derived from account_history: rebuilt on load, not saved with the model
        return {k: v for k, v in self.__dict__.items() if k not in ("account_row", "account_totals")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


def _smoothed_rates(keys: pd.Series, hits: pd.Series, prior: float) -> dict[str, float]:
    grouped = pd.DataFrame({"k": keys, "y": hits}).dropna(subset=["k"]).groupby("k")["y"]
    rate = (grouped.sum() + RATE_PRIOR_WEIGHT * prior) / (grouped.count() + RATE_PRIOR_WEIGHT)
    return {str(k): float(v) for k, v in rate.items()}


def lead_context(export: Export, as_of: pd.Timestamp, horizon_days: int = 91) -> LeadContext:
    """Point-in-time history statistics at ``as_of``, from rows before ``as_of`` only.

    Conversion rates use leads created in the year before ``as_of - horizon``: whether they
    converted within the horizon of their creation is fully known before ``as_of``.
    """
    horizon = pd.Timedelta(days=horizon_days)
    leads = export.leads
    window = leads[(leads["created_at"] < as_of - horizon) & (leads["created_at"] >= as_of - horizon - RATE_LOOKBACK)]
    converted = known_as_of(window["converted_at"], as_of)
    hit = ((converted - window["created_at"]) < horizon).astype(float)
    global_rate = float(hit.mean()) if len(hit) else 0.0
    open_now = open_leads(leads, as_of)
    owner_open = open_now["owner_id"].dropna().value_counts()

    opps = rows_before(export.opportunities, "created_at", as_of)
    closed = known_as_of(opps["closed_at"], as_of)
    won = closed.notna() & (opps["outcome"] == "won")
    lost = closed.notna() & (opps["outcome"] == "lost")
    hist = pd.DataFrame(
        {
            "account_id": opps["account_id"],
            "won_deals": won.astype(float),
            "won_amount": opps["amount"].where(won, 0.0).fillna(0.0),
            "lost_deals": lost.astype(float),
            "open_opportunities": closed.isna().astype(float),
        }
    )
    account_history = hist.groupby("account_id").sum()
    return LeadContext(
        as_of=as_of,
        horizon_days=horizon_days,
        global_rate=global_rate,
        source_rate=_smoothed_rates(window["source"], hit, global_rate),
        owner_rate=_smoothed_rates(window["owner_id"], hit, global_rate),
        owner_open_leads={str(k): int(v) for k, v in owner_open.items()},
        account_history=account_history,
    )


def _activity_features(
    activities: pd.DataFrame, lead_ids: pd.Index, lead_age: np.ndarray, as_of: pd.Timestamp, spec: LeadFeatureSpec
) -> dict[str, np.ndarray]:
    """Counts by activity kind (see :func:`activity_kind`) over each window, all-time counts,
    counts per week of the lead's life (at least one day) and days since the last one;
    inbound touches of any type per window; all activities and days since the last one."""
    rows, pos, age = activity_rows(activities, "lead_id", lead_ids, as_of)
    n = len(lead_ids)
    cols, inbound = kind_counts(activities, rows, pos, age, n, spec.activity_types, spec.windows)
    weeks_base = np.maximum(lead_age, 1.0)
    for t in spec.activity_types:
        cols[f"{t}_per_week"] = cols[f"{t}_total"] * 7.0 / weeks_base
    for w in spec.windows:
        cols[f"inbound_{w}d"] = np.bincount(pos[inbound & (age < w)], minlength=n).astype(float)
    cols["activities_total"] = np.bincount(pos, minlength=n).astype(float)
    cols["days_since_activity"] = latest(pos, age, n)
    return cols


def _context_features(leads: pd.DataFrame, context: LeadContext) -> dict[str, np.ndarray]:
    """The context's numbers for each lead's source, owner and account."""
    source = leads["source"].tolist()
    owner = leads["owner_id"].tolist()
    cols = {
        "source_conversion_rate": lookup(source, context.source_rate, context.global_rate),
        "owner_conversion_rate": lookup(owner, context.owner_rate, context.global_rate),
        "owner_open_leads": lookup(owner, context.owner_open_leads, 0.0),
    }
    row = lookup(leads["account_id"].tolist(), context.account_row, -1).astype(np.int64)
    for j, c in enumerate(HISTORY_COLUMNS):
        cols[f"account_{c}"] = context.account_totals[row, j]
    return cols


def lead_features(
    leads: pd.DataFrame,
    accounts: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp,
    context: LeadContext,
    spec: LeadFeatureSpec,
) -> pd.DataFrame:
    """The feature frame of ``leads`` as of ``as_of``, one row per lead, indexed by ``lead_id``.

    Only rows before ``as_of`` are read: activities at or after it and accounts created at
    or after it are invisible. ``context`` must not be newer than ``as_of``. One lead (an
    API request) and a snapshot of thousands take the same numpy code.
    """
    if context.as_of > as_of:
        raise ValueError(f"context as of {context.as_of} is newer than as_of {as_of}: it would leak")
    lead_ids = pd.Index(leads["lead_id"], name="lead_id")
    cols = joined_columns(leads, None, "", spec.lead_categoricals, spec.lead_numerics)
    acc_rows, acc_age = first_rows_before(accounts, "account_id", "created_at", leads["account_id"], as_of)
    cols.update(joined_columns(accounts, acc_rows, "account_", spec.account_categoricals, spec.account_numerics))
    cols["lead_age_days"] = days_before(as_of, leads["created_at"])
    cols["account_age_days"] = take(acc_age, acc_rows)
    cols.update(_activity_features(activities, lead_ids, cols["lead_age_days"], as_of, spec))
    cols.update(_context_features(leads, context))
    return pd.DataFrame({c: cols[c] for c in spec.feature_names}, index=lead_ids)


def converted_within_horizon(leads: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int) -> pd.Series:
    """Label: the lead converted in ``[as_of, as_of + horizon)``. Reads the future on purpose: labels only."""
    end = as_of + pd.Timedelta(days=horizon_days)
    conv = leads["converted_at"]
    return ((conv >= as_of) & (conv < end)).astype(int).set_axis(pd.Index(leads["lead_id"], name="lead_id"))


def snapshot_times(start: pd.Timestamp, end: pd.Timestamp, every_days: int) -> list[pd.Timestamp]:
    """As-of times every ``every_days`` ending exactly at ``end`` (inclusive), none before ``start``."""
    times = pd.date_range(end=end.floor("D"), start=start.ceil("D"), freq=f"{every_days}D")
    return [pd.Timestamp(t) for t in times]


def _snapshot_frame(leads: pd.DataFrame, accounts: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp,
                    ctx: LeadContext, spec: LeadFeatureSpec) -> pd.DataFrame:
    X = lead_features(leads, accounts, activities, as_of, ctx, spec)
    X.insert(0, "as_of", as_of)
    X["label"] = converted_within_horizon(leads, as_of, spec.horizon_days)
    return X.reset_index()


def _concat_snapshots(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        raise NothingToLearnFrom("lead_quality needs leads open at the snapshot times",
                                 "no lead open at any of them: the export is too short or has no leads")
    return pd.concat(parts, ignore_index=True)


def lead_snapshots(
    export: Export,
    as_ofs: Sequence[pd.Timestamp],
    spec: LeadFeatureSpec,
    *,
    progress: bool = False,
    contexts: Mapping[pd.Timestamp, LeadContext] | None = None,
) -> pd.DataFrame:
    """Training examples: for each ``as_of``, every lead open then, its features and label.

    Returns a frame with ``lead_id``, ``as_of``, the spec's features and ``label``. The
    caller makes sure ``as_of + horizon`` is not after the data's cutoff.

    The tables are sorted by time once (:class:`LeadHistory`): each snapshot takes the rows
    before its ``as_of`` by a binary search, its context from running totals, and hands
    :func:`lead_features` only the activities and accounts of the leads open then. The frame equals
    :func:`_lead_snapshots_naive` (one full scan per ``as_of``), the tests' oracle. ``contexts``: the
    context of each ``as_of`` computed elsewhere (the Dask engine's, from the whole export, when
    ``export`` holds one partition of the leads); else from ``export``.
    """
    history = LeadHistory(export, spec.horizon_days)
    parts = []
    for as_of in tqdm(as_ofs, desc="lead snapshots", disable=not progress, unit="snapshot"):
        is_open = history.open_at(as_of)
        if not is_open.any():
            continue
        leads = export.leads[is_open]
        parts.append(_snapshot_frame(leads, history.accounts_of(is_open), history.activities_of(is_open, as_of), as_of,
                                     history.context(as_of, is_open, open_accounts_only=True)
                                     if contexts is None else contexts[as_of], spec))
    return _concat_snapshots(parts)


def _lead_snapshots_naive(
    export: Export, as_ofs: Sequence[pd.Timestamp], spec: LeadFeatureSpec, *, progress: bool = False
) -> pd.DataFrame:
    """:func:`lead_snapshots` the plain way: the per-``as_of`` functions over the full tables, once
    per snapshot time. The reference the one-pass version is tested and benchmarked against."""
    parts = []
    for as_of in tqdm(as_ofs, desc="lead snapshots (naive)", disable=not progress, unit="snapshot"):
        leads = open_leads(export.leads, as_of)
        if leads.empty:
            continue
        ctx = lead_context(export, as_of, spec.horizon_days)
        parts.append(_snapshot_frame(leads, export.accounts, export.activities, as_of, ctx, spec))
    return _concat_snapshots(parts)


def _codes(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Integer codes of a key column (-1: missing) and the keys."""
    codes, keys = pd.factorize(values, use_na_sentinel=True)
    return codes, pd.Index(keys)


class LeadHistory:
    """An export's leads, activities and opportunities sorted by time once, to build the lead
    snapshots of many ``as_of`` times without scanning the full tables for each.

    :meth:`open_at` equals :func:`~features.pit.open_leads`, :meth:`context` equals
    :func:`lead_context`, and :meth:`activities_of` keeps, of the activities, those of the
    given leads before ``as_of`` (all that :func:`lead_features` reads), in file order."""

    def __init__(self, export: Export, horizon_days: int) -> None:
        leads = export.leads
        self.horizon_days = horizon_days
        self._horizon = pd.Timedelta(days=horizon_days)
        self._created = epoch_ns(leads["created_at"])
        self._converted = epoch_ns(leads["converted_at"])
        self._disqualified = epoch_ns(leads["disqualified_at"])
        # conversion rates: leads by creation time; "converted within the horizon" is known for
        # every lead of a window that ends a horizon before as_of, so it is one fixed flag
        self._by_created = TimeOrder.of(leads["created_at"])
        gap = leads["converted_at"] - leads["created_at"]
        hit = (gap < self._horizon).to_numpy(dtype=bool, na_value=False)
        self._hit = hit[self._by_created.order].astype(float)
        self._source, self._sources = self._sorted_codes(leads["source"])
        self._owner, self._owners = self._sorted_codes(leads["owner_id"])
        self._owner_all = _codes(leads["owner_id"])[0]
        acts = export.activities
        self._acts = acts[acts["lead_id"].notna()]
        self._act_time = TimeOrder.of(self._acts["occurred_at"])
        # one code per lead id, for the leads and their activities alike
        codes, ids = pd.factorize(pd.concat([leads["lead_id"], self._acts["lead_id"]], ignore_index=True))
        self._ids, self._n_ids = codes[: len(leads)], len(ids)
        self._act_lead = codes[len(leads):][self._act_time.order]
        self._opps = _OpportunityTotals(export.opportunities)
        self._lead_history_row = self._opps.rows_of(leads["account_id"])
        codes, keys = pd.factorize(pd.concat([export.accounts["account_id"], leads["account_id"]], ignore_index=True))
        self._accounts, self._account_code, self._n_accounts = export.accounts, codes, len(keys)

    def _sorted_codes(self, values: pd.Series) -> tuple[np.ndarray, pd.Index]:
        codes, keys = _codes(values)
        return codes[self._by_created.order], keys

    def open_at(self, as_of: pd.Timestamp) -> np.ndarray:
        """Which leads are open at ``as_of`` (see :func:`~features.pit.open_leads`), as a mask."""
        t = epoch_ns(as_of)[0]
        return (self._created < t) & (self._converted >= t) & (self._disqualified >= t)

    def activities_of(self, is_open: np.ndarray, as_of: pd.Timestamp) -> pd.DataFrame:
        """The activities before ``as_of`` of the leads in ``is_open``, in file order."""
        wanted = np.zeros(self._n_ids + 1, dtype=bool)  # the extra last slot: code -1, no lead
        wanted[self._ids[is_open]] = True
        k = self._act_time.count_before(as_of)
        rows = self._act_time.order[:k][wanted[self._act_lead[:k]]]
        return self._acts.take(np.sort(rows))

    def accounts_of(self, is_open: np.ndarray) -> pd.DataFrame:
        """The rows of ``accounts`` of the leads in ``is_open`` (every row of those ids), in file order."""
        wanted = np.zeros(self._n_accounts + 1, dtype=bool)  # the extra last slot: code -1, no account
        wanted[self._account_code[len(self._accounts):][is_open]] = True
        wanted[-1] = False
        return self._accounts[wanted[self._account_code[: len(self._accounts)]]]

    def context(self, as_of: pd.Timestamp, is_open: np.ndarray, *, open_accounts_only: bool = False) -> LeadContext:
        """:func:`lead_context` at ``as_of`` (``is_open``: :meth:`open_at` of it); with
        ``open_accounts_only``, its account history holds only the accounts of those leads (all
        that their features look up)."""
        lo = self._by_created.count_before(as_of - self._horizon - RATE_LOOKBACK)
        hi = self._by_created.count_before(as_of - self._horizon)
        hit = self._hit[lo:hi]
        global_rate = float(hit.sum() / len(hit)) if len(hit) else 0.0
        owners_open = np.bincount(self._owner_all[is_open & (self._owner_all >= 0)], minlength=len(self._owners))
        return LeadContext(
            as_of=as_of,
            horizon_days=self.horizon_days,
            global_rate=global_rate,
            source_rate=_running_rates(self._source[lo:hi], hit, self._sources, global_rate),
            owner_rate=_running_rates(self._owner[lo:hi], hit, self._owners, global_rate),
            owner_open_leads={str(self._owners[i]): int(c) for i, c in enumerate(owners_open) if c},
            account_history=self._opps.history(as_of, self._lead_history_row[is_open] if open_accounts_only else None),
        )


def _running_rates(codes: np.ndarray, hit: np.ndarray, keys: pd.Index, prior: float) -> dict[str, float]:
    """:func:`_smoothed_rates` of the leads in a window, from their key codes (-1: missing)."""
    known = codes >= 0
    count = np.bincount(codes[known], minlength=len(keys))
    hits = np.bincount(codes[known], weights=hit[known], minlength=len(keys))
    rate = (hits + RATE_PRIOR_WEIGHT * prior) / (count + RATE_PRIOR_WEIGHT)
    return {str(keys[i]): float(rate[i]) for i in np.flatnonzero(count)}


class _OpportunityTotals:
    """The account history of :func:`lead_context` at any ``as_of``, from opportunities sorted by creation."""

    def __init__(self, opportunities: pd.DataFrame) -> None:
        self._by_created = TimeOrder.of(opportunities["created_at"])
        o = self._by_created.order
        codes, keys = _codes(opportunities["account_id"])
        order = np.argsort(keys.to_numpy(dtype=object), kind="stable")  # groupby's sorted keys
        rank = np.empty(len(keys), dtype=np.int64)
        rank[order] = np.arange(len(keys))
        self._keys = keys[order]
        self._account = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1)[o]
        self._closed = epoch_ns(opportunities["closed_at"])[o]
        outcome = opportunities["outcome"]
        self._won = (outcome == "won").to_numpy(dtype=bool, na_value=False)[o]
        self._lost = (outcome == "lost").to_numpy(dtype=bool, na_value=False)[o]
        amount = opportunities["amount"].to_numpy(dtype=float)
        self._amount = np.where(np.isnan(amount), 0.0, amount)[o]

    def rows_of(self, account_ids: pd.Series) -> np.ndarray:
        """Each account's row in :meth:`history` (-1: none, or a missing id)."""
        return self._keys.get_indexer(account_ids)

    def history(self, as_of: pd.Timestamp, rows: np.ndarray | None = None) -> pd.DataFrame:
        """The account history of :func:`lead_context` at ``as_of`` (only the accounts at ``rows`` when given)."""
        k = self._by_created.count_before(as_of)
        acc = self._account[:k]
        keep = acc >= 0
        acc = acc[keep]
        closed = (self._closed[:k] < epoch_ns(as_of)[0])[keep]
        won, lost = closed & self._won[:k][keep], closed & self._lost[:k][keep]
        n = len(self._keys)

        def total(weights: np.ndarray) -> np.ndarray:
            return np.bincount(acc, weights=weights, minlength=n)

        present = np.bincount(acc, minlength=n) > 0
        if rows is not None:
            asked = np.zeros(n, dtype=bool)
            asked[rows[rows >= 0]] = True
            present &= asked
        frame = pd.DataFrame(
            {
                "won_deals": total(won.astype(float)),
                "won_amount": total(np.where(won, self._amount[:k][keep], 0.0)),
                "lost_deals": total(lost.astype(float)),
                "open_opportunities": total((~closed).astype(float)),
            },
            index=self._keys.rename("account_id"),
        )
        return frame.iloc[np.flatnonzero(present)]


def converted_lead_value(
    export: Export, as_of: pd.Timestamp, by: str = "industry", prior_weight: float = 20.0
) -> tuple[dict[str, float], float]:
    """What a converted lead was worth, from deals decided before ``as_of``.

    The value of a lead's opportunity is its amount when won and 0 when lost. Returns the
    mean per account ``by`` value (shrunk toward the overall mean with ``prior_weight``
    pseudo-deals) and the overall mean. Expected value of a lead = P(convert) x this.
    """
    opps = rows_before(export.opportunities, "created_at", as_of)
    opps = opps[opps["lead_id"].notna() & known_as_of(opps["closed_at"], as_of).notna()]
    value = opps["amount"].fillna(0.0).where(opps["outcome"] == "won", 0.0)
    overall = float(value.mean()) if len(value) else 0.0
    key = opps["account_id"].map(export.accounts.drop_duplicates("account_id").set_index("account_id")[by])
    g = pd.DataFrame({"k": key, "v": value}).dropna(subset=["k"]).groupby("k")["v"]
    shrunk = (g.sum() + prior_weight * overall) / (g.count() + prior_weight)
    return {str(k): float(v) for k, v in shrunk.items()}, overall
