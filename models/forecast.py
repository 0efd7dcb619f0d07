"""The bookings forecast: open pipeline and deals not yet created, simulated, per group.

* **Open pipeline**: each open deal is won within the horizon with its own probability
  (P(won within the horizon) of the deal model) and then books its amount. The sum of such
  uncertain deals is a Poisson-binomial (weighted by amounts): it is **simulated** (seeded),
  not approximated by a normal, and its P10 / P50 / P90 read off the draws.
* **Deals not yet created**: bookings from deals created *and* won within the horizon,
  learned from the history: per group, the number of such wins in past windows of the same
  length (every 4 weeks over the last year, each complete before ``as_of``, recent ones
  weighing more, with the half-life chosen on earlier origins) gives a rate, scaled by the lead
  flow (leads open now vs at those windows' starts), drawn as a gamma-Poisson with the windows'
  over-dispersion; their amounts are drawn from the same windows' won amounts, the group's and
  everyone's mixed by an empirical-Bayes weight (a rep's few wins say little about the next size).
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
#: The group of deals without an owner (by owner or team): shown, never counted as a rep.
UNASSIGNED = "unassigned"


def group_keys(opportunities: pd.DataFrame, export: Export, by: str) -> pd.Series:
    """The forecast group of each deal: its owner, the owner's team, the account's industry,
    the product, or ``all`` (``by = none``). Deals without an owner form the group
    ``unassigned`` (by owner or team: not a rep, not a team); other missing values ``(none)``."""
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
    keys = keys.astype(object).where(keys.notna(), _MISSING)
    if by in ("owner_id", "team"):
        keys = keys.where(opportunities["owner_id"].notna().to_numpy(), UNASSIGNED)
    return keys


#: Recency half-lives of the new-deal run rate, in windows (``step_days`` apart), chosen per
#: forecast on validation origins (:func:`choose_half_life`). The grid was chosen on generated seeds
#: 0, 5 and 6 (14 origins each): with 4 windows the run rate lagged the samples' growth (bookings from
#: new deals 19-20% short in total; a flat year 35%), with 2 (the former fixed value) 9-11%, with 1 0-3%.
HALF_LIVES = (1.0, 2.0)
#: Validation origins of that choice: this many, ``step_days`` apart, the latest a horizon before ``as_of``.
VALIDATION_ORIGINS = 3


@dataclass
class NewDealFlow:
    """Wins from deals created within a horizon, per group, as the history shows them.

    ``amount_weight``: per group, the share of its simulated amounts drawn from its own past wins
    (the rest from everyone's): the empirical-Bayes weight ``n / (n + k)`` of its ``n`` distinct
    wins, ``k`` the ratio of the within-group to the between-group variance of the amounts
    (:func:`amount_weights`); a group missing from it draws from its own wins only."""

    rate: dict[str, float]
    amounts: dict[str, np.ndarray]
    all_amounts: np.ndarray
    lead_flow_factor: float
    windows: int
    dispersion: dict[str, float] = field(default_factory=dict)
    details: dict[str, float] = field(default_factory=dict)
    amount_weight: dict[str, float] = field(default_factory=dict)
    half_life_windows: float = 2.0

    def expected_amount(self, group: str) -> float:
        """The mean amount of one of ``group``'s new wins (its own and everyone's, weighted)."""
        own = self.amounts.get(group)
        every = float(np.mean(self.all_amounts)) if len(self.all_amounts) else 0.0
        if own is None or not len(own):
            return every
        w = self.amount_weight.get(group, 1.0)
        return w * float(np.mean(own)) + (1 - w) * every


@dataclass
class _Windows:
    """Past windows ``[s, s + h)`` before an as_of: wins created and won inside each, per group."""

    counts: pd.DataFrame  # group x window (0: the latest)
    pool: pd.DataFrame  # opportunity_id, group, amount of those wins (a deal once per window it is in)
    open_leads: np.ndarray  # leads open at each window's start
    open_now: int


def _won_deals(export: Export, as_of: pd.Timestamp, by: str) -> pd.DataFrame:
    """The deals won before ``as_of`` with their group (the wins before an earlier time are those closed before it)."""
    decided = decided_deals(export, as_of)
    won = decided[decided["outcome"] == "won"]
    opps = export.opportunities.set_index("opportunity_id")
    return won.assign(group=group_keys(opps.loc[won["opportunity_id"]], export, by).to_numpy())


def _windows(export: Export, as_of: pd.Timestamp, horizon_days: float, won: pd.DataFrame, lookback_days: int,
             step_days: int, open_cache: dict[pd.Timestamp, int] | None = None) -> _Windows:
    """``won``: :func:`_won_deals` at ``as_of`` or later (only wins closed inside a window, before
    ``as_of``, are read); ``open_cache``: open-lead counts already taken, by time."""
    h = pd.Timedelta(days=horizon_days)
    cache = open_cache if open_cache is not None else {}

    def n_open(t: pd.Timestamp) -> int:
        if t not in cache:
            cache[t] = len(open_leads(export.leads, t))
        return cache[t]

    starts = [as_of - h - pd.Timedelta(days=k * step_days) for k in range(lookback_days // step_days + 1)]
    counts, amounts = [], []
    for s in starts:
        inside = won[(won["created_at"] >= s) & (won["closed_at"] < s + h)]
        counts.append(inside["group"].value_counts())
        amounts.append(inside[["opportunity_id", "group", "amount"]])
    table = pd.concat(counts, axis=1).fillna(0.0) if counts else pd.DataFrame()
    table.columns = range(table.shape[1])
    pool = pd.concat(amounts, ignore_index=True).dropna(subset=["amount"])
    return _Windows(table, pool, np.asarray([n_open(t) for t in starts], dtype=float), n_open(as_of))


def _rates(w: _Windows, half_life_windows: float) -> tuple[pd.Series, float]:
    """Per group, the recency-weighted mean count over the windows times the lead-flow factor (leads
    open now over their mean at the windows' starts, within 0.5-2), and that factor."""
    weights = 0.5 ** (np.arange(w.counts.shape[1]) / half_life_windows)
    mean_count = (w.counts * weights).sum(axis=1) / weights.sum() if w.counts.shape[1] else pd.Series(dtype=float)
    past = float(np.mean(w.open_leads)) if len(w.open_leads) else 0.0
    factor = float(np.clip(w.open_now / past, 0.5, 2.0)) if past > 0 else 1.0
    return mean_count * factor, factor


def amount_weights(pool: pd.DataFrame) -> dict[str, float]:
    """Per group, the weight of its own mean amount against everyone's: ``n / (n + k)`` over its
    ``n`` distinct wins, with ``k`` = within-group variance / variance of the true group means
    (the spread of the group means less their sampling noise); 0 when the groups differ by no more
    than noise. A rep's few wins, heavy-tailed, say little about the next one's size."""
    deals = pool.drop_duplicates("opportunity_id")
    if deals.empty or deals["group"].nunique() < 2:
        return {str(g): 1.0 for g in deals["group"].unique()}
    g = deals.groupby("group")["amount"]
    n, means = g.size(), g.mean()
    within = float(deals["amount"].var(ddof=1))
    between = float(means.var(ddof=1)) - float((within / n).mean())
    if not np.isfinite(within) or between <= 0:
        return {str(k): 0.0 for k in n.index}
    k = within / between
    return {str(key): float(v / (v + k)) for key, v in n.items()}


def choose_half_life(export: Export, as_of: pd.Timestamp, horizon_days: float, by: str, lookback_days: int,
                     step_days: int, won: pd.DataFrame | None = None, open_cache: dict[pd.Timestamp, int] | None = None
                     ) -> tuple[float, dict[str, float]]:
    """The recency half-life (in windows, from :data:`HALF_LIVES`) whose run rate came closest to
    the bookings of new deals in total at the :data:`VALIDATION_ORIGINS` origins a horizon and more
    before ``as_of`` (their outcomes known at ``as_of``). The total, not the per-group error: per
    group the error is mostly the noise of a few wins, the same for every half-life, while the
    total shows what the half-life trades, lag behind a growing or shrinking flow against noise."""
    h = pd.Timedelta(days=horizon_days)
    won = won if won is not None else _won_deals(export, as_of, by)
    errors = dict.fromkeys(HALF_LIVES, 0.0)
    for j in range(VALIDATION_ORIGINS):
        v = as_of - h - pd.Timedelta(days=j * step_days)
        # created at or after v and won before v + h <= as_of: known at as_of
        booked = won[(won["created_at"] >= v) & (won["closed_at"] < v + h)]
        actual = float(booked["amount"].fillna(0.0).sum())
        w = _windows(export, v, horizon_days, won, lookback_days, step_days, open_cache)
        weights = amount_weights(w.pool)
        flow = NewDealFlow(rate={}, amounts={str(k): x["amount"].to_numpy(float) for k, x in w.pool.groupby("group")},
                           all_amounts=w.pool["amount"].to_numpy(float), lead_flow_factor=1.0, windows=0,
                           amount_weight=weights)
        for hl in HALF_LIVES:
            rate, _ = _rates(w, hl)
            errors[hl] += abs(sum(float(r) * flow.expected_amount(str(g)) for g, r in rate.items()) - actual)
    best = min(HALF_LIVES, key=lambda hl: errors[hl])
    return best, {f"validation_error_half_life_{hl:g}": e for hl, e in errors.items()}


def new_deal_flow(
    export: Export, as_of: pd.Timestamp, horizon_days: int, by: str, lookback_days: int = 365, step_days: int = 28,
    half_life_windows: float | None = None,
) -> NewDealFlow:
    """Point-in-time: windows ``[s, s + h)`` ending before ``as_of``, every ``step_days`` over
    ``lookback_days``; in each, the deals created and won inside the window. Recent windows weigh
    more, with the half-life ``half_life_windows`` (``None``: :func:`choose_half_life`)."""
    details: dict[str, float] = {}
    won, cache = _won_deals(export, as_of, by), {}
    if half_life_windows is None:
        half_life_windows, details = choose_half_life(export, as_of, horizon_days, by, lookback_days, step_days, won,
                                                      cache)
    w = _windows(export, as_of, horizon_days, won, lookback_days, step_days, cache)
    rate, factor = _rates(w, half_life_windows)
    table = w.counts
    # over-dispersion beyond Poisson, from the windows' spread: var = m + d m^2
    spread = table.var(axis=1, ddof=1) if table.shape[1] > 1 else pd.Series(0.0, index=table.index)
    dispersion = ((spread - table.mean(axis=1)) / table.mean(axis=1).clip(lower=1e-9) ** 2).clip(lower=0.0)
    past = float(np.mean(w.open_leads)) if len(w.open_leads) else 0.0
    return NewDealFlow(
        rate={str(k): float(v) for k, v in rate.items()},
        dispersion={str(k): float(v) for k, v in dispersion.items()},
        amounts={str(k): g["amount"].to_numpy(dtype=float) for k, g in w.pool.groupby("group")},
        all_amounts=w.pool["amount"].to_numpy(dtype=float),
        lead_flow_factor=factor,
        windows=table.shape[1],
        details={"open_leads_now": float(w.open_now), "open_leads_past_mean": past, **details},
        amount_weight=amount_weights(w.pool),
        half_life_windows=float(half_life_windows),
    )


def _quantiles(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.quantile(draws, [0.1, 0.5, 0.9], axis=0)
    return q[0], q[1], q[2]


def _draw_amounts(rng: np.random.Generator, flow: NewDealFlow, own: np.ndarray | None, size: int, group: str
                  ) -> np.ndarray:
    """``size`` amounts of a group's new wins: from its own past wins with its weight, else from everyone's."""
    if own is None:
        return rng.choice(flow.all_amounts, size=size)
    w = flow.amount_weight.get(group, 1.0)
    if w >= 1.0 or not len(flow.all_amounts):
        return rng.choice(own, size=size)
    mine = rng.random(size) < w
    return np.where(mine, rng.choice(own, size=size), rng.choice(flow.all_amounts, size=size))


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
            own = flow.amounts.get(g)
            own = own if own is not None and len(own) else None
            if lam <= 0 or (own is None and not len(flow.all_amounts)):
                continue
            d = flow.dispersion.get(g, 0.0)
            lam_sims = lam * rng.gamma(1.0 / d, d, n_sims) if d > 1e-9 else np.full(n_sims, lam)
            n = rng.poisson(lam_sims)
            expected_new[j] = lam * flow.expected_amount(g)
            picks = _draw_amounts(rng, flow, own, int(n.sum()), g)
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


# ------------------------------------------------------------------ the forecast of a calendar period
#: Calendar periods of :func:`period_forecast`.
PERIODS = ("month", "quarter")
#: The CRM's forecast categories shown beside the model (Salesforce's names; the loader case-folds).
CRM_CATEGORIES = {"commit": "crm_commit", "best case": "crm_best_case", "pipeline": "crm_pipeline"}
_CATEGORY_SPELLINGS = {"best_case": "best case", "bestcase": "best case", "best-case": "best case"}
#: Columns of a period forecast that add up over groups (the bands do not: they are simulated again).
ADDITIVE = ("won_so_far", "won_deals", "open_deals", "open_pipeline", "expected_open_pipeline", "expected_new_deals",
            "expected_total", "weighted_pipeline", "reps_close_dates", *CRM_CATEGORIES.values())
DAY = pd.Timedelta(days=1)


def _days_text(days: int) -> str:
    return f"{days} day" if days == 1 else f"{days} days"


def period_bounds(as_of: pd.Timestamp, period: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The calendar month or quarter (UTC) holding ``as_of``, as ``[start, end)``."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}: use one of {', '.join(PERIODS)}")
    t = pd.Timestamp(as_of)
    t = t.tz_convert("UTC") if t.tzinfo is not None else t.tz_localize("UTC")
    p = t.tz_localize(None).to_period("M" if period == "month" else "Q")
    return p.start_time.tz_localize("UTC"), (p + 1).start_time.tz_localize("UTC")


def won_in_period(export: Export, start: pd.Timestamp, as_of: pd.Timestamp, by: str) -> pd.DataFrame:
    """Per group: the amount (last known before the close) and number of deals won in ``[start, as_of)``."""
    decided = decided_deals(export, as_of)
    won = decided[(decided["outcome"] == "won") & (decided["closed_at"] >= start)]
    opps = export.opportunities.set_index("opportunity_id")
    keys = group_keys(opps.loc[won["opportunity_id"]], export, by).to_numpy()
    frame = pd.DataFrame({"group": keys.astype(str), "amount": won["amount"].fillna(0.0).to_numpy(dtype=float)})
    return frame.groupby("group")["amount"].agg(won_so_far="sum", won_deals="size")


def crm_categories(opps: pd.DataFrame, amount: np.ndarray, in_period: np.ndarray) -> pd.DataFrame | None:
    """The open amount per CRM forecast category (commit, best case, pipeline) of the deals dated
    in the period by their current close date (the CRM's own view), one column per category; ``None`` when the export has no ``forecast_category``."""
    if "forecast_category" not in opps.columns or opps["forecast_category"].isna().all():
        return None
    cat = opps["forecast_category"].astype(object).replace(_CATEGORY_SPELLINGS).to_numpy()
    return pd.DataFrame({col: np.where(in_period & (cat == name), amount, 0.0) for name, col in CRM_CATEGORIES.items()})


@dataclass
class PeriodForecast:
    """The forecast of one calendar period: per group, the whole company and (by owner) per team.

    Money: ``won_so_far`` (booked in ``[start, as_of)``), ``expected_open_pipeline`` (open deals
    won by ``end``), ``expected_new_deals`` (deals created and won in ``[as_of, end)``),
    ``expected_total`` (their sum) and ``p10/p50/p90`` of the total (won so far plus the
    simulated rest); beside them the CRM weighted pipeline and the reps' close dates of the open
    deals dated before ``end``, and the open amount per CRM forecast category when the export
    has one (only at the export time: the category is the CRM's current value)."""

    period: str
    start: pd.Timestamp
    end: pd.Timestamp
    as_of: pd.Timestamp
    by: str
    groups: pd.DataFrame
    total: pd.DataFrame
    teams: pd.DataFrame | None
    has_crm_categories: bool
    new_deals: str


def _band(table: pd.DataFrame, draws: np.ndarray) -> pd.DataFrame:
    """``table`` (additive columns, one row per column of ``draws``) with P10/P50/P90 of won so far + draws."""
    q = np.quantile(draws, [0.1, 0.5, 0.9], axis=0) if draws.shape[1] else np.zeros((3, 0))
    won = table["won_so_far"].to_numpy(dtype=float)
    return table.assign(p10=won + q[0], p50=won + q[1], p90=won + q[2])


def rollup(groups: pd.DataFrame, draws: np.ndarray, key: pd.Series, name: str) -> pd.DataFrame:
    """Groups summed into ``key`` (one value per row of ``groups``): the additive columns add up,
    the band is read off the summed simulations (the deals are independent across groups)."""
    keys = key.astype(str).to_numpy()
    names = sorted(set(keys))
    idx = pd.Index(names).get_indexer(keys)
    summed = np.zeros((draws.shape[0], len(names)))
    np.add.at(summed.T, idx, draws.T)
    cols = [c for c in ADDITIVE if c in groups.columns]
    table = groups[cols].groupby(keys).sum().reindex(names).reset_index(names=name)
    return _band(table, summed)


def _team_of(groups: pd.Series, export: Export) -> pd.Series:
    """The team of each owner group (``unassigned`` stays itself; an owner without a team: ``(none)``)."""
    reps = export.reps if export.reps is not None else pd.DataFrame(columns=["owner_id", "team"])
    team = groups.map(reps.drop_duplicates("owner_id").set_index("owner_id")["team"])
    team = team.astype(object).where(team.notna(), _MISSING)
    return team.where(groups != UNASSIGNED, UNASSIGNED)


def _open_part(export: Export, scorer: DealScorer, as_of: pd.Timestamp, end: pd.Timestamp, by: str) -> pd.DataFrame:
    """The open deals at ``as_of``: group, amount, P(won before ``end``), stage win rate, and
    whether the CRM dates them before ``end`` (overdue close dates count: the CRM shows them now)."""
    days = max((end - as_of) / DAY, 1.0 / 24)
    scored, opps = score_open_deals(export, scorer, as_of, n_reasons=0, horizon_days=days)
    info = opps.set_index("opportunity_id").loc[scored["opportunity_id"]]
    close = pd.Series(scored["crm_close_date"].to_numpy())
    rate = scored["stage"].map(scorer.context.stage_win_rate).fillna(scorer.context.global_win_rate)
    return pd.DataFrame({
        "group": group_keys(info, export, by).astype(str).to_numpy(),
        "amount": np.nan_to_num(scored["amount"].to_numpy(dtype=float)),
        "p_win": scored["p_win_within_horizon"].to_numpy(dtype=float),
        "stage_rate": rate.to_numpy(dtype=float),
        "in_period": ((close < end) & close.notna()).to_numpy(dtype=bool),
    }), info


def period_forecast(
    export: Export,
    scorer: DealScorer,
    as_of: pd.Timestamp,
    period: str = "quarter",
    by: str = "owner_id",
    n_sims: int = 5000,
    seed: int = 0,
    include_new: bool = True,
) -> PeriodForecast:
    """The forecast of the calendar ``period`` holding ``as_of`` (see :class:`PeriodForecast`).

    Open deals: P(won within ``end - as_of``) of the deal model's timing distribution. Deals not
    yet created: :func:`new_deal_flow` with windows of the period's remaining length, all ending
    before ``as_of`` (a run rate of deals created and won inside such a window, scaled by the lead
    flow). Both simulated together (seeded); won so far is known, so it only shifts the band."""
    start, end = period_bounds(as_of, period)
    deals, info = _open_part(export, scorer, as_of, end, by)
    flow = new_deal_flow(export, as_of, max(int(np.ceil((end - as_of) / DAY)), 1), by) if include_new else None
    summary, draws, names = simulate_bookings(deals["amount"].to_numpy(), deals["p_win"].to_numpy(),
                                              deals["group"].to_numpy(dtype=object), flow, n_sims=n_sims, seed=seed)
    won = won_in_period(export, start, as_of, by)
    everyone = sorted(set(names) | set(won.index))
    draws = pd.DataFrame(draws, columns=names).reindex(columns=everyone, fill_value=0.0).to_numpy()
    per = deals.assign(weighted_pipeline=np.where(deals["in_period"], deals["stage_rate"] * deals["amount"], 0.0),
                       reps_close_dates=np.where(deals["in_period"], deals["amount"], 0.0))
    cats = None
    if as_of >= export.exported_at:  # the CRM's current view: its categories with its current close dates
        now = pd.Series(info["expected_close_date"].to_numpy()) if "expected_close_date" in info else pd.Series(dtype=object)
        dated = ((now < end) & now.notna()).to_numpy(dtype=bool) if len(now) else deals["in_period"].to_numpy()
        cats = crm_categories(info, deals["amount"].to_numpy(), dated)
    if cats is not None:
        per = pd.concat([per, cats.set_axis(per.index)], axis=1)
    sums = per.drop(columns=["p_win", "stage_rate", "in_period"]).groupby("group").sum().rename(columns={"amount": "open_pipeline"})
    table = summary.set_index("group").reindex(everyone).fillna(0.0)
    table = table.join(sums, how="left").join(won, how="left").fillna(0.0)
    table["open_deals"] = deals.groupby("group").size().reindex(everyone).fillna(0).astype(int).to_numpy()
    table["won_deals"] = table["won_deals"].astype(int)
    table["expected_total"] = table["won_so_far"] + table["expected_open_pipeline"] + table["expected_new_deals"]
    cols = [c for c in ADDITIVE if c in table.columns]
    groups = _band(table[cols].reset_index(names="group"), draws)
    teams = rollup(groups, draws, _team_of(groups["group"], export), "team") if by == "owner_id" else None
    total = rollup(groups, draws, pd.Series("all", index=groups.index), "group")
    how = ("none (open deals only)" if flow is None else
           f"run rate: deals created and won within {_days_text(max(int(np.ceil((end - as_of) / DAY)), 1))}, in "
           f"{flow.windows} past windows before as_of (half-life {flow.half_life_windows:g} windows, chosen on earlier "
           f"origins), scaled by the lead flow "
           f"x{flow.lead_flow_factor:.2f}; amounts drawn from those wins")
    return PeriodForecast(period=period, start=start, end=end, as_of=as_of, by=by, groups=groups, total=total,
                          teams=teams, has_crm_categories=cats is not None, new_deals=how)
