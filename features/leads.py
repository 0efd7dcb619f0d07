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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.contract import ACCOUNTS, LEADS, Export, custom_columns
from features.pit import known_as_of, open_leads, rows_before

DAY = pd.Timedelta(days=1)

#: Lead fields of the contract used as categorical features (the owner stands for the rep's skill).
LEAD_CATEGORICALS = ("source", "seniority", "country", "owner_id")
#: Account fields of the contract used as features (prefixed ``account_`` in the frame).
ACCOUNT_CATEGORICALS = ("industry", "country")
ACCOUNT_NUMERICS = ("employees", "annual_revenue")
#: Contract columns of ``leads`` that are never features (ids, timestamps, outcomes).
_LEAD_NON_FEATURES = {c.name for c in LEADS.columns} - set(LEAD_CATEGORICALS)
_ACCOUNT_NON_FEATURES = {c.name for c in ACCOUNTS.columns} - set(ACCOUNT_CATEGORICALS) - set(ACCOUNT_NUMERICS)

#: Smoothing weight (pseudo-leads) of the point-in-time conversion rates.
RATE_PRIOR_WEIGHT = 20.0
#: How far back the point-in-time conversion rates look.
RATE_LOOKBACK = pd.Timedelta(days=365)


def activity_kind(activities: pd.DataFrame) -> pd.Series:
    """An activity's kind: its type, joined with its direction when it has one.

    An inbound email (the prospect wrote) and an outbound one (the rep wrote) say very
    different things about a lead, so they are counted apart: ``email_inbound``, ``email_outbound``.
    """
    kind = activities["type"].astype("str")
    direction = activities["direction"]
    return kind.where(direction.isna(), kind + "_" + direction.astype("str"))


@dataclass(frozen=True)
class LeadFeatureSpec:
    """Which columns a lead feature frame has: fixed when a model is trained, reused to score."""

    activity_types: tuple[str, ...]
    lead_categoricals: tuple[str, ...] = LEAD_CATEGORICALS
    lead_numerics: tuple[str, ...] = ()
    account_categoricals: tuple[str, ...] = ACCOUNT_CATEGORICALS
    account_numerics: tuple[str, ...] = ACCOUNT_NUMERICS
    windows: tuple[int, ...] = (7, 30, 90)
    horizon_days: int = 91
    excluded: tuple[str, ...] = ()

    @classmethod
    def from_export(
        cls,
        export: Export,
        *,
        horizon_days: int = 91,
        windows: Sequence[int] = (7, 30, 90),
        exclude: Iterable[str] = (),
        min_activity_share: float = 0.005,
        as_of: pd.Timestamp | None = None,
    ) -> LeadFeatureSpec:
        """Spec for an export: its custom fields and the activity types that occur on leads
        (before ``as_of`` when given, so even the column set is point-in-time)."""
        exclude = tuple(exclude)
        lead_custom = custom_columns("leads", export.leads)
        acc_custom = custom_columns("accounts", export.accounts)
        lead_num = [c for c in lead_custom if pd.api.types.is_numeric_dtype(export.leads[c])]
        lead_cat = [c for c in lead_custom if c not in lead_num]
        acc_num = [c for c in acc_custom if pd.api.types.is_numeric_dtype(export.accounts[c])]
        acc_cat = [c for c in acc_custom if c not in acc_num]
        acts = export.activities[export.activities["lead_id"].notna()]
        if as_of is not None:
            acts = rows_before(acts, "occurred_at", as_of)
        shares = activity_kind(acts).value_counts(normalize=True)
        types = tuple(sorted(shares[shares >= min_activity_share].index.astype(str)))
        spec = cls(
            activity_types=types,
            lead_categoricals=tuple(c for c in (*LEAD_CATEGORICALS, *lead_cat) if c not in exclude),
            lead_numerics=tuple(c for c in lead_num if c not in exclude),
            account_categoricals=tuple(c for c in (*ACCOUNT_CATEGORICALS, *acc_cat) if c not in exclude),
            account_numerics=tuple(c for c in (*ACCOUNT_NUMERICS, *acc_num) if c not in exclude),
            windows=tuple(windows),
            horizon_days=horizon_days,
            excluded=exclude,
        )
        return spec

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


@dataclass
class LeadContext:
    """What the CRM's history said at ``as_of`` about sources, owners and accounts."""

    as_of: pd.Timestamp
    horizon_days: int
    global_rate: float
    source_rate: dict[str, float] = field(default_factory=dict)
    owner_rate: dict[str, float] = field(default_factory=dict)
    owner_open_leads: dict[str, int] = field(default_factory=dict)
    account_history: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            columns=["won_deals", "won_amount", "lost_deals", "open_opportunities"], dtype=float
        )
    )

    def __getstate__(self) -> dict:
        # the lookup cache of the lean path (see _history_rows) is rebuilt, not saved with the model
        return {k: v for k, v in self.__dict__.items() if k != "_history_rows"}


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
    activities: pd.DataFrame, lead_ids: pd.Index, created_at: pd.Series, as_of: pd.Timestamp, spec: LeadFeatureSpec
) -> dict[str, np.ndarray]:
    """Counts by activity kind (see :func:`activity_kind`) over each window, all-time counts
    and days since the last one; inbound touches of any type per window.

    Vectorised with integer codes and ``np.bincount`` so that one lead (the API) costs
    microseconds and a snapshot of thousands of leads costs milliseconds.
    """
    acts = rows_before(activities, "occurred_at", as_of)
    pos = lead_ids.get_indexer(acts["lead_id"])
    mine = pos >= 0
    acts = acts[mine]
    pos = pos[mine]
    age = ((as_of - acts["occurred_at"]) / DAY).to_numpy(dtype=float)
    type_pos = pd.Index(spec.activity_types).get_indexer(activity_kind(acts))
    inbound = (acts["direction"] == "inbound").to_numpy(dtype=bool)
    n, k = len(lead_ids), len(spec.activity_types)
    # engagement intensity: all-time count per week of the lead's life (at least one day)
    lead_age = np.maximum(((as_of - created_at) / DAY).to_numpy(dtype=float), 1.0)
    typed = type_pos >= 0
    cell = pos[typed] * k + type_pos[typed]
    cell_age = age[typed]

    def per_type_counts(mask: np.ndarray) -> np.ndarray:
        return np.bincount(cell[mask], minlength=n * k).reshape(n, k).astype(float)

    def latest(idx: np.ndarray, ages: np.ndarray, size: int) -> np.ndarray:
        out = np.full(size, np.inf)
        np.minimum.at(out, idx, ages)
        out[np.isinf(out)] = np.nan
        return out

    window_counts = {w: per_type_counts(cell_age < w) for w in spec.windows}
    totals = per_type_counts(np.ones(len(cell), dtype=bool))
    since = latest(cell, cell_age, n * k).reshape(n, k)
    cols: dict[str, np.ndarray] = {}
    for j, t in enumerate(spec.activity_types):
        for w in spec.windows:
            cols[f"{t}_{w}d"] = window_counts[w][:, j]
        cols[f"{t}_total"] = totals[:, j]
        cols[f"{t}_per_week"] = totals[:, j] * 7.0 / lead_age
        cols[f"days_since_{t}"] = since[:, j]
    for w in spec.windows:
        cols[f"inbound_{w}d"] = np.bincount(pos[inbound & (age < w)], minlength=n).astype(float)
    cols["activities_total"] = np.bincount(pos, minlength=n).astype(float)
    cols["days_since_activity"] = latest(pos, age, n)
    return cols


def _lookup(keys: np.ndarray, mapping: dict, default: float) -> np.ndarray:
    return np.fromiter((mapping.get(k, default) if isinstance(k, str) else default for k in keys), float, len(keys))


def _column(frame: pd.DataFrame, name: str, numeric: bool) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), np.nan)
    if numeric:
        return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
    values = frame[name]
    if not pd.api.types.is_string_dtype(values):
        values = values.astype("str").where(values.notna())
    return values.to_numpy(dtype=object, na_value=np.nan)


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
    or after it are invisible. ``context`` must not be newer than ``as_of``.
    """
    if context.as_of > as_of:
        raise ValueError(f"context as of {context.as_of} is newer than as_of {as_of}: it would leak")
    lead_ids = pd.Index(leads["lead_id"], name="lead_id")
    lean = _lean_columns(leads, accounts, activities, as_of, context, spec) if _lean_applies(
        leads, accounts, activities, as_of, spec
    ) else None
    if lean is not None:
        return pd.DataFrame({c: lean[c] for c in spec.feature_names}, index=lead_ids)
    cols: dict[str, np.ndarray] = {}
    for c in spec.lead_categoricals:
        cols[c] = _column(leads, c, numeric=False)
    for c in spec.lead_numerics:
        cols[c] = _column(leads, c, numeric=True)
    acc = rows_before(accounts, "created_at", as_of).drop_duplicates("account_id").set_index("account_id")
    acc_rows = acc.reindex(leads["account_id"].to_numpy())
    for c in spec.account_categoricals:
        cols[f"account_{c}"] = _column(acc_rows, c, numeric=False)
    for c in spec.account_numerics:
        cols[f"account_{c}"] = _column(acc_rows, c, numeric=True)
    cols["lead_age_days"] = ((as_of - leads["created_at"]) / DAY).to_numpy(dtype=float)
    cols["account_age_days"] = ((as_of - acc_rows["created_at"]) / DAY).to_numpy(dtype=float)
    cols.update(_activity_features(activities, lead_ids, leads["created_at"], as_of, spec))
    source = leads["source"].to_numpy(dtype=object)
    owner = leads["owner_id"].to_numpy(dtype=object)
    cols["source_conversion_rate"] = _lookup(source, context.source_rate, context.global_rate)
    cols["owner_conversion_rate"] = _lookup(owner, context.owner_rate, context.global_rate)
    cols["owner_open_leads"] = _lookup(owner, context.owner_open_leads, 0.0)
    hist = context.account_history
    row = hist.index.get_indexer(leads["account_id"].to_numpy(dtype=object))
    for c in ("won_deals", "won_amount", "lost_deals", "open_opportunities"):
        values = hist[c].to_numpy(dtype=float) if c in hist else np.zeros(len(hist))
        cols[f"account_{c}"] = np.where(row >= 0, values[row] if len(values) else 0.0, 0.0)
    return pd.DataFrame({c: cols[c] for c in spec.feature_names}, index=lead_ids)


# ---------------------------------------------------------------- the lean path (API requests)
#: Up to this many leads, and this many account and activity rows, :func:`lead_features`
#: walks the rows in plain Python: about 0.3 ms for one lead instead of about 4 ms of pandas
#: calls whose fixed cost does not depend on the number of rows. Larger inputs (snapshots of
#: thousands of leads) take the vectorised path. Both give the same values (tested).
LEAN_MAX_LEADS = 64
LEAN_MAX_ROWS = 20_000


def _lean_applies(
    leads: pd.DataFrame, accounts: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp, spec: LeadFeatureSpec
) -> bool:
    """Whether the frames are small and typed as the loader and the API type them (strings,
    float64 numbers, UTC timestamps). Anything else, including what the vectorised path
    refuses with an error, goes the vectorised way."""
    if len(leads) > LEAN_MAX_LEADS or len(accounts) > LEAN_MAX_ROWS or len(activities) > LEAN_MAX_ROWS:
        return False
    if as_of.tzinfo is None:
        return False
    dtypes = [dict(zip(frame.columns, frame.dtypes, strict=True)) for frame in (leads, accounts, activities)]
    lead_t, acc_t, act_t = dtypes
    required = [
        (lead_t, ("lead_id", "account_id", "source", "owner_id"), pd.StringDtype),
        (lead_t, ("created_at",), pd.DatetimeTZDtype),
        (acc_t, ("account_id",), pd.StringDtype),
        (acc_t, ("created_at",), pd.DatetimeTZDtype),
        (act_t, ("lead_id", "type", "direction"), pd.StringDtype),
        (act_t, ("occurred_at",), pd.DatetimeTZDtype),
    ]
    for types, names, kind in required:
        if not all(isinstance(types.get(name), kind) for name in names):
            return False
    optional = [
        (lead_t, spec.lead_categoricals, pd.StringDtype),
        (acc_t, spec.account_categoricals, pd.StringDtype),
    ]
    for types, names, kind in optional:
        if not all(name not in types or isinstance(types[name], kind) for name in names):
            return False
    numeric = [(lead_t, spec.lead_numerics), (acc_t, spec.account_numerics)]
    if any(c in types and types[c] != np.float64 for types, names in numeric for c in names):
        return False
    return True  # unique lead ids and present account ids: checked by _lean_columns


def _days_before(as_of: pd.Timestamp, values: pd.Series) -> np.ndarray:
    """``((as_of - values) / DAY)`` in numpy: the same unit and the same float division as pandas'."""
    unit = values.dtype.unit
    stamps = values.to_numpy(dtype=f"datetime64[{unit}]")
    return (np.datetime64(as_of.tz_convert(None).as_unit(as_of.unit).to_datetime64()) - stamps) / np.timedelta64(1, "D")


def _history_rows(context: LeadContext) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """The account history as a dict from account id to row, and its columns as arrays
    (built once per context: a pandas index lookup costs ~100 us a call)."""
    hist = context.account_history
    cached = context.__dict__.get("_history_rows")
    if cached is None or cached[0] is not hist:
        rows = {k: i for i, k in enumerate(hist.index) if isinstance(k, str)}
        values = {c: hist[c].to_numpy(dtype=float) for c in hist.columns}
        cached = (hist, rows, values)
        context.__dict__["_history_rows"] = cached
    return cached[1], cached[2]


def _lean_columns(
    leads: pd.DataFrame,
    accounts: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp,
    context: LeadContext,
    spec: LeadFeatureSpec,
) -> dict[str, np.ndarray] | None:
    """:func:`lead_features`' columns, row by row: the same definitions as the vectorised path.

    ``None`` (use the vectorised path) for a missing or repeated lead id or a missing account id."""
    n = len(leads)
    ids = leads["lead_id"].tolist()
    lead_pos = {lead_id: i for i, lead_id in enumerate(ids)}
    account_ids = accounts["account_id"].tolist()
    if len(lead_pos) < n or not all(isinstance(i, str) for i in ids) or not all(isinstance(a, str) for a in account_ids):
        return None
    cols: dict[str, np.ndarray] = {}
    for c in spec.lead_categoricals:
        cols[c] = _column(leads, c, numeric=False)
    for c in spec.lead_numerics:
        cols[c] = _column(leads, c, numeric=True)

    # the lead's account: the first row of its id created before as_of (rows_before + drop_duplicates)
    acc_age = _days_before(as_of, accounts["created_at"])
    first: dict[str, int] = {}
    for j, (acc_id, age) in enumerate(zip(account_ids, acc_age.tolist(), strict=True)):
        if age > 0 and acc_id not in first:
            first[acc_id] = j
    lead_accounts = leads["account_id"].tolist()
    acc_pos = [first.get(a, -1) if isinstance(a, str) else -1 for a in lead_accounts]

    def pick(values: np.ndarray, dtype: type) -> np.ndarray:
        return np.array([values[p] if p >= 0 else np.nan for p in acc_pos], dtype=dtype)

    for c in spec.account_categoricals:
        cols[f"account_{c}"] = pick(_column(accounts, c, numeric=False), object) if c in accounts else np.full(n, np.nan)
    for c in spec.account_numerics:
        cols[f"account_{c}"] = pick(accounts[c].to_numpy(dtype=float), float) if c in accounts else np.full(n, np.nan)
    lead_age = _days_before(as_of, leads["created_at"])
    cols["lead_age_days"] = lead_age
    cols["account_age_days"] = pick(acc_age, float)

    # activities before as_of, by kind (type, or type_direction) and window
    k, windows = len(spec.activity_types), spec.windows
    type_pos = {t: j for j, t in enumerate(spec.activity_types)}
    in_window = {w: np.zeros((n, k)) for w in windows}
    totals = np.zeros((n, k))
    since = np.full((n, k), np.inf)
    inbound = {w: np.zeros(n) for w in windows}
    all_total = np.zeros(n)
    last = np.full(n, np.inf)
    act_age = _days_before(as_of, activities["occurred_at"]).tolist()
    rows = zip(activities["lead_id"].tolist(), activities["type"].tolist(), activities["direction"].tolist(), act_age, strict=True)
    for lead_id, kind, direction, age in rows:
        i = lead_pos.get(lead_id) if isinstance(lead_id, str) else None
        if i is None or not age > 0:  # another lead's, at or after as_of, or no timestamp
            continue
        all_total[i] += 1
        last[i] = min(last[i], age)
        if isinstance(direction, str):
            kind = f"{kind}_{direction}" if isinstance(kind, str) else None
            if direction == "inbound":
                for w in windows:
                    if age < w:
                        inbound[w][i] += 1
        j = type_pos.get(kind) if isinstance(kind, str) else None
        if j is None:
            continue
        totals[i, j] += 1
        since[i, j] = min(since[i, j], age)
        for w in windows:
            if age < w:
                in_window[w][i, j] += 1
    since[np.isinf(since)] = np.nan
    last[np.isinf(last)] = np.nan
    weeks_base = np.maximum(lead_age, 1.0)
    for j, t in enumerate(spec.activity_types):
        for w in windows:
            cols[f"{t}_{w}d"] = in_window[w][:, j]
        cols[f"{t}_total"] = totals[:, j]
        cols[f"{t}_per_week"] = totals[:, j] * 7.0 / weeks_base
        cols[f"days_since_{t}"] = since[:, j]
    for w in windows:
        cols[f"inbound_{w}d"] = inbound[w]
    cols["activities_total"] = all_total
    cols["days_since_activity"] = last

    source = leads["source"].to_numpy(dtype=object)
    owner = leads["owner_id"].to_numpy(dtype=object)
    cols["source_conversion_rate"] = _lookup(source, context.source_rate, context.global_rate)
    cols["owner_conversion_rate"] = _lookup(owner, context.owner_rate, context.global_rate)
    cols["owner_open_leads"] = _lookup(owner, context.owner_open_leads, 0.0)
    hist_rows, hist_values = _history_rows(context)
    row = [hist_rows.get(a, -1) if isinstance(a, str) else -1 for a in lead_accounts]
    for c in ("won_deals", "won_amount", "lost_deals", "open_opportunities"):
        values = hist_values.get(c)
        cols[f"account_{c}"] = np.array(
            [float(values[r]) if r >= 0 and values is not None else 0.0 for r in row], dtype=float
        )
    return cols


def converted_within_horizon(leads: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int) -> pd.Series:
    """Label: the lead converted in ``[as_of, as_of + horizon)``. Reads the future on purpose: labels only."""
    end = as_of + pd.Timedelta(days=horizon_days)
    conv = leads["converted_at"]
    return ((conv >= as_of) & (conv < end)).astype(int).set_axis(pd.Index(leads["lead_id"], name="lead_id"))


def snapshot_times(start: pd.Timestamp, end: pd.Timestamp, every_days: int) -> list[pd.Timestamp]:
    """As-of times every ``every_days`` ending exactly at ``end`` (inclusive), none before ``start``."""
    times = pd.date_range(end=end.floor("D"), start=start.ceil("D"), freq=f"{every_days}D")
    return [pd.Timestamp(t) for t in times]


def lead_snapshots(
    export: Export,
    as_ofs: Sequence[pd.Timestamp],
    spec: LeadFeatureSpec,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """Training examples: for each ``as_of``, every lead open then, its features and label.

    Returns a frame with ``lead_id``, ``as_of``, the spec's features and ``label``. The
    caller makes sure ``as_of + horizon`` is not after the data's cutoff.
    """
    parts = []
    for as_of in tqdm(as_ofs, desc="lead snapshots", disable=not progress, unit="snapshot"):
        leads = open_leads(export.leads, as_of)
        if leads.empty:
            continue
        ctx = lead_context(export, as_of, spec.horizon_days)
        X = lead_features(leads, export.accounts, export.activities, as_of, ctx, spec)
        X.insert(0, "as_of", as_of)
        X["label"] = converted_within_horizon(leads, as_of, spec.horizon_days)
        parts.append(X.reset_index())
    if not parts:
        raise ValueError("no lead was open at any snapshot time: the export is too short or empty")
    return pd.concat(parts, ignore_index=True)


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
