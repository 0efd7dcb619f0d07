"""The effort of a worklist item, measured in the user's own export: rep touches.

The worklist ranks every item by the value still to be won *per unit of effort*. The unit is a
**rep touch**: a logged activity that is not recorded as inbound (a call made, an email sent, a
meeting, a quote or contract sent; web visits, inbound emails, surveys and support tickets are the
customer's doing, not a rep's time). Each kind's effort is the median number of rep touches it took,
before ``as_of``, to win the value that kind of item counts:

* a **lead** (its value is P(converts) x its first deal's value): over the leads whose deal was won
  before ``as_of``, the touches on the lead from its creation to its conversion plus the touches on
  its deal up to the win;
* a **deal** (P(won) x amount): per open stage, over the deals won before ``as_of``, the touches on
  the deal from its last entry into that stage to the win; a stage with too few such deals takes the
  effort of a deal from its creation to the win;
* an **account** (the value expected beyond booked and beyond its open items): over the repeat
  purchases won before ``as_of`` (a won deal of a customer that had won before), the touches with the
  account (on it, its leads and its deals) after the previous win up to this one.

A median under one touch counts as one (nothing is won without doing anything). With fewer than
:data:`MIN_EXAMPLES` examples a lead or an account takes a deal's effort from creation (at least a
new deal to win) and says so; with too few won deals all three take :data:`DEFAULT_EFFORTS` (the
older hand-set relative units: lead 1, deal 2, account 3), and say so. Only rows known before
``as_of`` are read: wins and conversions before it, so activities after it never change an effort.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from features.contract import Export
from features.deals import decided_deals
from features.pit import known_as_of, rows_before

__all__ = ["DEFAULT_EFFORTS", "Effort", "Efforts", "MIN_EXAMPLES", "UNIT", "account_activities", "count_in_windows",
           "derive_efforts",
           "lead_touches", "deal_touches", "repeat_touches", "rep_touches"]

UNIT = "rep touches"
MIN_EXAMPLES = 20
#: The hand-set relative efforts, used only when the export has too few won deals to measure any.
DEFAULT_EFFORTS = {"lead": 1.0, "deal": 2.0, "account": 3.0}
KINDS = ("lead", "deal", "account")


@dataclass(frozen=True)
class Effort:
    """The effort of one kind of item (a deal stage's, when ``stage`` is set): its value in
    :data:`UNIT`, where it came from (``data``, ``fallback``, ``default``, ``setting`` or
    ``request``), the number of examples it was measured on, and the rule as a sentence."""

    kind: str
    effort: float
    source: str
    examples: int
    rule: str
    stage: str | None = None

    def label(self) -> str:
        what = f"{self.kind} in {self.stage}" if self.stage else self.kind
        return f"{what}: {self.effort:g} ({self.rule})"


@dataclass(frozen=True)
class Efforts:
    """Every kind's effort as of ``as_of``; a deal's effort is its stage's."""

    as_of: str
    lead: Effort
    deal: Effort  # a deal from its creation (and any stage without an effort of its own)
    account: Effort
    deal_stages: dict[str, Effort] = field(default_factory=dict)
    unit: str = UNIT

    def of(self, kind: str, stage: str | None = None) -> Effort:
        if kind == "deal":
            return self.deal_stages.get(stage, self.deal) if stage is not None else self.deal
        return self.lead if kind == "lead" else self.account

    def item_efforts(self, kinds: pd.Series, stages: pd.Series) -> np.ndarray:
        """The effort of each item (``stages``: a deal's current stage, else missing)."""
        return np.array([self.of(k, s if isinstance(s, str) else None).effort for k, s in zip(kinds, stages, strict=True)],
                        dtype=float)

    def overridden(self, values: Mapping[str, float | None], source: str) -> Efforts:
        """These efforts with the kinds in ``values`` (not ``None``) set by the user (``source``:
        ``setting`` or ``request``); a deal's override applies to every stage."""
        out = self
        for kind, value in values.items():
            if value is None:
                continue
            e = Effort(kind, float(value), source, 0, f"set by {'a setting' if source == 'setting' else 'the request'}")
            out = replace(out, **{kind: e}, **({"deal_stages": {}} if kind == "deal" else {}))
        return out

    def rows(self) -> list[Effort]:
        """Every effort a ranking uses, in the order a person reads them: the lead's, the deal's per
        stage (or the deal's, without stages), the account's."""
        return [self.lead, *(self.deal_stages.values() or [self.deal]), self.account]

    def as_dict(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "unit": self.unit, "lead": asdict(self.lead), "deal": asdict(self.deal),
                "account": asdict(self.account), "deal_stages": {s: asdict(e) for s, e in self.deal_stages.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Efforts:
        return cls(as_of=d["as_of"], unit=d.get("unit", UNIT), lead=Effort(**d["lead"]), deal=Effort(**d["deal"]),
                   account=Effort(**d["account"]), deal_stages={s: Effort(**e) for s, e in d["deal_stages"].items()})

    @classmethod
    def defaults(cls, why: str, as_of: str = "") -> Efforts:
        """The hand-set relative efforts, with the reason they are used."""
        made = {k: Effort(k, v, "default", 0, f"hand-set default: {why}") for k, v in DEFAULT_EFFORTS.items()}
        return cls(as_of=as_of, unit="relative units", **made)


# --------------------------------------------------------------------------------- counting touches
def account_activities(export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
    """The activities before ``as_of``, each with ``touch_account`` (the account it belongs to: its
    own, else its deal's, else its lead's) and ``rep`` (a rep touch: not recorded as inbound)."""
    a = rows_before(export.activities, "occurred_at", as_of)
    rep = a["direction"].ne("inbound") | a["direction"].isna() if "direction" in a else pd.Series(True, index=a.index)
    account = a["account_id"]
    if "opportunity_id" in a:
        account = account.fillna(a["opportunity_id"].map(export.opportunities.set_index("opportunity_id")["account_id"]))
    if "lead_id" in a:
        account = account.fillna(a["lead_id"].map(export.leads.set_index("lead_id")["account_id"]))
    return a.assign(touch_account=account.astype(object), rep=rep.to_numpy(dtype=bool))


def rep_touches(export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
    """The activities before ``as_of`` that took a rep's time (not recorded as inbound), with their account."""
    a = account_activities(export, as_of)
    return a[a["rep"]]


def count_in_windows(keys: pd.Series, times: pd.Series, window_keys: pd.Series, starts: pd.Series,
                     ends: pd.Series) -> np.ndarray:
    """For each window ``(key, start, end)``, the number of events ``(key, time)`` with
    ``start <= time <= end``. One sort and two binary searches (not a merge of every event with
    every window of its key); missing keys or times are never counted."""
    ok = keys.notna().to_numpy() & times.notna().to_numpy()
    codes, uniques = pd.factorize(keys[ok].astype(str))
    if not len(uniques):
        return np.zeros(len(window_keys), dtype=int)
    wcode = pd.Index(uniques).get_indexer(window_keys.astype(str).where(window_keys.notna()))
    t0 = min(t for t in (times[ok].min(), starts.min(), ends.min()) if pd.notna(t))
    t1 = max(t for t in (times[ok].max(), starts.max(), ends.max()) if pd.notna(t))
    span = int((t1 - t0) / pd.Timedelta(milliseconds=1)) + 2
    event = np.sort(codes.astype(np.int64) * span + _ms(times[ok], t0))
    valid = (wcode >= 0) & starts.notna().to_numpy() & ends.notna().to_numpy()
    out = np.zeros(len(window_keys), dtype=int)
    base = wcode[valid].astype(np.int64) * span
    lo = np.searchsorted(event, base + _ms(starts[valid], t0), side="left")
    hi = np.searchsorted(event, base + _ms(ends[valid], t0), side="right")
    out[valid] = np.maximum(hi - lo, 0)
    return out


def _ms(values: pd.Series, t0: pd.Timestamp) -> np.ndarray:
    """Milliseconds since ``t0``, clipped at 0 (a window starting before every event)."""
    return np.maximum(((pd.DatetimeIndex(values) - t0) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64), 0)


def _won(export: Export, as_of: pd.Timestamp) -> pd.DataFrame:
    d = decided_deals(export, as_of)
    return d[d["outcome"] == "won"].reset_index(drop=True)


def lead_touches(export: Export, as_of: pd.Timestamp, touches: pd.DataFrame | None = None,
                 won: pd.DataFrame | None = None) -> pd.Series:
    """Per lead whose deal was won before ``as_of``: its rep touches from creation to conversion plus
    its deal's rep touches up to the win (indexed by lead id)."""
    touches = rep_touches(export, as_of) if touches is None else touches
    won = (_won(export, as_of) if won is None else won).set_index("opportunity_id")
    leads = export.leads[known_as_of(export.leads["converted_at"], as_of).notna()]
    deal = leads["opportunity_id"] if "opportunity_id" in leads else pd.Series(np.nan, index=leads.index)
    by_deal = export.opportunities.dropna(subset=["lead_id"]).drop_duplicates("lead_id").set_index("lead_id")["opportunity_id"]
    deal = deal.fillna(leads["lead_id"].map(by_deal))
    leads = leads.assign(deal=deal)[deal.isin(won.index)]
    on_lead = count_in_windows(touches["lead_id"], touches["occurred_at"], leads["lead_id"], leads["created_at"],
                               leads["converted_at"])
    on_deal = count_in_windows(touches["opportunity_id"], touches["occurred_at"], leads["deal"],
                               leads["deal"].map(won["created_at"]), leads["deal"].map(won["closed_at"]))
    return pd.Series(on_lead + on_deal, index=leads["lead_id"].to_numpy(), name="touches")


def deal_touches(export: Export, as_of: pd.Timestamp, touches: pd.DataFrame | None = None,
                 won: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per deal won before ``as_of``, its rep touches up to the win from its creation (column
    ``created``) and from its last entry into each open stage before the win (a column per stage;
    missing when it never was in that stage)."""
    touches = rep_touches(export, as_of) if touches is None else touches
    won = _won(export, as_of) if won is None else won
    if won.empty:
        return pd.DataFrame(columns=["created", *export.open_stages], dtype=float)
    out = pd.DataFrame(index=won["opportunity_id"].to_numpy())
    out["created"] = count_in_windows(touches["opportunity_id"], touches["occurred_at"], won["opportunity_id"],
                                      won["created_at"], won["closed_at"])
    hist = rows_before(export.stage_history, "entered_at", as_of)
    hist = hist[hist["opportunity_id"].isin(won["opportunity_id"])]
    hist = hist.assign(closed_at=hist["opportunity_id"].map(won.set_index("opportunity_id")["closed_at"]))
    hist = hist[hist["entered_at"] <= hist["closed_at"]]
    for stage in export.open_stages:
        last = hist[hist["stage"] == stage].sort_values("entered_at", kind="stable").drop_duplicates(
            "opportunity_id", keep="last")
        n = count_in_windows(touches["opportunity_id"], touches["occurred_at"], last["opportunity_id"],
                             last["entered_at"], last["closed_at"])
        out[stage] = pd.Series(n, index=last["opportunity_id"].to_numpy()).reindex(out.index).astype(float)
    return out


def repeat_touches(export: Export, as_of: pd.Timestamp, touches: pd.DataFrame | None = None,
                   won: pd.DataFrame | None = None) -> pd.Series:
    """Per repeat purchase won before ``as_of`` (a won deal of an account that had won before): the
    rep touches with the account after its previous win up to this one (indexed by deal id)."""
    touches = rep_touches(export, as_of) if touches is None else touches
    won = (_won(export, as_of) if won is None else won).dropna(subset=["account_id"]).sort_values(["closed_at", "opportunity_id"], kind="stable")
    won = won.assign(previous=won.groupby("account_id")["closed_at"].shift())
    repeat = won[won["previous"].notna()]
    n = count_in_windows(touches["touch_account"], touches["occurred_at"], repeat["account_id"],
                         repeat["previous"] + pd.Timedelta(milliseconds=1), repeat["closed_at"])
    return pd.Series(n, index=repeat["opportunity_id"].to_numpy(), name="touches")


# --------------------------------------------------------------------------------- the rule
def _median(values: pd.Series) -> float:
    """The median touches, rounded to a whole touch and never under one."""
    return float(max(1.0, round(float(np.median(values.dropna().to_numpy(dtype=float))))))


def derive_efforts(export: Export, as_of: pd.Timestamp, min_examples: int = MIN_EXAMPLES) -> Efforts:
    """Every kind's effort measured on the export before ``as_of`` (the rule of this module)."""
    stamp = pd.Timestamp(as_of).isoformat()
    touches, won = rep_touches(export, as_of), _won(export, as_of)
    deals = deal_touches(export, as_of, touches, won)
    if len(deals) < min_examples:
        return Efforts.defaults(f"only {len(deals)} deals won before {stamp[:10]} (at least {min_examples} "
                                "needed to measure efforts)", stamp)
    deal = Effort("deal", _median(deals["created"]), "data", len(deals),
                  f"median {UNIT} of {len(deals):,} won deals from creation to the win")
    stages = {}
    for stage in export.open_stages:
        col = deals[stage].dropna() if stage in deals else pd.Series(dtype=float)
        if len(col) >= min_examples:
            stages[stage] = Effort("deal", _median(col), "data", len(col),
                                   f"median {UNIT} of {len(col):,} won deals from {stage} to the win", stage)
        else:
            stages[stage] = replace(deal, source="fallback", stage=stage,
                                    rule=f"only {len(col)} won deals passed {stage}: a deal from creation, {deal.rule}")

    def measured(kind: str, values: pd.Series, what: str, few: str) -> Effort:
        if len(values) >= min_examples:
            return Effort(kind, _median(values), "data", len(values), f"median {UNIT} of {len(values):,} {what}")
        return Effort(kind, deal.effort, "fallback", len(values), f"only {len(values)} {few}: a deal from creation")

    lead = measured("lead", lead_touches(export, as_of, touches, won),
                    "leads won as deals, from the lead's creation to the deal's win", "leads won as deals")
    account = measured("account", repeat_touches(export, as_of, touches, won),
                       "repeat purchases, from the previous purchase to the next", "repeat purchases")
    return Efforts(as_of=stamp, lead=lead, deal=deal, account=account, deal_stages=stages)
