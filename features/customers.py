"""Customer value per account and point-in-time account features (early signals).

**Customer value** of an account is the won amount (new, upsell and renewal deals) closed
within ``window_days`` after its first win, the first deal included. It is *complete* at
``as_of`` when the whole window lies before ``as_of``; only complete values are labels.
"High value" is the top ``1 - quantile`` of complete values.

**Account features** as of ``as_of`` (one row per account, only rows before ``as_of``):
firmographics and custom fields, the originating leads (how many, the first one's source
and seniority, their custom fields), the first deal (its amount and product: the first won
deal, else the largest open deal at its amount as of ``as_of``), and early signals after
the first win (activities, support tickets and survey scores in the first ``early_days``).
The same :func:`account_features` builds training snapshots and scores prospects and
customers alike (look-alikes): a prospect's first deal is its largest open deal and it has
no early signals yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import Export, custom_columns
from features.errors import NothingToLearnFrom
from features.pit import known_as_of, rows_before

__all__ = [
    "AccountFeatureSpec",
    "account_features",
    "account_snapshots",
    "customer_value",
    "high_value_threshold",
]

DAY = pd.Timedelta(days=1)
#: Lead fields describing how an account came in (of its first lead).
LEAD_ORIGIN_CATEGORICALS = ("source", "seniority")


def customer_value(opportunities: pd.DataFrame, as_of: pd.Timestamp, window_days: int = 365) -> pd.DataFrame:
    """Per account won before ``as_of``: ``first_won_at``, ``value`` and whether it is ``complete``.

    ``value`` sums the amounts of won deals closed in ``[first_won_at, first_won_at + window)``
    and before ``as_of`` (an amount missing in the CRM counts 0). ``complete`` means
    ``first_won_at + window <= as_of``: the value is final.
    """
    closed = known_as_of(opportunities["closed_at"], as_of)
    won = opportunities[closed.notna() & (opportunities["outcome"] == "won")]
    if won.empty:
        return pd.DataFrame(
            {"first_won_at": pd.Series(dtype="datetime64[ns, UTC]"), "value": pd.Series(dtype=float),
             "complete": pd.Series(dtype=bool)},
            index=pd.Index([], name="account_id", dtype=object),
        )
    first = won.groupby("account_id")["closed_at"].min()
    start = won["account_id"].map(first)
    window = pd.Timedelta(days=window_days)
    inside = won["closed_at"] < start + window
    value = won["amount"].fillna(0.0).where(inside, 0.0).groupby(won["account_id"]).sum()
    out = pd.DataFrame({"first_won_at": first, "value": value.reindex(first.index).astype(float)})
    out["complete"] = out["first_won_at"] + window <= as_of
    out.index.name = "account_id"
    return out


def _customers_found(opportunities: pd.DataFrame, values: pd.DataFrame, cutoff: pd.Timestamp) -> str:
    """What an export holds for high_value, in words (for the error that it holds too little)."""
    if opportunities.empty:
        return "no opportunities"
    if values.empty:
        return f"{len(opportunities):,} opportunities, none won before {cutoff.date()}"
    first = values["first_won_at"].min()
    return (f"{len(values):,} customers (accounts with a won deal), the first won on {first.date()}, "
            f"{(cutoff - first).days} days before the cutoff")


def high_value_threshold(values: pd.Series, quantile: float = 0.8) -> float:
    """The customer value at ``quantile`` of complete values: at or above it is "high value"."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be between 0 and 1 (exclusive), got {quantile}")
    if values.empty:
        raise ValueError("no complete customer value to take a quantile of: the history is too short")
    return float(np.quantile(values.to_numpy(dtype=float), quantile))


@dataclass(frozen=True)
class AccountFeatureSpec:
    """Which columns an account feature frame has: fixed when a model is trained, reused to score."""

    account_categoricals: tuple[str, ...] = ("industry", "country")
    account_numerics: tuple[str, ...] = ("employees", "annual_revenue")
    lead_categoricals: tuple[str, ...] = LEAD_ORIGIN_CATEGORICALS
    lead_numerics: tuple[str, ...] = ()
    early_days: int = 28
    window_days: int = 365

    @classmethod
    def from_export(cls, export: Export, *, early_days: int = 28, window_days: int = 365,
                    exclude: Sequence[str] = ()) -> AccountFeatureSpec:
        """Spec for an export: contract firmographics plus its custom fields (minus ``exclude``)."""
        acc_custom = custom_columns("accounts", export.accounts)
        lead_custom = custom_columns("leads", export.leads)
        acc_num = [c for c in acc_custom if pd.api.types.is_numeric_dtype(export.accounts[c])]
        lead_num = [c for c in lead_custom if pd.api.types.is_numeric_dtype(export.leads[c])]
        keep = lambda cols: tuple(c for c in cols if c not in set(exclude))  # noqa: E731
        return cls(
            account_categoricals=keep(("industry", "country", *(c for c in acc_custom if c not in acc_num))),
            account_numerics=keep(("employees", "annual_revenue", *acc_num)),
            lead_categoricals=keep((*LEAD_ORIGIN_CATEGORICALS, *(c for c in lead_custom if c not in lead_num))),
            lead_numerics=keep(tuple(lead_num)),
            early_days=early_days,
            window_days=window_days,
        )

    @property
    def categorical_features(self) -> list[str]:
        return [*self.account_categoricals, *(f"lead_{c}" for c in self.lead_categoricals), "first_deal_product"]

    @property
    def feature_names(self) -> list[str]:
        return [
            *self.account_categoricals,
            *self.account_numerics,
            *(f"lead_{c}" for c in self.lead_categoricals),
            *(f"lead_{c}" for c in self.lead_numerics),
            "account_age_days",
            "leads_total",
            "first_deal_amount",
            "first_deal_product",
            "is_customer",
            "days_since_first_win",
            "early_activities",
            "early_meetings",
            "early_support_tickets",
            "early_survey_score",
        ]


def _first_leads(leads: pd.DataFrame, as_of: pd.Timestamp) -> tuple[pd.DataFrame, pd.Series]:
    known = rows_before(leads[leads["account_id"].notna()], "created_at", as_of)
    first = known.sort_values(["created_at", "lead_id"], kind="stable").drop_duplicates("account_id")
    return first.set_index("account_id"), known.groupby("account_id").size()


def _first_deals(export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
    """Per account: the first won deal before ``as_of``, else its largest open deal at ``as_of``."""
    opps = rows_before(export.opportunities, "created_at", as_of)
    closed = known_as_of(opps["closed_at"], as_of)
    won = opps[closed.notna() & (opps["outcome"] == "won")]
    first_won = won.sort_values(["closed_at", "opportunity_id"], kind="stable").drop_duplicates("account_id")
    first_won = first_won.set_index("account_id")[["amount", "product", "closed_at"]]
    # open deals at as_of: their amount as the latest stage entered before as_of says
    still_open = opps[closed.isna()]
    hist = rows_before(export.stage_history, "entered_at", as_of)
    hist = hist[hist["opportunity_id"].isin(still_open["opportunity_id"])]
    latest = hist.sort_values("entered_at", kind="stable").drop_duplicates("opportunity_id", keep="last")
    amount_then = latest.set_index("opportunity_id")["amount"]
    open_amount = still_open["opportunity_id"].map(amount_then)
    # a deal sent without its stage history (an API request): its amount as the CRM holds it now
    no_history = ~still_open["opportunity_id"].isin(export.stage_history["opportunity_id"])
    open_amount = open_amount.where(~no_history, still_open["amount"])
    cand = still_open.assign(amount=open_amount.to_numpy()).sort_values(["amount", "opportunity_id"], ascending=[False, True])
    largest_open = cand.drop_duplicates("account_id").set_index("account_id")[["amount", "product"]]
    out = first_won.rename(columns={"closed_at": "first_won_at"})
    rest = largest_open.loc[~largest_open.index.isin(out.index)].assign(first_won_at=pd.NaT)
    return pd.concat([out, rest]) if len(rest) else out


def _account_activity(export: Export) -> pd.DataFrame:
    """Activities with the account they belong to (directly, or through their lead or deal)."""
    acts = export.activities
    acc = acts["account_id"]
    via_opp = acts["opportunity_id"].map(export.opportunities.set_index("opportunity_id")["account_id"])
    via_lead = acts["lead_id"].map(export.leads.set_index("lead_id")["account_id"])
    account = acc.where(acc.notna(), via_opp.where(via_opp.notna(), via_lead))
    return acts.assign(_account=account)[account.notna()]


def account_features(
    export: Export, account_ids: Sequence[str], as_of: pd.Timestamp, spec: AccountFeatureSpec,
    activities: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The feature frame of ``account_ids`` as of ``as_of``, indexed by ``account_id``.

    Only rows before ``as_of`` are read; an account created at or after ``as_of`` has no
    firmographics (all missing). ``activities`` may pass the result of the account lookup
    of activities when building many snapshots.
    """
    ids = pd.Index([str(a) for a in account_ids], name="account_id")
    acc = rows_before(export.accounts, "created_at", as_of).drop_duplicates("account_id").set_index("account_id")
    acc = acc.reindex(ids)
    cols: dict[str, np.ndarray] = {}
    for c in spec.account_categoricals:
        v = acc[c] if c in acc else pd.Series(np.nan, index=ids)
        cols[c] = v.astype("str").where(v.notna()).to_numpy(dtype=object)
    for c in spec.account_numerics:
        v = acc[c] if c in acc else pd.Series(np.nan, index=ids)
        cols[c] = pd.to_numeric(v, errors="coerce").to_numpy(dtype=float)
    first_lead, n_leads = _first_leads(export.leads, as_of)
    fl = first_lead.reindex(ids)
    for c in spec.lead_categoricals:
        v = fl[c] if c in fl else pd.Series(np.nan, index=ids)
        cols[f"lead_{c}"] = v.astype("str").where(v.notna()).to_numpy(dtype=object)
    for c in spec.lead_numerics:
        v = fl[c] if c in fl else pd.Series(np.nan, index=ids)
        cols[f"lead_{c}"] = pd.to_numeric(v, errors="coerce").to_numpy(dtype=float)
    cols["account_age_days"] = ((as_of - acc["created_at"]) / DAY).to_numpy(dtype=float)
    cols["leads_total"] = n_leads.reindex(ids).fillna(0).to_numpy(dtype=float)
    deals = _first_deals(export, as_of).reindex(ids)
    cols["first_deal_amount"] = deals["amount"].to_numpy(dtype=float)
    cols["first_deal_product"] = deals["product"].astype("str").where(deals["product"].notna()).to_numpy(dtype=object)
    won_at = pd.to_datetime(deals["first_won_at"], utc=True)
    cols["is_customer"] = won_at.notna().to_numpy(dtype=float)
    cols["days_since_first_win"] = ((as_of - won_at) / DAY).to_numpy(dtype=float)

    acts = _account_activity(export) if activities is None else activities
    acts = rows_before(acts, "occurred_at", as_of)
    # reindex, not Series.map: pandas 3 cannot map through an empty datetime Series (no customer in the batch)
    first_win = won_at.dropna()
    first_win = first_win[~first_win.index.duplicated()]
    start = first_win.reindex(acts["_account"]).set_axis(acts.index)
    early = acts[(acts["occurred_at"] >= start) & (acts["occurred_at"] < start + pd.Timedelta(days=spec.early_days))]
    g = early.groupby("_account")
    cols["early_activities"] = g.size().reindex(ids).fillna(0).to_numpy(dtype=float)
    cols["early_meetings"] = early[early["type"] == "meeting"].groupby("_account").size().reindex(ids).fillna(0).to_numpy(dtype=float)
    tickets = early[early["type"] == "support_ticket"].groupby("_account").size()
    cols["early_support_tickets"] = tickets.reindex(ids).fillna(0).to_numpy(dtype=float)
    cols["early_survey_score"] = early[early["type"] == "survey"].groupby("_account")["score"].mean().reindex(ids).to_numpy(dtype=float)
    not_customer = ~won_at.notna().to_numpy()
    for c in ("early_activities", "early_meetings", "early_support_tickets"):
        cols[c] = np.where(not_customer, np.nan, cols[c])
    return pd.DataFrame({c: cols[c] for c in spec.feature_names}, index=ids)


def account_snapshots(
    export: Export, cutoff: pd.Timestamp, spec: AccountFeatureSpec, *, quantile: float = 0.8,
    threshold: float | None = None, progress: bool = False,
) -> tuple[pd.DataFrame, float]:
    """Training examples for the high-value model: each customer whose value is complete at
    ``cutoff``, with its features as of ``first_won_at + early_days`` and its labels.

    Returns the frame (``account_id``, ``as_of``, features, ``value``, ``label``) sorted by
    ``as_of``, and the high-value threshold used (``threshold``, else the ``quantile`` of
    the complete values at ``cutoff``).

    The export's rows are grouped by account once (:class:`AccountRows`): each weekly snapshot
    hands :func:`account_features` only the rows of its own accounts. The frame equals
    :func:`_account_snapshots_naive` (the full tables each week), the tests' oracle.
    """
    rows = AccountRows(export)

    def features(ids: list[str], as_of: pd.Timestamp) -> pd.DataFrame:
        own, activities = rows.of(ids)
        return account_features(own, ids, as_of, spec, activities=activities)

    return _account_snapshots(export, cutoff, spec, quantile, threshold, progress, features)


def _account_snapshots_naive(
    export: Export, cutoff: pd.Timestamp, spec: AccountFeatureSpec, *, quantile: float = 0.8,
    threshold: float | None = None, progress: bool = False,
) -> tuple[pd.DataFrame, float]:
    """:func:`account_snapshots` with the full tables for every snapshot time (the reference)."""
    acts = _account_activity(export)
    return _account_snapshots(export, cutoff, spec, quantile, threshold, progress,
                              lambda ids, t: account_features(export, ids, t, spec, activities=acts))


def _account_snapshots(
    export: Export, cutoff: pd.Timestamp, spec: AccountFeatureSpec, quantile: float, threshold: float | None,
    progress: bool, features: Callable[[list[str], pd.Timestamp], pd.DataFrame],
) -> tuple[pd.DataFrame, float]:
    from tqdm.auto import tqdm

    values = customer_value(export.opportunities, cutoff, spec.window_days)
    done = values[values["complete"]]
    if done.empty:
        raise NothingToLearnFrom(
            f"high_value needs customers whose first won deal is at least {spec.window_days} days before the "
            f"cutoff {cutoff.date()} (their value over that window is then complete)",
            _customers_found(export.opportunities, values, cutoff))
    if threshold is None:
        threshold = high_value_threshold(done["value"], quantile)
    # weekly snapshot times (the early-signal window itself is exact: early_days after the win)
    as_of = (done["first_won_at"] + pd.Timedelta(days=spec.early_days)).dt.ceil("7D")
    parts = []
    for t, group in tqdm(done.groupby(as_of), desc="account snapshots", disable=not progress, unit="week"):
        X = features(list(group.index), t)
        X.insert(0, "as_of", t)
        X["value"] = group["value"].to_numpy()
        parts.append(X)
    frame = pd.concat(parts).reset_index().sort_values(["as_of", "account_id"], ignore_index=True)
    frame["label"] = (frame["value"] >= threshold).astype(int)
    return frame, threshold


class AccountRows:
    """An export's rows coded once by the account they belong to (activities through their lead
    or deal, stage entries through their deal), to hand :func:`account_features` the rows of a
    few accounts instead of the full tables."""

    def __init__(self, export: Export) -> None:
        self._export = export
        self._acts = _account_activity(export)
        opps = export.opportunities
        sh_account = export.stage_history["opportunity_id"].map(opps.drop_duplicates("opportunity_id")
                                                                .set_index("opportunity_id")["account_id"])
        columns = [export.accounts["account_id"], export.leads["account_id"], opps["account_id"], sh_account,
                   self._acts["_account"]]
        codes, self._keys = pd.factorize(pd.concat(columns, ignore_index=True))
        bounds = np.cumsum([0, *(len(c) for c in columns)])
        self._codes = [codes[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def of(self, account_ids: Sequence[str]) -> tuple[Export, pd.DataFrame]:
        """The export restricted to the rows of ``account_ids``, and their activities (with ``_account``)."""
        wanted = np.zeros(len(self._keys) + 1, dtype=bool)  # the extra last slot: code -1, no account
        code = self._keys.get_indexer([str(a) for a in account_ids])
        wanted[code[code >= 0]] = True
        acc, leads, opps, sh, acts = (wanted[c] for c in self._codes)
        e = self._export
        sub = dataclasses.replace(e, accounts=e.accounts[acc], leads=e.leads[leads], opportunities=e.opportunities[opps],
                                  stage_history=e.stage_history[sh])
        return sub, self._acts[acts]
