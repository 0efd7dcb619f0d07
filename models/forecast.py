"""The bookings forecast: open pipeline and deals not yet created, simulated, per group.

* **Open pipeline**: each open deal is won within the horizon with its own probability
  (P(won within the horizon) of the deal model) and then books its amount. The sum of such
  uncertain deals is a Poisson-binomial (weighted by amounts): it is **simulated** (seeded),
  not approximated by a normal, and its P10 / P50 / P90 read off the draws.
* **Deals not yet created**: bookings from deals created *and* won within the horizon,
  learned from the history: per group, the number of such wins in past windows of the same
  length (every 4 weeks over the last year, each complete before ``as_of``, recent ones
  weighing more) gives a rate, scaled by the lead flow (leads open now vs at those windows'
  starts), drawn as a gamma-Poisson with the windows' over-dispersion; their
  amounts are drawn from the same windows' won amounts (the group's, else everyone's).
* Beside them, the **CRM weighted pipeline**: stage win rate x amount of the deals whose
  expected close date falls in the horizon, and the **reps' close dates**: the full amount
  of those deals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.contract import Export
from features.deals import decided_deals
from features.pit import open_leads
from models.deals import DealScorer, score_open_deals

GROUPINGS = ("none", "owner_id", "team", "industry", "product")
_MISSING = "(none)"


def group_keys(opportunities: pd.DataFrame, export: Export, by: str) -> pd.Series:
    """The forecast group of each deal: its owner, the owner's team, the account's industry,
    the product, or ``all`` (``by = none``). Missing values form the group ``(none)``."""
    if by not in GROUPINGS:
        raise ValueError(f"unknown grouping {by!r}: use one of {', '.join(GROUPINGS)}")
    idx = opportunities.index
    if by == "none":
        return pd.Series("all", index=idx, dtype=object)
    if by in ("owner_id", "product"):
        keys = opportunities[by]
    elif by == "team":
        reps = export.reps if export.reps is not None else pd.DataFrame(columns=["owner_id", "team"])
        keys = opportunities["owner_id"].map(reps.drop_duplicates("owner_id").set_index("owner_id")["team"])
    else:
        keys = opportunities["account_id"].map(export.accounts.drop_duplicates("account_id").set_index("account_id")["industry"])
    return keys.astype(object).where(keys.notna(), _MISSING)


@dataclass
class NewDealFlow:
    """Wins from deals created within a horizon, per group, as the history shows them."""

    rate: dict[str, float]
    amounts: dict[str, np.ndarray]
    all_amounts: np.ndarray
    lead_flow_factor: float
    windows: int
    dispersion: dict[str, float] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)


def new_deal_flow(
    export: Export, as_of: pd.Timestamp, horizon_days: int, by: str, lookback_days: int = 365, step_days: int = 28
) -> NewDealFlow:
    """Point-in-time: windows ``[s, s + h)`` ending before ``as_of``, every ``step_days`` over
    ``lookback_days``; in each, the deals created and won inside the window."""
    h = pd.Timedelta(days=horizon_days)
    decided = decided_deals(export, as_of)
    won = decided[decided["outcome"] == "won"]
    opps = export.opportunities.set_index("opportunity_id")
    won = won.assign(group=group_keys(opps.loc[won["opportunity_id"]], export, by).to_numpy())
    starts = [as_of - h - pd.Timedelta(days=k * step_days) for k in range(lookback_days // step_days + 1)]
    counts, amounts, open_counts = [], [], []
    for s in starts:
        inside = won[(won["created_at"] >= s) & (won["closed_at"] < s + h)]
        counts.append(inside["group"].value_counts())
        amounts.append(inside[["group", "amount"]])
        open_counts.append(len(open_leads(export.leads, s)))
    # recent windows weigh more (half-life two windows): the flow grows with the customer base
    weights = 0.5 ** (np.arange(len(starts)) / 2.0)
    table = pd.concat(counts, axis=1).fillna(0.0) if counts else pd.DataFrame()
    mean_count = (table * weights[: table.shape[1]]).sum(axis=1) / weights[: table.shape[1]].sum()
    # over-dispersion beyond Poisson, from the windows' spread: var = m + d m^2
    spread = table.var(axis=1, ddof=1) if table.shape[1] > 1 else pd.Series(0.0, index=table.index)
    dispersion = ((spread - table.mean(axis=1)) / table.mean(axis=1).clip(lower=1e-9) ** 2).clip(lower=0.0)
    pool = pd.concat(amounts, ignore_index=True) if amounts else pd.DataFrame(columns=["group", "amount"])
    pool = pool.dropna(subset=["amount"])
    now = len(open_leads(export.leads, as_of))
    past = float(np.mean(open_counts)) if open_counts else 0.0
    factor = float(np.clip(now / past, 0.5, 2.0)) if past > 0 else 1.0
    return NewDealFlow(
        rate={str(k): float(v) * factor for k, v in mean_count.items()},
        dispersion={str(k): float(v) for k, v in dispersion.items()},
        amounts={str(k): g["amount"].to_numpy(dtype=float) for k, g in pool.groupby("group")},
        all_amounts=pool["amount"].to_numpy(dtype=float),
        lead_flow_factor=factor,
        windows=len(starts),
        details={"open_leads_now": float(now), "open_leads_past_mean": past},
    )


def _quantiles(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.quantile(draws, [0.1, 0.5, 0.9], axis=0)
    return q[0], q[1], q[2]


def simulate_bookings(
    amount: np.ndarray,
    p_win: np.ndarray,
    groups: np.ndarray,
    flow: NewDealFlow | None = None,
    n_sims: int = 5000,
    seed: int = 0,
    chunk: int = 500,
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Simulated bookings per group: Bernoulli(p) x amount for each open deal, plus a compound
    Poisson of new deals. Returns the summary per group, the draws ``(n_sims, groups)`` and the
    group names (columns of the draws)."""
    rng = np.random.default_rng(seed)
    amount = np.nan_to_num(np.asarray(amount, dtype=float))
    p_win = np.clip(np.asarray(p_win, dtype=float), 0.0, 1.0)
    names = sorted(set(map(str, groups)) | (set(flow.rate) if flow else set()))
    gidx = pd.Index(names).get_indexer(np.asarray(groups, dtype=object).astype(str))
    onehot = np.zeros((len(amount), len(names)))
    onehot[np.arange(len(amount)), gidx] = amount
    open_draws = np.zeros((n_sims, len(names)))
    for start in range(0, n_sims, chunk):  # chunks keep memory flat for large pipelines
        stop = min(start + chunk, n_sims)
        wins = rng.random((stop - start, len(amount))) < p_win
        open_draws[start:stop] = wins @ onehot
    new_draws = np.zeros_like(open_draws)
    expected_new = np.zeros(len(names))
    if flow is not None:
        for j, g in enumerate(names):
            lam = flow.rate.get(g, 0.0)
            pool = flow.amounts.get(g)
            pool = pool if pool is not None and len(pool) else flow.all_amounts
            if lam <= 0 or not len(pool):
                continue
            d = flow.dispersion.get(g, 0.0)
            lam_sims = lam * rng.gamma(1.0 / d, d, n_sims) if d > 1e-9 else np.full(n_sims, lam)
            n = rng.poisson(lam_sims)
            expected_new[j] = lam * float(np.mean(pool))
            picks = rng.choice(pool, size=int(n.sum()))
            sim = np.repeat(np.arange(n_sims), n)
            new_draws[:, j] = np.bincount(sim, weights=picks, minlength=n_sims)
    total = open_draws + new_draws
    p10, p50, p90 = _quantiles(total)
    expected_open = p_win * amount @ (onehot > 0) if len(amount) else np.zeros(len(names))
    summary = pd.DataFrame(
        {
            "group": names,
            "expected_open_pipeline": expected_open,
            "expected_new_deals": expected_new,
            "expected_bookings": expected_open + expected_new,
            "p10": p10,
            "p50": p50,
            "p90": p90,
        }
    )
    return summary, total, names


def weighted_pipeline(
    amount: np.ndarray, stage_rate: np.ndarray, close_date: pd.Series, as_of: pd.Timestamp, horizon_days: int
) -> tuple[np.ndarray, np.ndarray]:
    """(CRM weighted pipeline, reps' close dates) per deal: stage win rate x amount, and the
    amount, of deals whose expected close date is in ``[as_of, as_of + h)``; overdue close
    dates count as closing now (the CRM would show them in this period)."""
    end = as_of + pd.Timedelta(days=horizon_days)
    in_horizon = (close_date < end).to_numpy(dtype=bool) & close_date.notna().to_numpy()
    amount = np.nan_to_num(np.asarray(amount, dtype=float))
    return np.where(in_horizon, stage_rate * amount, 0.0), np.where(in_horizon, amount, 0.0)


def forecast_table(
    scored: pd.DataFrame,
    groups: pd.Series,
    stage_rate: np.ndarray,
    close_date: pd.Series,
    as_of: pd.Timestamp,
    horizon_days: int,
    flow: NewDealFlow | None,
    n_sims: int = 5000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per group: open deals, pipeline, expected bookings (open + new), P10/P50/P90, the CRM
    weighted pipeline and the reps' close dates. ``scored`` has ``amount`` and ``p_win_within_horizon``."""
    g = groups.to_numpy(dtype=object)
    summary, _, _ = simulate_bookings(scored["amount"].to_numpy(), scored["p_win_within_horizon"].to_numpy(), g, flow,
                                      n_sims=n_sims, seed=seed)
    weighted, commit = weighted_pipeline(scored["amount"].to_numpy(), stage_rate, close_date, as_of, horizon_days)
    per = pd.DataFrame({"group": g.astype(str), "amount": np.nan_to_num(scored["amount"].to_numpy(dtype=float)),
                        "weighted": weighted, "commit": commit}).groupby("group")
    out = summary.set_index("group")
    out.insert(0, "open_deals", per.size().reindex(out.index).fillna(0).astype(int))
    out.insert(1, "open_pipeline", per["amount"].sum().reindex(out.index).fillna(0.0))
    out["weighted_pipeline"] = per["weighted"].sum().reindex(out.index).fillna(0.0)
    out["reps_close_dates"] = per["commit"].sum().reindex(out.index).fillna(0.0)
    return out.reset_index()


def forecast_bookings(
    export: Export,
    scorer: DealScorer,
    as_of: pd.Timestamp,
    by: str = "owner_id",
    horizon_days: int | None = None,
    n_sims: int = 5000,
    seed: int = 0,
    include_new: bool = True,
) -> pd.DataFrame:
    """The forecast table of :func:`forecast_table` for the open deals of ``export`` at ``as_of``."""
    h = int(horizon_days or scorer.spec.horizon_days)
    scored, opps = score_open_deals(export, scorer, as_of, n_reasons=0, horizon_days=h)
    groups = group_keys(opps.set_index("opportunity_id").loc[scored["opportunity_id"]], export, by)
    rate = scored["stage"].map(scorer.context.stage_win_rate).fillna(scorer.context.global_win_rate).to_numpy(float)
    flow = new_deal_flow(export, as_of, h, by) if include_new else None
    table = forecast_table(scored, groups, rate, pd.Series(scored["crm_close_date"].to_numpy()), as_of, h, flow,
                           n_sims=n_sims, seed=seed)
    return table.rename(columns={"group": by if by != "none" else "group"})
