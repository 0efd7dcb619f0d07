"""The sample CRM: a simulated B2B sales world, its export at time T, and the exact truth.

:func:`generate_sample` writes two sibling folders under ``out``:

* ``export/``: the CRM export as the contract describes it (``accounts``, ``leads``,
  ``opportunities``, ``stage_history``, ``activities``, ``reps``), holding only what the
  CRM knew at the export time ``T`` = 2026-10-01 UTC (history starts 2024-04-01 UTC);
* ``truth/``: what no model can see: for several ``as_of`` times, the probability of each
  outcome given everything observable at ``as_of``, computed exactly, and what actually
  happened (the world is simulated beyond ``T`` in memory). ``truth/README.md`` explains it.

The world is built so that the truth is computable in closed form. Every hazard depends
only on (a) field values as they appear in the export after the contract's trim+casefold
(a missing value is its own level, with effect 0), (b) a hidden per-entity quality on a
discrete grid, and (c) the owner rep's skill, treated as known. Leads follow a
competing-risks process (convert / disqualify) with hazards decaying in the lead's age and
activity processes whose rates reveal the hidden quality; deals follow a continuous-time
Markov chain over the stages with absorbing won / lost. The posterior over the grid from
the observable state, then the outcome probability per grid point, gives the truth.

Everything is seeded (``np.random.default_rng(seed)`` threaded through) and uses fixed
dates, never the clock: the same seed writes byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.contract import DEFAULT_OPEN_STAGES, TABLES

__all__ = ["EXPORTED_AT", "HISTORY_START", "SampleSummary", "generate_sample"]

HISTORY_START = pd.Timestamp("2024-04-01", tz="UTC")
EXPORTED_AT = pd.Timestamp("2026-10-01", tz="UTC")
#: The export time T in days since HISTORY_START; the simulation clock is in days.
T_DAYS = float((EXPORTED_AT - HISTORY_START).days)
#: Truth is written for as_of = T minus these many days.
AS_OF_OFFSETS_DAYS = (273, 182, 91, 0)

#: The hidden qualities (lead z, deal w) live on this grid with discretised N(0, 1) weights.
GRID = np.linspace(-4.0, 4.0, 41)
GRID_PRIOR = np.exp(-0.5 * GRID**2) / np.exp(-0.5 * GRID**2).sum()

STAGES = (*DEFAULT_OPEN_STAGES, "won", "lost")  # codes 0, 1, 2 open; 3 won; 4 lost
WON, LOST = 3, 4

_EPOCH = np.datetime64(HISTORY_START.tz_localize(None).to_datetime64(), "s")


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ActivityRate:
    """An activity process with rate ``rate * exp(effect * quality) * exp(-age / tau)``.

    ``tau = None`` means a constant rate. ``effect = 0`` means the activity is noise.
    """

    type: str
    direction: str | None
    rate: float
    effect: float = 0.0
    tau: float | None = None


@dataclass(frozen=True)
class LeadModel:
    """Lead hazards: convert ``c e^{-a/tau}``, disqualify ``d e^{-a/tau}`` at lead age ``a`` (days).

    ``c = exp(alpha_convert + effects(x) + skill + gamma_convert z)``,
    ``d = exp(alpha_disqualify - gamma_disqualify z)``; a lead open at ``max_age`` is
    auto-disqualified (a CRM hygiene rule).
    """

    alpha_convert: float = -4.85
    alpha_disqualify: float = -3.85
    gamma_convert: float = 0.8
    gamma_disqualify: float = 0.4
    tau: float = 60.0
    max_age: float = 365.0
    source: Mapping[str, float] = field(
        default_factory=lambda: {
            "web": 0.0, "referral": 0.9, "event": 0.3, "outbound": -0.6,
            "partner": 0.6, "paid_search": -0.3, "webinar": 0.1,
        }
    )
    seniority: Mapping[str, float] = field(
        default_factory=lambda: {"c_level": 0.5, "vp": 0.4, "director": 0.2, "manager": 0.0, "individual": -0.5}
    )
    industry: Mapping[str, float] = field(
        default_factory=lambda: {
            "software": 0.3, "finance": 0.1, "manufacturing": -0.1, "healthcare": 0.0,
            "retail": -0.3, "education": -0.4, "media": 0.0,
        }
    )
    budget_coef: float = 0.35
    budget_ref_k: float = 50.0
    budget_clip: float = 2.0
    informative: tuple[ActivityRate, ...] = (
        ActivityRate("web_visit", "inbound", 0.10, 0.7, 30.0),
        ActivityRate("email", "inbound", 0.04, 0.9, 45.0),
        ActivityRate("event", "inbound", 0.012, 0.6, 120.0),
    )
    noise: tuple[ActivityRate, ...] = (
        ActivityRate("email", "outbound", 0.12, 0.0, 20.0),
        ActivityRate("call", "outbound", 0.05, 0.0, 40.0),
    )


@dataclass(frozen=True)
class DealModel:
    """Deal stages as a continuous-time Markov chain with absorbing won / lost.

    In open stage ``s``: advance ``advance[s] exp(lin + gamma_advance w)``, loss
    ``loss[s] exp(-loss_share lin - gamma_loss w)``, regression to ``s - 1`` at the constant
    ``regress[s]``, where ``lin = effects(type, product, source) + skill``.
    """

    advance: tuple[float, float, float] = (0.020, 0.016, 0.028)
    loss: tuple[float, float, float] = (0.009, 0.006, 0.008)
    regress: tuple[float, float, float] = (0.0, 0.002, 0.002)
    gamma_advance: float = 0.5
    gamma_loss: float = 0.6
    loss_share: float = 0.5
    type: Mapping[str, float] = field(default_factory=lambda: {"new": 0.0, "upsell": 0.4, "renewal": 1.6})
    product: Mapping[str, float] = field(default_factory=lambda: {"core": 0.0, "analytics": -0.2, "platform": -0.4})
    source: Mapping[str, float] = field(
        default_factory=lambda: {
            "web": 0.0, "referral": 0.4, "event": 0.1, "outbound": -0.3,
            "partner": 0.3, "paid_search": -0.1, "webinar": 0.0,
        }
    )
    informative: tuple[ActivityRate, ...] = (
        ActivityRate("meeting", None, 0.05, 0.6),
        ActivityRate("call", "outbound", 0.09, 0.4),
    )
    noise: tuple[ActivityRate, ...] = (
        ActivityRate("email", "outbound", 0.08),
        ActivityRate("email", "inbound", 0.05),
    )
    close_date_initial_days: tuple[int, int] = (45, 90)
    close_date_push_days: tuple[int, int] = (21, 60)
    amount_revision_prob: float = 0.3
    amount_revision_sigma: float = 0.15


@dataclass(frozen=True)
class CustomerModel:
    """Amounts, upsells and renewals. ``traits`` are the planted high-value traits."""

    product_base: Mapping[str, float] = field(
        default_factory=lambda: {"core": 12_000.0, "analytics": 20_000.0, "platform": 45_000.0}
    )
    product_mix: Mapping[str, float] = field(default_factory=lambda: {"core": 0.5, "analytics": 0.3, "platform": 0.2})
    size_exponent: float = 0.4
    size_ref_employees: float = 150.0
    amount_sigma: float = 0.35
    upsell_rate_per_day: float = 1 / 500
    upsell_amount_share: float = 0.35
    renewal_days_before_anniversary: tuple[float, float] = (30.0, 60.0)
    renewal_amount_growth: tuple[float, float] = (0.03, 0.08)
    support_ticket_rate: float = 0.015
    survey_rate: float = 1 / 120
    traits: tuple[Mapping, ...] = (
        {
            "name": "industry = software and employees >= 500",
            "conditions": [
                {"table": "accounts", "column": "industry", "op": "==", "value": "software"},
                {"table": "accounts", "column": "employees", "op": ">=", "value": 500},
            ],
            "amount_multiplier": 2.0,
            "upsell_rate_multiplier": 3.0,
        },
        {
            "name": "tech_stack = aws",
            "conditions": [{"table": "accounts", "column": "tech_stack", "op": "==", "value": "aws"}],
            "amount_multiplier": 1.6,
            "upsell_rate_multiplier": 2.5,
        },
    )


@dataclass(frozen=True)
class WorldModel:
    leads_per_weekday: float = 36.0
    weekend_share: float = 0.2
    growth: tuple[float, float] = (0.9, 1.4)
    rep_skill_sd: float = 0.35
    leads: LeadModel = field(default_factory=LeadModel)
    deals: DealModel = field(default_factory=DealModel)
    customers: CustomerModel = field(default_factory=CustomerModel)


INDUSTRIES = {"software": 0.25, "manufacturing": 0.17, "finance": 0.14, "healthcare": 0.13,
              "retail": 0.12, "education": 0.09, "media": 0.10}
COUNTRIES = {"US": 0.35, "GB": 0.12, "DE": 0.12, "FR": 0.09, "NL": 0.06, "CA": 0.07,
             "AU": 0.05, "IN": 0.06, "BR": 0.04, "JP": 0.04}
TECH_STACKS = {"aws": 0.35, "azure": 0.3, "gcp": 0.2, "on_prem": 0.15}
SOURCES = {"web": 0.28, "referral": 0.10, "event": 0.10, "outbound": 0.18,
           "partner": 0.07, "paid_search": 0.17, "webinar": 0.10}
SENIORITIES = {"c_level": 0.08, "vp": 0.12, "director": 0.2, "manager": 0.3, "individual": 0.3}
CAMPAIGNS = {"spring_promo": 0.25, "q3_push": 0.25, "brand": 0.2, "retarget": 0.15, "newsletter": 0.15}
TEAMS = ("alpha", "bravo", "charlie")
REGIONS = ("na", "emea", "apac")
MISSING = {  # share of missing cells per (table, column) in the export
    ("accounts", "industry"): 0.03, ("accounts", "country"): 0.08, ("accounts", "employees"): 0.08,
    ("accounts", "annual_revenue"): 0.05, ("accounts", "tech_stack"): 0.15,
    ("leads", "account_id"): 0.10, ("leads", "owner_id"): 0.04, ("leads", "source"): 0.03,
    ("leads", "seniority"): 0.15, ("leads", "country"): 0.10, ("leads", "budget_k"): 0.5,
    ("leads", "campaign"): 0.3, ("opportunities", "product"): 0.03, ("opportunities", "amount"): 0.02,
    ("opportunities", "expected_close_date"): 0.02, ("reps", "region"): 0.1,
}
MESSY_SHARE = 0.03


@dataclass(frozen=True)
class SampleSummary:
    """What :func:`generate_sample` wrote."""

    out: Path
    export_dir: Path
    truth_dir: Path
    exported_at: pd.Timestamp
    row_counts: Mapping[str, int]

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.row_counts.items())
        return f"sample CRM export in {self.export_dir} (exported at {self.exported_at.isoformat()}): {counts}\ntruth in {self.truth_dir}"


# --------------------------------------------------------------------------- small helpers


def _choice(rng: np.random.Generator, probs: Mapping[str, float], size: int) -> np.ndarray:
    keys = np.array(list(probs), dtype=object)
    p = np.array(list(probs.values()), dtype=float)
    return keys[rng.choice(len(keys), size=size, p=p / p.sum())]


def _effect(values: np.ndarray, effects: Mapping[str, float]) -> np.ndarray:
    """Effect of exported (clean) category values; missing or unknown levels have effect 0."""
    return np.array([effects.get(v, 0.0) if isinstance(v, str) else 0.0 for v in values], dtype=float)


def _blank(rng: np.random.Generator, values: np.ndarray, share: float) -> np.ndarray:
    """A copy of ``values`` (object array) with about ``share`` of cells made missing."""
    out = values.astype(object).copy()
    out[rng.random(len(out)) < share] = None
    return out


def _messy(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Spell ~3% of present category cells as a CRM would (padding, case) for trim+casefold to fix."""
    out = values.astype(object).copy()
    hit = np.flatnonzero((rng.random(len(out)) < MESSY_SHARE) & np.array([isinstance(v, str) for v in out], bool))
    kind = rng.integers(0, 4, size=hit.size)
    for i, k in zip(hit, kind, strict=True):
        v = out[i]
        out[i] = (f" {v}", f"{v} ", v.upper(), v.title())[k]
    return out


def _exposure(tau: float | None, length: np.ndarray) -> np.ndarray:
    """``int_0^length exp(-s / tau) ds`` (``length`` itself for a constant rate)."""
    length = np.asarray(length, dtype=float)
    return length if tau is None else tau * -np.expm1(-length / tau)


def _poisson_times(
    rng: np.random.Generator, rate: np.ndarray, tau: float | None, length: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact events of independent processes with rate ``rate[i] e^{-s/tau}`` on ``[0, length[i])``.

    Returns (entity index, offset from the window start), by inversion of the cumulative rate.
    """
    n = rng.poisson(rate * _exposure(tau, length))
    idx = np.repeat(np.arange(len(rate)), n)
    u = rng.random(idx.size)
    if tau is None:
        offset = u * length[idx]
    else:
        offset = -tau * np.log1p(-u * -np.expm1(-length[idx] / tau))
    return idx, offset


def _iso(days: np.ndarray) -> np.ndarray:
    """Simulation times (days since HISTORY_START) as ISO 8601 UTC strings, floored to the second."""
    days = np.asarray(days, dtype=float)
    out = np.full(days.shape, "", dtype=object)
    ok = np.isfinite(days)
    secs = np.floor(days[ok] * 86400.0).astype(np.int64)
    out[ok] = np.char.add(np.datetime_as_string(_EPOCH + secs, unit="s"), "Z")
    return out


def _date(days: np.ndarray) -> np.ndarray:
    days = np.asarray(days, dtype=float)
    out = np.full(days.shape, "", dtype=object)
    ok = np.isfinite(days)
    out[ok] = np.datetime_as_string(_EPOCH.astype("datetime64[D]") + days[ok].astype(np.int64), unit="D")
    return out


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    width = max(width, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def _softmax_rows(loglik: np.ndarray) -> np.ndarray:
    z = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- lead process


def _lead_rates(m: LeadModel, lin: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Initial conversion and disqualification hazards ``(c, d)`` (broadcasting ``lin`` against ``z``)."""
    return np.exp(lin + m.gamma_convert * z), np.exp(m.alpha_disqualify - m.gamma_disqualify * z)


def _simulate_lead_exits(
    rng: np.random.Generator, m: LeadModel, lin: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exit age and whether it was a conversion, sampled exactly by inverting the cumulative hazard."""
    c, d = _lead_rates(m, lin, z)
    total = c + d
    e = rng.exponential(size=len(lin))
    leaves = e < total * m.tau * -np.expm1(-m.max_age / m.tau)
    age = np.full(len(lin), m.max_age)
    age[leaves] = -m.tau * np.log1p(-e[leaves] / (total[leaves] * m.tau))
    converted = leaves & (rng.random(len(lin)) < c / total)
    return age, converted


def _lead_posterior(m: LeadModel, lin: np.ndarray, age: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Posterior over GRID of the hidden quality z of leads open at ``age`` (days).

    ``lin`` is the known part of the log conversion hazard (incl. skill); ``counts[:, k]`` are the
    numbers of ``m.informative[k]`` activities before ``age``. Each informative process adds
    ``n_k delta_k z - rho_k e^(delta_k z) G_k(age)`` to the log-likelihood, being still open adds
    ``-(c(z) + d(z)) tau (1 - e^(-age/tau))``; the activity times and the noise activities
    carry no information on z.
    """
    z = GRID[None, :]
    age = age[:, None]
    ll = np.log(GRID_PRIOR)[None, :] + np.zeros_like(age)
    for k, act in enumerate(m.informative):
        ll = ll + counts[:, k : k + 1] * act.effect * z - act.rate * np.exp(act.effect * z) * _exposure(act.tau, age)
    c, d = _lead_rates(m, lin[:, None], z)
    ll = ll - (c + d) * m.tau * -np.expm1(-age / m.tau)
    return _softmax_rows(ll)


def _lead_truth(
    m: LeadModel, lin: np.ndarray, age: np.ndarray, counts: np.ndarray, horizon: float
) -> np.ndarray:
    """P(convert within ``horizon`` | open at ``age`` with ``counts`` informative activities so far)."""
    post = _lead_posterior(m, lin, age, counts)
    z, age = GRID[None, :], age[:, None]
    c, d = _lead_rates(m, lin[:, None], z)
    end = np.minimum(age + horizon, m.max_age)
    hazard = (c + d) * m.tau * (np.exp(-age / m.tau) - np.exp(-end / m.tau))
    return (post * c / (c + d) * -np.expm1(-hazard)).sum(axis=1)


# --------------------------------------------------------------------------- deal process


def _deal_rates(m: DealModel, lin: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Advance, loss and regression rates, shape ``broadcast(lin, w) + (3,)``."""
    lin, w = np.broadcast_arrays(lin, w)
    adv = np.asarray(m.advance) * np.exp(lin + m.gamma_advance * w)[..., None]
    loss = np.asarray(m.loss) * np.exp(-m.loss_share * lin - m.gamma_loss * w)[..., None]
    reg = np.broadcast_to(np.asarray(m.regress, dtype=float), adv.shape)
    return adv, loss, reg


def _simulate_deal_paths(
    rng: np.random.Generator, m: DealModel, lin: np.ndarray, w: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run every deal's chain to absorption. Returns the stage entries (deal, stage, time), sorted by deal then time."""
    n = len(lin)
    adv, loss, reg = _deal_rates(m, lin, w)
    deal, stage, when = [np.arange(n)], [np.zeros(n, dtype=np.int64)], [start.astype(float)]
    s = np.zeros(n, dtype=np.int64)
    t = start.astype(float).copy()
    active = np.arange(n)
    while active.size:
        sa = s[active]
        a, lo, r = adv[active, sa], loss[active, sa], reg[active, sa]
        tot = a + lo + r
        t[active] += rng.exponential(size=active.size) / tot
        u = rng.random(active.size) * tot
        nxt = np.where(u < a, sa + 1, np.where(u < a + lo, LOST, sa - 1))
        s[active] = nxt
        deal.append(active)
        stage.append(nxt)
        when.append(t[active].copy())
        active = active[nxt < WON]
    deal, stage, when = np.concatenate(deal), np.concatenate(stage), np.concatenate(when)
    order = np.lexsort((when, deal))
    return deal[order], stage[order], when[order]


def _deal_generators(m: DealModel, lin: np.ndarray, w: np.ndarray) -> np.ndarray:
    """CTMC generator matrices over (qualification, proposal, contract, won, lost), shape ``(..., 5, 5)``."""
    adv, loss, reg = _deal_rates(m, lin, w)
    q = np.zeros((*adv.shape[:-1], 5, 5))
    for s in range(3):
        q[..., s, s + 1] = adv[..., s]
        q[..., s, LOST] = loss[..., s]
        if s > 0:
            q[..., s, s - 1] = reg[..., s]
        q[..., s, s] = -(adv[..., s] + loss[..., s] + reg[..., s])
    return q


def _expm(a: np.ndarray, order: int = 18) -> np.ndarray:
    """Matrix exponentials of a stack of small matrices ``(..., n, n)``, vectorised.

    Scaling and squaring with a Taylor series: each matrix is scaled by ``2^-s`` to norm
    <= 1/2 (truncation error below 1e-20), then squared back ``s`` times. Equals
    :func:`scipy.linalg.expm` to rounding, without its per-matrix Python loop.
    """
    norm = np.abs(a).sum(axis=-1).max(axis=-1)
    s = np.maximum(0, np.ceil(np.log2(np.maximum(norm, 1e-300)) + 1)).astype(np.int64)
    x = a / np.ldexp(1.0, s)[..., None, None]
    eye = np.broadcast_to(np.eye(a.shape[-1]), a.shape)
    out, term = eye.copy(), eye.copy()
    for k in range(1, order + 1):
        term = term @ x / k
        out = out + term
    for i in range(int(s.max(initial=0))):
        more = s > i
        out[more] = out[more] @ out[more]
    return out


def _deal_posterior(
    m: DealModel,
    lin: np.ndarray,
    stage_time: np.ndarray,
    advances: np.ndarray,
    counts: np.ndarray,
    age: np.ndarray,
) -> np.ndarray:
    """Posterior over GRID of an open deal's quality ``w``.

    From the observed sojourns (``stage_time[:, s]`` days spent in open stage ``s``;
    ``advances`` forward moves taken; the regression and loss densities do not depend on ``w``
    or did not happen) and the informative activity counts over the deal's ``age``.
    """
    w = GRID[None, :]
    adv, loss, _ = _deal_rates(m, lin[:, None], w)
    ll = np.log(GRID_PRIOR)[None, :] + advances[:, None] * m.gamma_advance * w
    ll = ll - ((adv + loss) * stage_time[:, None, :]).sum(axis=2)
    for k, act in enumerate(m.informative):
        ll = ll + counts[:, k : k + 1] * act.effect * w - act.rate * np.exp(act.effect * w) * age[:, None]
    return _softmax_rows(ll)


def _deal_truth(
    m: DealModel,
    lin: np.ndarray,
    stage: np.ndarray,
    stage_time: np.ndarray,
    advances: np.ndarray,
    counts: np.ndarray,
    age: np.ndarray,
    horizon: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_win, p_win_within_horizon, p_next_stage_within_horizon) of open deals in open ``stage``."""
    post = _deal_posterior(m, lin, stage_time, advances, counts, age)
    q = _deal_generators(m, lin[:, None], GRID[None, :])  # (n, G, 5, 5)
    rows = np.arange(len(lin))
    # eventually: absorption probabilities into won from the transient states
    absorb = np.linalg.solve(-q[..., :3, :3], q[..., :3, WON : WON + 1])[..., 0]  # (n, G, 3)
    p_win = (post * absorb[rows, :, stage]).sum(axis=1)
    within = _expm(q * horizon)
    p_win_h = (post * within[rows, :, stage, WON]).sum(axis=1)
    # next stage: make it absorbing; from contract the next stage is won
    p_next_grid = within[rows, :, stage, WON].copy()
    q_next = q.copy()
    q_next[..., 1, :] = 0.0  # from qualification, proposal is absorbing
    a0, l0 = q[..., 0, 1], q[..., 0, LOST]
    first = a0 / (a0 + l0) * -np.expm1(-(a0 + l0) * horizon)
    in_q = stage == 0
    p_next_grid[in_q] = first[in_q]
    in_p = np.flatnonzero(stage == 1)
    if in_p.size:
        q_p = q[in_p].copy()
        q_p[..., 2, :] = 0.0  # from proposal, contract is absorbing
        p_next_grid[in_p] = _expm(q_p * horizon)[..., 1, 2]
    p_next = (post * p_next_grid).sum(axis=1)
    return p_win, p_win_h, p_next


# --------------------------------------------------------------------------- the world


def _arrivals(rng: np.random.Generator, world: WorldModel, scale: float) -> np.ndarray:
    """Lead creation times (days): weekday seasonality, mild growth, business hours."""
    day = np.arange(int(T_DAYS))
    weekday = (day % 7) < 5  # 2024-04-01 is a Monday
    g0, g1 = world.growth
    rate = world.leads_per_weekday * scale * (g0 + (g1 - g0) * day / T_DAYS) * np.where(weekday, 1.0, world.weekend_share)
    per_day = rng.poisson(rate)
    days = np.repeat(day, per_day)
    return np.sort(days + rng.uniform(0.3, 0.8, size=days.size))


def _make_reps(rng: np.random.Generator, world: WorldModel, scale: float) -> pd.DataFrame:
    n = max(6, round(12 * max(1.0, scale) ** 0.5))
    return pd.DataFrame(
        {
            "owner_id": [f"rep_{i:03d}" for i in range(1, n + 1)],
            "team": np.array(TEAMS, dtype=object)[np.arange(n) % len(TEAMS)],
            "region": np.array(REGIONS, dtype=object)[rng.integers(0, len(REGIONS), n)],
            "capacity": rng.integers(30, 61, n),
            "skill": rng.normal(0.0, world.rep_skill_sd, n),
        }
    )


def _make_accounts(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """The pool of companies (true attributes and exported, possibly missing, values)."""
    employees = np.maximum(1, np.round(np.exp(rng.normal(np.log(200.0), 1.4, n)))).astype(np.int64)
    revenue = np.round(employees * np.exp(rng.normal(np.log(150_000.0), 0.5, n)), -3)
    acc = pd.DataFrame(
        {
            "industry_true": _choice(rng, INDUSTRIES, n),
            "country_true": _choice(rng, COUNTRIES, n),
            "employees_true": employees,
            "revenue_true": revenue,
            "tech_stack_true": _choice(rng, TECH_STACKS, n),
            "popularity": np.exp(rng.normal(0.0, 1.0, n)),
        }
    )
    acc["industry"] = _blank(rng, acc["industry_true"].to_numpy(), MISSING["accounts", "industry"])
    acc["country"] = _blank(rng, acc["country_true"].to_numpy(), MISSING["accounts", "country"])
    emp_missing = rng.random(n) < MISSING["accounts", "employees"]
    acc["employees"] = pd.array(np.where(emp_missing, 0, employees), dtype="Int64")
    acc.loc[emp_missing, "employees"] = pd.NA
    rev_missing = emp_missing | (rng.random(n) < MISSING["accounts", "annual_revenue"])
    acc["annual_revenue"] = np.where(rev_missing, np.nan, revenue)
    acc["tech_stack"] = _blank(rng, acc["tech_stack_true"].to_numpy(), MISSING["accounts", "tech_stack"])
    return acc


def _trait_masks(cm: CustomerModel, acc: pd.DataFrame) -> list[np.ndarray]:
    """Which pool accounts have each planted trait (on true values, even where the export is missing)."""
    true = {"industry": acc["industry_true"], "employees": acc["employees_true"], "tech_stack": acc["tech_stack_true"]}
    masks = []
    for trait in cm.traits:
        mask = np.ones(len(acc), dtype=bool)
        for cond in trait["conditions"]:
            col = true[cond["column"]]
            mask &= (col == cond["value"]).to_numpy() if cond["op"] == "==" else (col >= cond["value"]).to_numpy()
        masks.append(mask)
    return masks


@dataclass
class _Deals:
    """Every simulated opportunity (all waves), with full paths beyond T."""

    frame: pd.DataFrame  # one row per deal
    path: pd.DataFrame  # one row per stage entry: deal, stage, time, amount


def _deal_lin(dm: DealModel, frame: pd.DataFrame) -> np.ndarray:
    return (
        _effect(frame["type"].to_numpy(), dm.type)
        + _effect(frame["product"].to_numpy(), dm.product)
        + _effect(frame["source"].to_numpy(), dm.source)
        + frame["skill"].to_numpy()
    )


def _run_wave(rng: np.random.Generator, dm: DealModel, frame: pd.DataFrame, offset: int) -> pd.DataFrame:
    """Simulate one wave of deals to completion; stage entries with the amount at each entry."""
    lin = _deal_lin(dm, frame)
    deal, stage, when = _simulate_deal_paths(rng, dm, lin, frame["w"].to_numpy(), frame["created"].to_numpy())
    revise = (stage == 1) | (stage == 2)
    revise &= np.r_[False, deal[1:] == deal[:-1]]
    factor = np.where(revise & (rng.random(deal.size) < dm.amount_revision_prob),
                      np.exp(rng.normal(0.0, dm.amount_revision_sigma, deal.size)), 1.0)
    log_amount = np.log(frame["amount0"].to_numpy())[deal]
    cum = pd.Series(np.log(factor)).groupby(deal).cumsum().to_numpy()
    return pd.DataFrame({"deal": deal + offset, "stage": stage, "time": when, "amount": np.round(np.exp(log_amount + cum), 2)})


def _simulate_deals(
    rng: np.random.Generator,
    world: WorldModel,
    first: pd.DataFrame,
    accounts: pd.DataFrame,
    upsell_rate: np.ndarray,
    skill_of: np.ndarray,
) -> _Deals:
    """New deals, then waves of renewals (of won new / renewal deals) and upsells (of customers)."""
    dm, cm = world.deals, world.customers
    frames, paths = [], []
    batch, offset, wave = first, 0, 0
    while len(batch):
        batch = batch.reset_index(drop=True)
        path = _run_wave(rng, dm, batch, offset)
        last = path.groupby("deal").tail(1).set_index("deal")
        batch = batch.assign(closed=last["time"].to_numpy(), final=last["stage"].to_numpy(),
                             final_amount=last["amount"].to_numpy())
        frames.append(batch)
        paths.append(path)
        offset += len(batch)
        won = batch[(batch["final"] == WON) & batch["type"].isin(["new", "renewal"])]
        lo, hi = cm.renewal_days_before_anniversary
        ren_at = won["closed"].to_numpy() + 365.0 - rng.uniform(lo, hi, len(won))
        keep = ren_at < T_DAYS
        won = won[keep]
        g0, g1 = cm.renewal_amount_growth
        renewals = pd.DataFrame(
            {
                "created": ren_at[keep],
                "account": won["account"].to_numpy(),
                "owner": won["owner"].to_numpy(),
                "type": "renewal",
                "product_true": won["product_true"].to_numpy(),
                "lead": -1,
                "source": None,
                "amount0": np.round(won["final_amount"].to_numpy() * np.exp(rng.normal(g0, g1, len(won))), 2),
            }
        )
        parts = [renewals]
        if wave == 0:  # upsells: customers from their first won new deal until T
            wins = batch[batch["final"] == WON].sort_values("closed").drop_duplicates("account")
            acc = wins["account"].to_numpy()
            span = np.maximum(T_DAYS - wins["closed"].to_numpy(), 0.0)
            idx, off = _poisson_times(rng, upsell_rate[acc], None, span)
            n = idx.size
            product = _choice(rng, cm.product_mix, n)
            parts.append(
                pd.DataFrame(
                    {
                        "created": wins["closed"].to_numpy()[idx] + off,
                        "account": acc[idx],
                        "owner": wins["owner"].to_numpy()[idx],
                        "type": "upsell",
                        "product_true": product,
                        "lead": -1,
                        "source": None,
                        "amount0": np.round(
                            _base_amount(cm, product, accounts.iloc[acc[idx]])
                            * cm.upsell_amount_share * np.exp(rng.normal(0.0, cm.amount_sigma, n)), 2),
                    }
                )
            )
        batch = pd.concat(parts, ignore_index=True)
        batch = batch.sort_values("created", kind="stable").reset_index(drop=True)
        batch["product"] = _blank(rng, batch["product_true"].to_numpy(), MISSING["opportunities", "product"])
        batch["skill"] = skill_of[batch["owner"].to_numpy()]
        batch["w"] = GRID[rng.choice(GRID.size, size=len(batch), p=GRID_PRIOR)]
        wave += 1
    return _Deals(pd.concat(frames, ignore_index=True), pd.concat(paths, ignore_index=True))


def _base_amount(cm: CustomerModel, product: np.ndarray, acc: pd.DataFrame) -> np.ndarray:
    """Product list price x company size (true employees) x planted-trait multipliers."""
    size = np.clip((acc["employees_true"].to_numpy() / cm.size_ref_employees) ** cm.size_exponent, 0.3, 5.0)
    return _effect(product, cm.product_base) * size * acc["trait_amount"].to_numpy()


def _close_dates(rng: np.random.Generator, dm: DealModel, created: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected close dates (day numbers): set at creation, pushed whenever they pass while open.

    Returns ``values[k, i]`` (the value after ``k`` pushes) and ``push_at[k, i]`` (the time of
    push ``k``, ``push_at[0] = -inf``, ``inf`` when it did not happen). ``end`` is when the
    deal closed or T, whichever is first: pushes at or after it are not needed.
    """
    lo, hi = dm.close_date_initial_days
    cur = np.floor(created) + rng.integers(lo, hi + 1, created.size)
    values, push_at = [cur.copy()], [np.full(created.size, -np.inf)]
    plo, phi = dm.close_date_push_days
    while True:
        due = cur + 1.0 < end
        if not due.any():
            break
        at = np.where(due, cur + 1.0, np.inf)
        cur = np.where(due, cur + rng.integers(plo, phi + 1, created.size), cur)
        values.append(cur.copy())
        push_at.append(at)
    return np.array(values), np.array(push_at)


# --------------------------------------------------------------------------- generate


def generate_sample(
    out: Path | str,
    *,
    seed: int = 0,
    scale: float = 1.0,
    horizon_days: int = 91,
    progress: bool = False,
) -> SampleSummary:
    """Simulate a B2B sales world and write its CRM export at T and the exact truth.

    ``out/export/`` holds the contract's six tables (plus custom fields
    ``accounts.tech_stack``, ``leads.budget_k`` and ``leads.campaign``); ``out/truth/`` holds
    the true outcome probabilities given what was observable at four ``as_of`` times, the
    actual outcomes, the true parameters and the planted high-value traits. ``scale``
    multiplies the arrival rate of leads (1.0: about 36 a weekday, ~29k in 2.5 years).
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    if horizon_days <= 0:
        raise ValueError(f"horizon_days must be positive, got {horizon_days!r}")
    out = Path(out)
    world = WorldModel()
    rng = np.random.default_rng(seed)  # every step draws from it in turn: their order is the sample
    bar = tqdm(total=7, desc="generate sample", disable=not progress)
    pop = _simulate_leads(rng, world, scale)
    bar.update()
    lead_acts = _lead_activities(rng, world.leads, pop)
    bar.update()
    deals = _simulate_deals(rng, world, _first_deals(rng, world.customers, pop), pop.acc, pop.upsell_rate, pop.skill_of)
    dframe, path = deals.frame, deals.path
    bar.update()
    activities = pd.concat([*lead_acts, *_deal_activities(rng, world, dframe, path)], ignore_index=True)
    bar.update()
    ecd_at_t = _close_date_entries(rng, world.deals, dframe, path)

    export_dir, truth_dir = out / "export", out / "truth"
    export_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    tables, ids = _export_tables(rng, pop, dframe, path, ecd_at_t, activities)
    for name, frame in tables.items():
        frame.to_csv(export_dir / f"{name}.csv", index=False, float_format="%.2f", lineterminator="\n")
    bar.update()
    lead_truth, deal_truth = _truth(world, float(horizon_days), ids, pop.created, pop.exit_at, pop.converted,
                                    pop.lead_lin, activities, dframe, path)
    lead_truth.to_csv(truth_dir / "leads.csv", index=False, float_format="%.8g", lineterminator="\n")
    deal_truth.to_csv(truth_dir / "opportunities.csv", index=False, float_format="%.8g", lineterminator="\n")
    _write_truth_notes(truth_dir, world, pop, ids, {"seed": seed, "scale": scale, "horizon_days": horizon_days})
    bar.update()
    bar.close()
    counts = {name: len(frame) for name, frame in tables.items()}
    counts |= {"truth_leads": len(lead_truth), "truth_opportunities": len(deal_truth)}
    return SampleSummary(out, export_dir, truth_dir, EXPORTED_AT, counts)


@dataclass(frozen=True)
class _Population:
    """The simulated reps, the account pool and every lead (arrays indexed by lead), with the
    leads' true linear predictor, latent engagement ``z`` and fate (exit time, converted)."""

    reps: pd.DataFrame
    skill_of: np.ndarray  # per rep, and 0.0 at index -1 (no owner)
    acc: pd.DataFrame
    masks: list[np.ndarray]
    upsell_rate: np.ndarray
    created: np.ndarray
    linked: np.ndarray
    account: np.ndarray
    owner: np.ndarray
    source: np.ndarray
    seniority: np.ndarray
    country: np.ndarray
    budget: np.ndarray
    campaign: np.ndarray
    lead_lin: np.ndarray
    z: np.ndarray
    exit_age: np.ndarray
    converted: np.ndarray

    @property
    def exit_at(self) -> np.ndarray:
        return self.created + self.exit_age


def _simulate_leads(rng: np.random.Generator, world: WorldModel, scale: float) -> _Population:
    """Reps, accounts and leads with their fields, true conversion drivers and fates."""
    lm, cm = world.leads, world.customers
    reps = _make_reps(rng, world, scale)
    skill_of = np.r_[reps["skill"].to_numpy(), 0.0]  # index -1: no owner
    created = _arrivals(rng, world, scale)
    n_leads = created.size
    acc = _make_accounts(rng, max(20, int(0.6 * n_leads)))
    masks = _trait_masks(cm, acc)
    acc["trait_amount"] = np.prod([np.where(mk, t["amount_multiplier"], 1.0) for mk, t in zip(masks, cm.traits, strict=True)], axis=0)
    upsell_rate = cm.upsell_rate_per_day * np.prod(
        [np.where(mk, t["upsell_rate_multiplier"], 1.0) for mk, t in zip(masks, cm.traits, strict=True)], axis=0)
    acc["owner"] = rng.choice(len(reps), size=len(acc), p=reps["capacity"] / reps["capacity"].sum())

    account = rng.choice(len(acc), size=n_leads, p=acc["popularity"] / acc["popularity"].sum())
    linked = rng.random(n_leads) >= MISSING["leads", "account_id"]
    owner = np.where(rng.random(n_leads) < 0.8, acc["owner"].to_numpy()[account],
                     rng.choice(len(reps), size=n_leads, p=reps["capacity"] / reps["capacity"].sum()))
    owner = np.where(rng.random(n_leads) < MISSING["leads", "owner_id"], -1, owner)
    source = _blank(rng, _choice(rng, SOURCES, n_leads), MISSING["leads", "source"])
    seniority = _blank(rng, _choice(rng, SENIORITIES, n_leads), MISSING["leads", "seniority"])
    country = np.where(rng.random(n_leads) < 0.85, acc["country_true"].to_numpy()[account], _choice(rng, COUNTRIES, n_leads))
    country = _blank(rng, country, MISSING["leads", "country"])
    emp = acc["employees_true"].to_numpy()[account]
    budget = np.maximum(1, np.round(np.exp(rng.normal(np.log(lm.budget_ref_k) + 0.3 * np.log(emp / 200.0), 1.0))))
    budget = np.where(rng.random(n_leads) < MISSING["leads", "budget_k"], np.nan, budget)
    campaign = _blank(rng, _choice(rng, CAMPAIGNS, n_leads), MISSING["leads", "campaign"])
    industry_seen = np.where(linked, acc["industry"].to_numpy()[account], None)
    budget_effect = np.where(
        np.isnan(budget), 0.0,
        lm.budget_coef * np.clip(np.log(np.where(np.isnan(budget), 1.0, budget) / lm.budget_ref_k), -lm.budget_clip, lm.budget_clip),
    )
    lead_lin = (
        lm.alpha_convert + _effect(source, lm.source) + _effect(seniority, lm.seniority)
        + _effect(industry_seen, lm.industry) + budget_effect + skill_of[owner]
    )
    z = GRID[rng.choice(GRID.size, size=n_leads, p=GRID_PRIOR)]
    exit_age, converted = _simulate_lead_exits(rng, lm, lead_lin, z)
    return _Population(reps, skill_of, acc, masks, upsell_rate, created, linked, account, owner, source, seniority,
                       country, budget, campaign, lead_lin, z, exit_age, converted)


def _lead_activities(rng: np.random.Generator, lm: LeadModel, pop: _Population) -> list[pd.DataFrame]:
    """Lead activities (informative ones first: their index k is the truth's count column)."""
    acts = []
    for k, act in enumerate((*lm.informative, *lm.noise)):
        rate = act.rate * np.exp(act.effect * pop.z)
        idx, off = _poisson_times(rng, rate, act.tau, pop.exit_age)
        acts.append(pd.DataFrame({"time": pop.created[idx] + off, "type": act.type, "direction": act.direction,
                                  "lead": idx, "deal": -1, "account": np.where(pop.linked[idx], pop.account[idx], -1),
                                  "score": np.nan, "kind": k}))
    return acts


def _first_deals(rng: np.random.Generator, cm: CustomerModel, pop: _Population) -> pd.DataFrame:
    """The new-business deals of the leads that converted before T."""
    conv = np.flatnonzero(pop.converted & (pop.exit_at < T_DAYS))
    product = _choice(rng, cm.product_mix, conv.size)
    first = pd.DataFrame(
        {
            "created": pop.exit_at[conv],
            "account": pop.account[conv],
            "owner": pop.owner[conv],
            "type": "new",
            "product_true": product,
            "lead": conv,
            "source": pop.source[conv],
            "amount0": np.round(_base_amount(cm, product, pop.acc.iloc[pop.account[conv]])
                                * np.exp(rng.normal(0.0, cm.amount_sigma, conv.size)), 2),
        }
    )
    first["product"] = _blank(rng, first["product_true"].to_numpy(), MISSING["opportunities", "product"])
    first["skill"] = pop.skill_of[first["owner"].to_numpy()]
    first["w"] = GRID[rng.choice(GRID.size, size=len(first), p=GRID_PRIOR)]
    return first


def _deal_activities(rng: np.random.Generator, world: WorldModel, dframe: pd.DataFrame, path: pd.DataFrame) -> list[pd.DataFrame]:
    """Deal activities, the quotes and contracts sent on entering proposal and contract, and
    the customers' support tickets and surveys after their first win."""
    dm, cm = world.deals, world.customers
    d_created, d_closed = dframe["created"].to_numpy(), dframe["closed"].to_numpy()
    d_account = dframe["account"].to_numpy()
    acts = []
    for k, act in enumerate((*dm.informative, *dm.noise)):
        rate = act.rate * np.exp(act.effect * dframe["w"].to_numpy())
        idx, off = _poisson_times(rng, rate, None, d_closed - d_created)
        acts.append(pd.DataFrame({"time": d_created[idx] + off, "type": act.type, "direction": act.direction,
                                  "lead": -1, "deal": idx, "account": d_account[idx], "score": np.nan,
                                  "kind": 100 + k}))
    for st, typ in ((1, "quote_sent"), (2, "contract_sent")):
        rows = path[path["stage"] == st]
        acts.append(pd.DataFrame({"time": rows["time"].to_numpy(), "type": typ, "direction": "outbound",
                                  "lead": -1, "deal": rows["deal"].to_numpy(),
                                  "account": d_account[rows["deal"].to_numpy()], "score": np.nan, "kind": 200}))
    wins = dframe[dframe["final"] == WON].sort_values("closed", kind="stable").drop_duplicates("account")
    span = np.maximum(T_DAYS - wins["closed"].to_numpy(), 0.0)
    for typ, rate in (("support_ticket", cm.support_ticket_rate), ("survey", cm.survey_rate)):
        idx, off = _poisson_times(rng, np.full(len(wins), rate), None, span)
        score = np.clip(np.round(rng.normal(7.5, 1.8, idx.size)), 0, 10) if typ == "survey" else np.nan
        acts.append(pd.DataFrame({"time": wins["closed"].to_numpy()[idx] + off, "type": typ,
                                  "direction": "inbound", "lead": -1, "deal": -1,
                                  "account": wins["account"].to_numpy()[idx], "score": score, "kind": 300}))
    return acts


def _close_date_entries(rng: np.random.Generator, dm: DealModel, dframe: pd.DataFrame, path: pd.DataFrame) -> np.ndarray:
    """Set the close date (``ecd``) and blank amounts of the stage entries in ``path``; return
    each deal's close date at T (for the deals still open then)."""
    n_deals = len(dframe)
    d_created, d_closed = dframe["created"].to_numpy(), dframe["closed"].to_numpy()
    ecd_values, ecd_push_at = _close_dates(rng, dm, d_created, np.minimum(d_closed, T_DAYS))
    ecd_missing = rng.random(n_deals) < MISSING["opportunities", "expected_close_date"]
    amount_missing = rng.random(n_deals) < MISSING["opportunities", "amount"]
    path_deal = path["deal"].to_numpy()
    pushes = (ecd_push_at[:, path_deal] <= path["time"].to_numpy()[None, :]).sum(axis=0) - 1
    path_ecd = ecd_values[pushes, path_deal]
    terminal = path["stage"].to_numpy() >= WON
    path_ecd = np.where(terminal, np.floor(path["time"].to_numpy()), path_ecd)
    path["ecd"] = np.where(ecd_missing[path_deal], np.nan, path_ecd)
    open_ecd = ecd_values[(ecd_push_at < T_DAYS).sum(axis=0) - 1, np.arange(n_deals)]
    path["amount"] = np.where(amount_missing[path_deal], np.nan, path["amount"].to_numpy())
    return np.where(ecd_missing, np.nan, open_ecd)


def _write_truth_notes(truth_dir: Path, world: WorldModel, pop: _Population, ids: dict[str, np.ndarray], run: dict) -> None:
    """``params.json`` (the run's options ``run`` and the world's parameters), ``traits.json`` and the README."""
    params = {
        **run,
        "history_start": HISTORY_START.isoformat(),
        "exported_at": EXPORTED_AT.isoformat(),
        "as_of": [(EXPORTED_AT - pd.Timedelta(days=d)).isoformat() for d in AS_OF_OFFSETS_DAYS],
        "grid": GRID.tolist(),
        "grid_prior": GRID_PRIOR.tolist(),
        "world": asdict(world),
        "category_shares": {"industry": INDUSTRIES, "country": COUNTRIES, "tech_stack": TECH_STACKS,
                            "source": SOURCES, "seniority": SENIORITIES, "campaign": CAMPAIGNS},
        "missing_shares": {f"{t}.{c}": v for (t, c), v in MISSING.items()},
        "messy_share": MESSY_SHARE,
        "rep_skill": dict(zip(pop.reps["owner_id"], np.round(pop.reps["skill"], 6).tolist(), strict=True)),
    }
    (truth_dir / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    traits = {
        "description": "Planted high-value customer traits: accounts with them get bigger deal amounts "
                       "(amount_multiplier) and more upsell opportunities (upsell_rate_multiplier). "
                       "Conditions are on the accounts' true values; the export may miss some of them.",
        "traits": [dict(t, accounts_in_export=int(mk[ids["accounts"]].sum()))
                   for t, mk in zip(world.customers.traits, pop.masks, strict=True)],
    }
    (truth_dir / "traits.json").write_text(json.dumps(traits, indent=2) + "\n")
    (truth_dir / "README.md").write_text(_README.format(h=run["horizon_days"]))


def _export_tables(
    rng: np.random.Generator, pop: _Population, dframe: pd.DataFrame, path: pd.DataFrame, ecd_at_t: np.ndarray,
    activities: pd.DataFrame,
) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """The CRM's view at T: only rows and values whose timestamps are before T."""
    n_deals = len(dframe)
    opp_order = np.argsort(dframe["created"].to_numpy(), kind="stable")
    opp_id = np.empty(n_deals, dtype=object)
    opp_id[opp_order] = _ids("O", n_deals, 6)
    lead_id = _ids("L", pop.created.size, 6)  # leads are created in time order already
    owner_ids = np.r_[pop.reps["owner_id"].to_numpy(dtype=object), None]
    accounts, acc_id, keep_acc = _account_table(rng, pop, dframe)
    leads = _lead_table(rng, pop, dframe, lead_id, opp_id, acc_id, owner_ids)
    stage_history, opportunities = _deal_tables(rng, dframe, path, ecd_at_t, opp_order, opp_id, lead_id, acc_id, owner_ids)
    reps_out = pop.reps[["owner_id", "team", "region", "capacity"]].copy()
    reps_out["region"] = _blank(rng, reps_out["region"].to_numpy(), MISSING["reps", "region"])
    tables = {
        "accounts": accounts,
        "leads": leads,
        "opportunities": opportunities,
        "stage_history": stage_history,
        "activities": _activity_table(activities, lead_id, opp_id, acc_id),
        "reps": reps_out,
    }
    _add_names(tables)
    tables["opportunities"]["forecast_category"] = _forecast_categories(tables["opportunities"])
    for name, frame in tables.items():  # contract columns first, in contract order, then custom fields
        known = TABLES[name].column_names
        tables[name] = frame[known + [c for c in frame.columns if c not in known]]
    return tables, {"lead_id": lead_id, "opportunity_id": opp_id, "accounts": keep_acc}


_COMPANY = ("Northwind", "Bluebird", "Harbor", "Summit", "Crescent", "Juniper", "Granite", "Meridian", "Oakridge",
            "Silverline", "Evergreen", "Redwood", "Lakeside", "Ironbridge", "Brightwater", "Copperfield", "Falcon",
            "Highland", "Riverbend", "Starling", "Westgate", "Windmill", "Foxglove")
_COMPANY_KIND = ("Systems", "Logistics", "Health", "Foods", "Analytics", "Energy", "Labs", "Retail", "Partners",
                 "Media", "Finance", "Robotics", "Travel", "Textiles", "Software", "Dental", "Freight", "Insurance",
                 "Studios")
_FIRST = ("Ana", "Ben", "Chloe", "David", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Liam", "Maya",
          "Noah", "Olga", "Pavel", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Ximena", "Yusuf", "Zoe",
          "Arjun", "Bianca", "Carlos", "Daria", "Emeka")
_LAST = ("Almeida", "Brandt", "Chen", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova", "Jensen",
         "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Quint", "Rossi", "Schmidt", "Tanaka",
         "Urbano", "Vargas", "Weber", "Xu", "Yilmaz", "Zielinski", "Novak", "Silva", "Keller")


def _numbers(ids: pd.Series) -> np.ndarray:
    return ids.str.slice(1).astype(int).to_numpy()


def _combined(k: np.ndarray, first: tuple[str, ...], second: tuple[str, ...]) -> np.ndarray:
    """A readable name per number: the pairs of two word lists, then the same pairs with a counter."""
    n = len(first) * len(second)
    base = np.array([f"{first[i % len(first)]} {second[(i // len(first)) % len(second)]}" for i in k], dtype=object)
    return np.where(k >= n, base + " " + (k // n + 1).astype(str), base)


def _add_names(tables: dict[str, pd.DataFrame]) -> None:
    """Names as a CRM shows them, derived from the ids (no random draws: the rest of the sample
    is unchanged): companies, people, and deals named "<account> - <product> (<type>)"."""
    acc, leads, opps = tables["accounts"], tables["leads"], tables["opportunities"]
    acc["name"] = _combined(_numbers(acc["account_id"]), _COMPANY, _COMPANY_KIND)
    leads["name"] = _combined(_numbers(leads["lead_id"]), _FIRST, _LAST)
    account = opps["account_id"].map(acc.set_index("account_id")["name"]).fillna("Unknown account")
    product = opps["product"].astype(object).where(opps["product"].notna(), "deal").astype(str).str.strip()
    kind = opps["type"].astype(object).where(opps["type"].notna(), "").astype(str).str.strip().str.lower()
    opps["name"] = account + " - " + product.str.title() + np.where(kind != "", " (" + kind + ")", "")


def _forecast_categories(opps: pd.DataFrame) -> np.ndarray:
    """The CRM forecast category a rep would set (Salesforce's): a contract-stage deal dated in
    the export's quarter is commit, a proposal or contract deal best case, the rest pipeline;
    closed deals are closed (won) or omitted (lost)."""
    stage = opps["stage"].astype(object).str.strip().str.lower().to_numpy()
    close = pd.to_datetime(opps["expected_close_date"], utc=True)
    quarter_end = (EXPORTED_AT.tz_localize(None).to_period("Q") + 1).start_time.tz_localize("UTC")
    dated = (close < quarter_end).to_numpy(dtype=bool)
    out = np.where(stage == "contract", np.where(dated, "commit", "best case"),
                   np.where(stage == "proposal", "best case", "pipeline"))
    return np.where(stage == "won", "closed", np.where(stage == "lost", "omitted", out))


def _account_table(rng: np.random.Generator, pop: _Population, dframe: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Accounts created before their first linked lead, or at the conversion of an unlinked one;
    also each pool account's id (None when not in the export) and the pool rows kept."""
    acc, linked, account = pop.acc, pop.linked, pop.account
    first_seen = np.full(len(acc), np.inf)
    lead_at = pop.created[linked]  # an account appears up to 90 days before its first lead, not before the history
    np.minimum.at(first_seen, account[linked], lead_at - rng.uniform(0.0, 1.0, lead_at.size) * np.minimum(90.0, lead_at))
    np.minimum.at(first_seen, dframe["account"].to_numpy(), dframe["created"].to_numpy())
    keep_acc = np.flatnonzero(first_seen < T_DAYS)
    keep_acc = keep_acc[np.argsort(first_seen[keep_acc], kind="stable")]
    acc_id = np.full(len(acc), None, dtype=object)
    acc_id[keep_acc] = _ids("A", keep_acc.size, 5)
    a = acc.iloc[keep_acc]
    accounts = pd.DataFrame(
        {
            "account_id": acc_id[keep_acc],
            "created_at": _iso(first_seen[keep_acc]),
            "industry": _messy(rng, a["industry"].to_numpy()),
            "country": _messy(rng, a["country"].to_numpy()),
            "employees": a["employees"].array,
            "annual_revenue": a["annual_revenue"].to_numpy(),
            "tech_stack": _messy(rng, a["tech_stack"].to_numpy()),
        }
    )
    return accounts, acc_id, keep_acc


def _lead_table(
    rng: np.random.Generator, pop: _Population, dframe: pd.DataFrame, lead_id: np.ndarray, opp_id: np.ndarray,
    acc_id: np.ndarray, owner_ids: np.ndarray,
) -> pd.DataFrame:
    """Leads as the CRM holds them at T: conversions and disqualifications before T only."""
    exit_at, converted, budget = pop.exit_at, pop.converted, pop.budget
    conv_known = converted & (exit_at < T_DAYS)
    disq_known = ~converted & (exit_at < T_DAYS)
    deal_of_lead = np.full(pop.created.size, -1)
    new = dframe["lead"].to_numpy() >= 0
    deal_of_lead[dframe["lead"].to_numpy()[new]] = np.flatnonzero(new)
    leads = pd.DataFrame(
        {
            "lead_id": lead_id,
            "created_at": _iso(pop.created),
            "account_id": np.where(pop.linked, acc_id[pop.account], None),
            "owner_id": owner_ids[pop.owner],
            "source": _messy(rng, pop.source),
            "seniority": _messy(rng, pop.seniority),
            "country": _messy(rng, pop.country),
            "converted_at": _iso(np.where(conv_known, exit_at, np.nan)),
            "opportunity_id": np.where(conv_known, opp_id[deal_of_lead], None),
            "disqualified_at": _iso(np.where(disq_known, exit_at, np.nan)),
            "budget_k": pd.array(np.where(np.isnan(budget), 0, budget).astype(np.int64), dtype="Int64"),
            "campaign": _messy(rng, pop.campaign),
        }
    )
    leads.loc[np.isnan(budget), "budget_k"] = pd.NA
    return leads


def _deal_tables(
    rng: np.random.Generator, dframe: pd.DataFrame, path: pd.DataFrame, ecd_at_t: np.ndarray, opp_order: np.ndarray,
    opp_id: np.ndarray, lead_id: np.ndarray, acc_id: np.ndarray, owner_ids: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The stage history before T and the opportunities' state at T."""
    n_deals = len(dframe)
    seen = path[path["time"].to_numpy() < T_DAYS].copy()
    seen["opportunity_id"] = opp_id[seen["deal"].to_numpy()]
    stage_history = pd.DataFrame(
        {
            "opportunity_id": seen["opportunity_id"].to_numpy(),
            "stage": np.array(STAGES, dtype=object)[seen["stage"].to_numpy()],
            "entered_at": _iso(seen["time"].to_numpy()),
            "amount": seen["amount"].to_numpy(),
            "expected_close_date": _date(seen["ecd"].to_numpy()),
            "_order": opp_order.argsort()[seen["deal"].to_numpy()],
            "_time": seen["time"].to_numpy(),
        }
    ).sort_values(["_order", "_time"], kind="stable")
    stage_history = stage_history.drop(columns=["_order", "_time"]).reset_index(drop=True)
    last = seen.groupby("deal").tail(1).set_index("deal").reindex(np.arange(n_deals))
    stage_now = last["stage"].to_numpy().astype(np.int64)
    closed_known = stage_now >= WON
    # the current close date at T: the close date for closed deals, else the value after the pushes before T
    ecd_now = np.where(closed_known, last["ecd"].to_numpy(), ecd_at_t)
    new = dframe["lead"].to_numpy() >= 0
    opportunities = pd.DataFrame(
        {
            "opportunity_id": opp_id,
            "account_id": acc_id[dframe["account"].to_numpy()],
            "created_at": _iso(dframe["created"].to_numpy()),
            "lead_id": np.where(new, lead_id[np.maximum(dframe["lead"].to_numpy(), 0)], None),
            "owner_id": owner_ids[dframe["owner"].to_numpy()],
            "type": _messy(rng, dframe["type"].to_numpy()),
            "product": _messy(rng, dframe["product"].to_numpy()),
            "amount": last["amount"].to_numpy(),
            "expected_close_date": _date(ecd_now),
            "stage": np.array(STAGES, dtype=object)[stage_now],
            "outcome": np.where(stage_now == WON, "won", np.where(stage_now == LOST, "lost", "open")),
            "closed_at": _iso(np.where(closed_known, dframe["closed"].to_numpy(), np.nan)),
        }
    ).iloc[opp_order].reset_index(drop=True)
    return stage_history, opportunities


def _activity_table(activities: pd.DataFrame, lead_id: np.ndarray, opp_id: np.ndarray, acc_id: np.ndarray) -> pd.DataFrame:
    """Activities before T, in time order."""
    act = activities[activities["time"].to_numpy() < T_DAYS].sort_values("time", kind="stable")
    lead_idx, deal_idx, acc_idx = act["lead"].to_numpy(), act["deal"].to_numpy(), act["account"].to_numpy()
    return pd.DataFrame(
        {
            "activity_id": _ids("ACT", len(act), 7),
            "occurred_at": _iso(act["time"].to_numpy()),
            "type": act["type"].to_numpy(),
            "lead_id": np.where(lead_idx >= 0, lead_id[np.maximum(lead_idx, 0)], None),
            "opportunity_id": np.where(deal_idx >= 0, opp_id[np.maximum(deal_idx, 0)], None),
            "account_id": np.where(acc_idx >= 0, acc_id[np.maximum(acc_idx, 0)], None),
            "direction": act["direction"].to_numpy(),
            "score": act["score"].to_numpy(),
        }
    )


def _truth(
    world: WorldModel,
    horizon: float,
    ids: dict[str, np.ndarray],
    created: np.ndarray,
    exit_at: np.ndarray,
    converted: np.ndarray,
    lead_lin: np.ndarray,
    activities: pd.DataFrame,
    dframe: pd.DataFrame,
    path: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exact outcome probabilities given what was observable at each as_of, and the actual outcomes."""
    lm, dm = world.leads, world.deals
    k_lead = len(lm.informative)
    lead_acts = activities[activities["kind"].to_numpy() < k_lead]
    deal_acts = activities[(activities["kind"].to_numpy() >= 100) & (activities["kind"].to_numpy() < 100 + len(dm.informative))]
    d_created, d_closed = dframe["created"].to_numpy(), dframe["closed"].to_numpy()
    d_lin = _deal_lin(dm, dframe)
    d_final = dframe["final"].to_numpy()
    p_deal, p_stage, p_time = path["deal"].to_numpy(), path["stage"].to_numpy(), path["time"].to_numpy()
    p_next_time = np.r_[p_time[1:], np.inf]
    p_next_time[np.r_[p_deal[1:] != p_deal[:-1], True]] = np.inf
    p_next_stage = np.r_[p_stage[1:], -1]
    lead_rows, deal_rows = [], []
    for offset in AS_OF_OFFSETS_DAYS:
        t = T_DAYS - offset
        as_of = _iso(np.array([t]))[0]
        # leads open at as_of
        open_ = np.flatnonzero((created < t) & (exit_at >= t))
        before = lead_acts[lead_acts["time"].to_numpy() < t]
        counts = np.zeros((created.size, k_lead))
        np.add.at(counts, (before["lead"].to_numpy(), before["kind"].to_numpy()), 1.0)
        p = _lead_truth(lm, lead_lin[open_], t - created[open_], counts[open_], horizon)
        hit = converted[open_] & (exit_at[open_] < t + horizon)
        lead_rows.append(pd.DataFrame({"as_of": as_of, "lead_id": ids["lead_id"][open_],
                                       "p_convert_within_horizon": p, "converted_within_horizon": hit.astype(int),
                                       "horizon_days": int(horizon)}))
        # deals open at as_of
        op = np.flatnonzero((d_created < t) & (d_closed >= t))
        seen = p_time < t
        stage_time = np.zeros((len(dframe), 3))
        dur = np.minimum(p_next_time, t) - p_time
        sojourn = seen & (p_stage < WON)
        np.add.at(stage_time, (p_deal[sojourn], p_stage[sojourn]), dur[sojourn])
        adv = seen & (p_next_time < t) & (p_next_stage == p_stage + 1)
        advances = np.bincount(p_deal[adv], minlength=len(dframe)).astype(float)
        last_row = np.full(len(dframe), -1)
        np.maximum.at(last_row, p_deal[seen], np.flatnonzero(seen))
        current = np.where(last_row >= 0, p_stage[last_row], -1)
        dbefore = deal_acts[deal_acts["time"].to_numpy() < t]
        dcounts = np.zeros((len(dframe), len(dm.informative)))
        np.add.at(dcounts, (dbefore["deal"].to_numpy(), dbefore["kind"].to_numpy() - 100), 1.0)
        stage = current[op]
        pw, pwh, pnh = _deal_truth(dm, d_lin[op], stage, stage_time[op], advances[op], dcounts[op], t - d_created[op], horizon)
        # actual: the next stage entered in [t, t + horizon)
        ahead = (p_time >= t) & (p_time < t + horizon)
        nxt = np.zeros(len(dframe), dtype=bool)
        target = current + 1
        reach = ahead & (p_stage == target[p_deal])
        nxt[p_deal[reach]] = True
        won = d_final[op] == WON
        deal_rows.append(pd.DataFrame({
            "as_of": as_of, "opportunity_id": ids["opportunity_id"][op],
            "stage": np.array(STAGES, dtype=object)[stage], "p_win": pw, "p_win_within_horizon": pwh,
            "p_next_stage_within_horizon": pnh, "won": won.astype(int),
            "won_within_horizon": (won & (d_closed[op] < t + horizon)).astype(int),
            "next_stage_within_horizon": nxt[op].astype(int), "horizon_days": int(horizon),
        }))
    leads = pd.concat(lead_rows, ignore_index=True)
    deals = pd.concat(deal_rows, ignore_index=True)
    deals = deals.sort_values(["as_of", "opportunity_id"], kind="stable").reset_index(drop=True)
    return leads, deals


_README = """# Truth files of the sample CRM

The CRM export in `../export/` holds only what the CRM knew at the export time
T = 2026-10-01T00:00:00Z. The world was simulated further (every lead and every
opportunity open at T run to completion) so that what happened next is known. These
files are the answer key; nothing in `../export/` points to them.

For each `as_of` in T - 273, T - 182, T - 91 and T days, and a horizon of {h} days:

## leads.csv
One row per lead open at `as_of` (created before it, neither converted nor
disqualified before it):

- `p_convert_within_horizon`: the exact probability that the lead converts in
  `[as_of, as_of + horizon)` given everything observable at `as_of`;
- `converted_within_horizon`: 1 if it did.

## opportunities.csv
One row per opportunity open at `as_of`, with its `stage` at `as_of`:

- `p_win`, `won`: probability it is eventually won, and whether it was;
- `p_win_within_horizon`, `won_within_horizon`: won in `[as_of, as_of + horizon)`;
- `p_next_stage_within_horizon`, `next_stage_within_horizon`: enters the next stage
  (proposal after qualification, contract after proposal, won after contract) in
  `[as_of, as_of + horizon)`, possibly after going back a stage first.

## How the probabilities are computed
Every hazard in the simulation depends only on (a) field values as they appear in the
export (after trimming and case-folding; a missing value is its own level with effect 0),
(b) a hidden quality per lead (z) or per opportunity (w), drawn from a discrete grid of 41
points over [-4, 4] with discretised N(0, 1) weights, and (c) the owner rep's skill.
**Rep skill is treated as known** in the truth (each rep has hundreds of leads, so a model
can learn it); a missing owner has skill 0.

- Leads: conversion hazard `c e^(-a/tau)` and disqualification hazard `d e^(-a/tau)` at age
  `a`, with `c = exp(alpha_c + effects + skill + gamma_c z)` and `d = exp(alpha_d - gamma_d z)`;
  a lead still open at age 365 days is auto-disqualified. Inbound web visits, inbound emails
  and events arrive at rates `rho_k e^(delta_k z) e^(-a/tau_k)`; outbound emails and calls
  are noise. The posterior over z uses the counts of the informative activities before
  `as_of`, the lead's age and the fact it is still open; the probability is then exact per
  grid point.
- Opportunities: a continuous-time Markov chain over qualification, proposal, contract with
  absorbing won / lost; advance and loss rates depend on type, product, the originating
  lead's source, skill and w; regressions to the previous stage do not depend on w. The
  posterior over w uses the stage sojourns before `as_of` and the counts of meetings and
  calls; the probabilities per grid point come from the generator matrix (a linear solve for
  "eventually", the matrix exponential for "within the horizon").

Account size (employees) and deal amounts never enter a hazard. `traits.json` lists the
planted high-value customer traits (bigger amounts, more upsells); `params.json` holds every
true parameter, the seed, the scale, T and the horizon.
"""
