"""Forecast accuracy review: rolling origins over the history, side by side with the CRM.

At each origin (the time fold's backtest origins: every ``every`` over the last ``span``, the
latest a horizon before the export): fit the deal models on what was known then (labels censored at the origin;
the snapshot features are point-in-time by construction, so one snapshot frame serves
every origin), forecast the bookings of the next horizon per owner, and compare with what
happened. Three forecasts side by side: funnelcast (expected bookings: open pipeline + new
deals; P10-P90), the CRM weighted pipeline (stage win rate x amount, close date in the
horizon) and the reps' own close dates (the amount of deals whose close date is in the
horizon). Reported per origin and overall: WAPE across owners, bias, share of owners
within +-10%, P10-P90 coverage (funnelcast), deal-level AUC and Brier of P(won within the
horizon) and of the stage win rate, and a waterfall of the starting pipeline.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from features.contract import Export
from features.deals import deal_outcomes
from models.forecast import UNASSIGNED, forecast_table, group_keys, new_deal_flow
from models.metrics import classification_metrics
from features.errors import FunnelcastError, NothingToLearnFrom
from models.folds import NotEnoughHistory
from models.windows import NoDecisions
from training.deals import DealTrainConfig, TooFewOutcomes, fit_deal_scorer
from training.pipeline import experiment_id

DAY = pd.Timedelta(days=1)
METHODS = ("funnelcast", "weighted_pipeline", "reps_close_dates")


@dataclass
class BacktestConfig:
    every: str = "28d"
    span: str = "364d"
    n_sims: int = 2000
    by: str = "owner_id"
    deal: DealTrainConfig = field(default_factory=DealTrainConfig)


@dataclass
class BacktestResult:
    per_origin: pd.DataFrame  # one row per origin and method
    overall: pd.DataFrame  # one row per method
    groups: pd.DataFrame  # per origin and group: forecasts and actual
    waterfall: pd.DataFrame  # per origin: what happened to the starting pipeline
    deals: pd.DataFrame  # per origin and deal: p_win_within_horizon, stage rate, outcome
    seconds: float = 0.0
    #: Origins with too little history before them to train on, and why (the backtest runs the others).
    skipped: list[tuple[pd.Timestamp, str]] = field(default_factory=list)
    #: What the user of ``funnelcast backtest`` can do about the origins left out (its own options).
    remedy: str = ""


def origins(export: Export, cfg: BacktestConfig) -> list[pd.Timestamp]:
    """The deal models' time fold's origins over ``cfg.span``, every ``cfg.every``, oldest first."""
    return cfg.deal.fold.origins(export.exported_at, cfg.span, cfg.every)


def accuracy(forecast: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """WAPE, bias (both relative to total actual) and share of groups within +-10% of their actual."""
    total = actual.sum()
    err = forecast - actual
    return {
        "wape": float(np.abs(err).sum() / total) if total > 0 else float("nan"),
        "bias": float(err.sum() / total) if total > 0 else float("nan"),
        "within_10pct": float(np.mean(np.abs(err) <= 0.1 * np.abs(actual))) if len(actual) else float("nan"),
    }


def _waterfall(pipe: pd.DataFrame, origin: pd.Timestamp, end: pd.Timestamp, new_won: float) -> dict[str, float]:
    in_h = pipe["crm_close_date"] < end
    won = (pipe["won"] == 1) & (pipe["closed_at"] < end)
    lost = (pipe["won"] == 0) & (pipe["closed_at"] < end)
    still = ~(won | lost)
    return {
        "origin": origin,
        "starting_pipeline": float(pipe["amount"].sum()),
        "in_horizon_by_close_date": float(pipe.loc[in_h, "amount"].sum()),
        "won": float(pipe.loc[won, "amount"].sum()),
        "lost": float(pipe.loc[lost, "amount"].sum()),
        "pushed_out": float(pipe.loc[still & in_h, "amount"].sum()),
        "pulled_in": float(pipe.loc[won & ~in_h, "amount"].sum()),
        "still_open_beyond": float(pipe.loc[still & ~in_h, "amount"].sum()),
        "amount_changes_of_won": float((pipe.loc[won, "won_amount"] - pipe.loc[won, "amount"]).sum()),
        "new_deals_won": float(new_won),
    }


class NoOriginToBacktest(FunnelcastError, ValueError):
    """No origin of a backtest has history enough before it to train the deal models on."""


#: What fitting at an origin raises when the history before it is too short (a bad setting or export fails the
#: backtest at once instead of being reported as "too little history").
TOO_LITTLE_HISTORY = (TooFewOutcomes, NothingToLearnFrom, NoDecisions, NotEnoughHistory)


#: The advice that ends the errors of :data:`TOO_LITTLE_HISTORY`, written for `funnelcast train` ("train with
#: --as-of later", "a later --as-of", "pass --horizon"): the backtest has no --as-of, and says its own remedy.
_TRAIN_ADVICE = re.compile(r"[;.] (?:train (?:with|on)|pass --)\b.*$", re.IGNORECASE | re.DOTALL)


def _why_too_early(exc: Exception) -> str:
    """What was missing at an origin, without training's advice (the backtest adds its own)."""
    return _TRAIN_ADVICE.sub("", str(exc)).rstrip(" ;.")


def _fit_or_skip(export: Export, snaps: pd.DataFrame, spec, origin: pd.Timestamp, dc: DealTrainConfig,
                 skipped: list[tuple[pd.Timestamp, str]]):
    """The deal models fitted at ``origin``, or None (and ``origin`` and why in ``skipped``) when the history
    before it is too short to train on: a young export's first origins are left out, not the whole backtest."""
    try:
        return fit_deal_scorer(export, snaps, spec, origin, dc, surrogate=False)
    except TOO_LITTLE_HISTORY as exc:
        skipped.append((origin, _why_too_early(exc)))
        return None


def _origins_remedy(times: list[pd.Timestamp], skipped: list[tuple[pd.Timestamp, str]]) -> str:
    """What to give `funnelcast backtest` to leave out the origins too early for their history: a --span
    starting at the first origin that had it (the early ones are the ones left out), else a longer export."""
    left_out = {o for o, _ in skipped}
    kept = [o for o in times if o not in left_out]
    if kept and max(left_out) < kept[0]:
        return (f"To backtest only the origins with history enough, give --span {(times[-1] - kept[0]).days}d "
                f"(the origins from {kept[0].date()} on); a longer export gives the early ones their history.")
    return "A shorter --span starts the origins later; a longer export gives the early ones their history."


def _periods_remedy(periods: list[tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]],
                    skipped: list[tuple[pd.Timestamp, str]], cfg: PeriodBacktestConfig) -> str:
    """What to give `funnelcast backtest --period` to leave out the periods too early for their history."""
    left_out = {o for o, _ in skipped}
    kept = [o for _, o, _ in periods if o not in left_out]
    if kept and max(left_out) < kept[0]:
        return (f"To backtest only the {cfg.period}s with history enough, give --periods {len(kept)}; a longer "
                "export gives the early ones their history.")
    return f"Fewer --periods leave the early {cfg.period}s out; a longer export gives them their history."


def _none_left(skipped: list[tuple[pd.Timestamp, str]], what: str, remedy: str) -> NoOriginToBacktest:
    first, last = skipped[0][0], skipped[-1][0]
    return NoOriginToBacktest(
        f"backtest: none of the {len(skipped)} {what} ({first.date()} to {last.date()}) has history enough before "
        f"it to train the deal models on; at the latest: {skipped[-1][1]}. {remedy}")


def skipped_text(skipped: list[tuple[pd.Timestamp, str]], done: int, what: str = "origin", remedy: str = "") -> str:
    """The note a backtest prints when it left out origins: how many, which, the latest one's reason, and
    ``remedy``: what to give the backtest instead (:attr:`BacktestResult.remedy`)."""
    dates = ", ".join(str(o.date()) for o, _ in skipped)
    return (f"note: {len(skipped)} {what}(s) left out for too little history before them ({dates}); the backtest "
            f"covers the other {done}. The latest left out: {skipped[-1][1]}." + (f" {remedy}" if remedy else ""))


def run_backtest(export: Export, cfg: BacktestConfig, progress: bool = True) -> BacktestResult:
    """Every origin: fit on the past, forecast the next horizon per group, compare with what happened."""
    start_time = time.perf_counter()
    times = origins(export, cfg)
    spec, snaps = _snapshots(export, times, cfg.deal, progress)
    outcomes = deal_outcomes(export)
    rows, group_rows, waterfall, deal_rows, skipped = [], [], [], [], []
    for origin in tqdm(times, desc="backtest origins", disable=not progress, unit="origin"):
        scorer = _fit_or_skip(export, snaps, spec, origin, cfg.deal, skipped)
        if scorer is None:
            continue
        r, g, w, d = _backtest_origin(export, cfg, scorer, snaps[snaps["as_of"] == origin], outcomes, origin)
        rows += r
        group_rows.append(g)
        waterfall.append(w)
        deal_rows.append(d)
    if not rows:
        raise _none_left(skipped, "origins", "A shorter --horizon moves the latest origin later (it is a horizon "
                         "before the export); else backtest a longer export.")
    per_origin = pd.DataFrame(rows)
    groups_all = pd.concat(group_rows, ignore_index=True)
    return BacktestResult(per_origin=per_origin, overall=_overall(per_origin, groups_all), groups=groups_all,
                          waterfall=pd.DataFrame(waterfall), deals=pd.concat(deal_rows, ignore_index=True),
                          seconds=time.perf_counter() - start_time, skipped=skipped,
                          remedy=_origins_remedy(times, skipped) if skipped else "")


def _actual(export: Export, outcomes: pd.DataFrame, ids: np.ndarray, groups: pd.Series, origin: pd.Timestamp,
            end: pd.Timestamp, by: str) -> tuple[np.ndarray, pd.Series, pd.Series]:
    """What happened in ``[origin, end)``: which open deals were won, and the won amount per group
    from the open pipeline and from the deals created after ``origin``."""
    opps = export.opportunities.set_index("opportunity_id")
    out = outcomes.reindex(ids)
    won_h = ((out["won"] == 1) & (out["closed_at"] >= origin) & (out["closed_at"] < end)).to_numpy()
    actual_open = pd.Series(np.where(won_h, out["won_amount"].fillna(0.0), 0.0)).groupby(groups.to_numpy()).sum()
    created = opps[(opps["created_at"] >= origin) & (opps["created_at"] < end)]
    cout = outcomes.reindex(created.index)
    cwon = (cout["won"] == 1) & (cout["closed_at"] < end)
    new_groups = group_keys(created[cwon.to_numpy()], export, by)
    actual_new = cout.loc[cwon, "won_amount"].fillna(0.0).groupby(new_groups.to_numpy()).sum()
    return won_h, actual_open, actual_new


def _backtest_origin(export: Export, cfg: BacktestConfig, scorer, now: pd.DataFrame, outcomes: pd.DataFrame,
                     origin: pd.Timestamp) -> tuple[list[dict], pd.DataFrame, dict[str, float], pd.DataFrame]:
    """One origin: the three forecasts per group against what happened, the deal-level metrics,
    the waterfall of the starting pipeline and the scored deals (``now``: the snapshots at ``origin``)."""
    dc = cfg.deal
    end = origin + pd.Timedelta(days=dc.horizon_days)
    pred = scorer.predict(now[scorer.spec.feature_names].set_axis(now["opportunity_id"].to_numpy()))
    p_h = pred["p_win_within_horizon"].to_numpy()
    ids = now["opportunity_id"].to_numpy()
    scored = pd.DataFrame({"opportunity_id": ids, "amount": now["amount_filled"].to_numpy(), "p_win_within_horizon": p_h})
    groups = group_keys(export.opportunities.set_index("opportunity_id").loc[ids], export, cfg.by)
    rate = now["stage"].map(scorer.context.stage_win_rate).fillna(scorer.context.global_win_rate).to_numpy(float)
    close = pd.Series(now["expected_close_date"].to_numpy())
    flow = new_deal_flow(export, origin, dc.horizon_days, cfg.by)
    table = forecast_table(scored, groups, rate, close, origin, dc.horizon_days, flow, n_sims=cfg.n_sims,
                           seed=dc.seed).set_index("group")
    won_h, actual_open, actual_new = _actual(export, outcomes, ids, groups, origin, end, cfg.by)
    names = sorted(set(table.index) | set(actual_open.index) | set(actual_new.index))
    t = table.reindex(names).fillna(0.0)
    g = pd.DataFrame({"origin": origin, "group": names,
                      "actual": (actual_open.reindex(names).fillna(0.0) + actual_new.reindex(names).fillna(0.0)).to_numpy(),
                      "actual_open_pipeline": actual_open.reindex(names).fillna(0.0).to_numpy(),
                      "funnelcast": t["expected_bookings"].to_numpy(), "p10": t["p10"].to_numpy(),
                      "p50": t["p50"].to_numpy(), "p90": t["p90"].to_numpy(),
                      "funnelcast_open_pipeline": t["expected_open_pipeline"].to_numpy(),
                      "weighted_pipeline": t["weighted_pipeline"].to_numpy(),
                      "reps_close_dates": t["reps_close_dates"].to_numpy()})
    deal = {"funnelcast": classification_metrics(won_h.astype(int), p_h),
            "weighted_pipeline": classification_metrics(won_h.astype(int), np.where(close < end, rate, 0.0))}
    reps = g[g["group"] != UNASSIGNED] if cfg.by in ("owner_id", "team") else g  # deals without an owner: no rep
    y = reps["actual"].to_numpy()
    rows = []
    for m in METHODS:
        row = {"origin": origin, "method": m, **accuracy(reps[m].to_numpy(), y)}
        if m == "funnelcast":
            row["coverage_p10_p90"] = float(np.mean((reps["p10"] <= y) & (y <= reps["p90"])))
        if m in deal:
            row["deal_auc"], row["deal_brier"] = deal[m]["roc_auc"], deal[m]["brier"]
        rows.append(row)
    out = outcomes.reindex(ids)
    pipe = pd.DataFrame({"amount": now["amount_filled"].to_numpy(), "crm_close_date": pd.to_datetime(close.to_numpy(), utc=True),
                         "won": out["won"].to_numpy(), "closed_at": pd.to_datetime(out["closed_at"].to_numpy(), utc=True),
                         "won_amount": out["won_amount"].to_numpy()})
    deals = pd.DataFrame({"origin": origin, "opportunity_id": ids, "stage": now["stage"].to_numpy(),
                          "p_win_within_horizon": p_h, "stage_win_rate": rate, "won_within_horizon": won_h.astype(int)})
    return rows, g, _waterfall(pipe, origin, end, float(actual_new.sum())), deals


def _overall(per_origin: pd.DataFrame, groups_all: pd.DataFrame) -> pd.DataFrame:
    """One row per method: the mean over origins, and the WAPE pooled over every origin and group."""
    overall = []
    for m in METHODS:
        o = per_origin[per_origin["method"] == m]
        row = {"method": m, "wape": o["wape"].mean(), "bias": o["bias"].mean(), "within_10pct": o["within_10pct"].mean()}
        row["wape_pooled"] = accuracy(groups_all[m].to_numpy(), groups_all["actual"].to_numpy())["wape"]
        if m == "funnelcast":
            y = groups_all["actual"]
            row["coverage_p10_p90"] = float(((groups_all["p10"] <= y) & (y <= groups_all["p90"])).mean())
        if "deal_auc" in o and o["deal_auc"].notna().any():
            row["deal_auc"], row["deal_brier"] = o["deal_auc"].mean(), o["deal_brier"].mean()
        overall.append(row)
    return pd.DataFrame(overall)


def _snapshots(export: Export, origins: list[pd.Timestamp], dc: DealTrainConfig, progress: bool):
    """One snapshot frame whose times include every origin (spec point-in-time at the first origin)."""
    from features.deals import DealFeatureSpec, snapshot_times
    from features.engine import deal_snapshots  # the pandas one, or per deal partition in a Dask session

    spec = DealFeatureSpec.from_export(export, horizon_days=dc.horizon_days, exclude=dc.exclude, as_of=origins[0])
    start = export.opportunities["created_at"].min() + pd.Timedelta(days=dc.warmup_days)
    # snapshot times step back from the last origin, so every origin (a multiple of the step away) is one
    times = snapshot_times(start, origins[-1], dc.snapshot_every_days)
    missing = [o for o in origins if o not in set(times)]
    times = sorted(set(times) | set(missing))
    return spec, deal_snapshots(export, times, spec, progress=progress)


def write_report(result: BacktestResult, out: Path, title: str = "Forecast accuracy review") -> list[Path]:
    """Markdown report with plots, and the tables as CSV, in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.score import rounded

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("per_origin", result.per_origin), ("overall", result.overall), ("groups", result.groups),
                        ("waterfall", result.waterfall), ("deals", result.deals)):
        p = out / f"{name}.csv"
        rounded(frame).to_csv(p, index=False)  # probabilities and ratios to 4 decimals, money to 2
        paths.append(p)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for m in METHODS:
        o = result.per_origin[result.per_origin["method"] == m]
        axes[0].plot(o["origin"].dt.date.astype(str), o["wape"], marker="o", label=m)
    axes[0].set_title("WAPE across owners per origin")
    axes[0].tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[0].legend(fontsize=8)
    tot = result.groups.groupby("origin")[["actual", "funnelcast", "p10", "p90", "weighted_pipeline",
                                           "reps_close_dates"]].sum()
    x = tot.index.date.astype(str)
    axes[1].fill_between(x, tot["p10"], tot["p90"], alpha=0.2, label="funnelcast P10-P90 (sum of owners' bands)")
    for c in ("actual", "funnelcast", "weighted_pipeline", "reps_close_dates"):
        axes[1].plot(x, tot[c], marker="o", label=c)
    axes[1].set_title("Total bookings in the horizon")
    axes[1].tick_params(axis="x", labelrotation=45, labelsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    w = result.waterfall.drop(columns=["origin"]).mean()
    fig, ax = plt.subplots(figsize=(9, 4))
    steps = ["starting_pipeline", "lost", "still_open_beyond", "pushed_out", "amount_changes_of_won", "new_deals_won"]
    vals = [w["starting_pipeline"], -w["lost"], -w["still_open_beyond"], -w["pushed_out"],
            w["amount_changes_of_won"], w["new_deals_won"]]
    cum = np.cumsum([0, *vals[:-1]])
    ax.bar(steps + ["booked"], vals + [sum(vals)], bottom=list(cum) + [0],
           color=["#689"] + ["#c44" if v < 0 else "#2a6" for v in vals[1:]] + ["#333"])
    ax.set_title("What happened to the starting pipeline (mean over origins)")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(out / "waterfall.png", dpi=110)
    plt.close(fig)
    fmt = lambda f: f.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else f.to_string(index=False)  # noqa: E731
    origins = result.per_origin["origin"]
    md = [
        f"# {title}",
        "",
        f"{origins.nunique()} origins from {origins.min().date()} to {origins.max().date()}, "
        f"forecasting the next horizon's bookings per group; {result.seconds:.0f} s.",
        "",
        *([skipped_text(result.skipped, origins.nunique(), remedy=result.remedy).replace("note: ", "Note: ", 1), ""]
          if result.skipped else []),
        "## Overall (mean over origins; `wape_pooled` over every origin and group)",
        "",
        fmt(result.overall.round(4)),
        "",
        "![accuracy](accuracy.png)",
        "",
        "## Per origin",
        "",
        fmt(result.per_origin.assign(origin=origins.dt.date).round(4)),
        "",
        "## What happened to the starting pipeline",
        "",
        fmt(result.waterfall.assign(origin=result.waterfall["origin"].dt.date).round(0)),
        "",
        "![waterfall](waterfall.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    paths += [out / "report.md", out / "accuracy.png", out / "waterfall.png"]
    return paths


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def log_backtest(result: BacktestResult, client, experiment: str, artifact_location: str | None, out: Path,
                 cfg: BacktestConfig, data_source: str) -> str:
    """Log the overall and per-origin figures and the report to MLflow; returns the run id."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id(client, experiment, artifact_location),
                          run_name="forecast-backtest") as run:
        mlflow.set_tags({"task": "forecast_backtest", "data_source": data_source})
        mlflow.log_params({"every": cfg.every, "span": cfg.span, "by": cfg.by,
                           "n_sims": cfg.n_sims, "origins": int(result.per_origin["origin"].nunique()),
                           "deal_config": json.dumps(asdict(cfg.deal), default=str)[:500]})
        for r in result.overall.to_dict("records"):
            mlflow.log_metrics({f"{r['method']}_{k}": float(v) for k, v in r.items()
                                if k != "method" and v is not None and np.isfinite(v)})
        for step, (origin, o) in enumerate(result.per_origin.groupby("origin")):
            for r in o.to_dict("records"):
                mlflow.log_metrics({f"origin_{r['method']}_{k}": float(v) for k, v in r.items()
                                    if k not in ("method", "origin") and v is not None and np.isfinite(v)}, step=step)
        mlflow.log_metric("seconds", result.seconds)
        mlflow.log_artifacts(str(out), artifact_path="backtest")
        return run.info.run_id


# ------------------------------------------------------------------ the forecast of calendar periods, backtested
@dataclass
class PeriodBacktestConfig:
    """Backtest of :func:`models.forecast.period_forecast` over the last ``periods`` complete
    calendar periods: at each, the forecast made ``at_day`` days into the period (0: at its start)
    by deal models fitted on what was known then, against the bookings of the whole period."""

    period: str = "quarter"
    periods: int = 4
    at_day: int = 0
    n_sims: int = 2000
    by: str = "owner_id"
    deal: DealTrainConfig = field(default_factory=DealTrainConfig)


@dataclass
class PeriodBacktestResult:
    per_origin: pd.DataFrame  # one row per period and method: WAPE over reps, bias, total error
    overall: pd.DataFrame  # one row per method
    groups: pd.DataFrame  # per period and group: the forecasts and the actual bookings
    seconds: float = 0.0
    skipped: list[tuple[pd.Timestamp, str]] = field(default_factory=list)  # as BacktestResult.skipped
    remedy: str = ""  # as BacktestResult.remedy


def period_origins(export: Export, cfg: PeriodBacktestConfig) -> list[tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]]:
    """``(start, origin, end)`` of the last ``cfg.periods`` calendar periods complete before the export, oldest first."""
    from models.forecast import period_bounds

    start, end = period_bounds(export.exported_at, cfg.period)
    out = []
    while len(out) < cfg.periods:
        start, end = period_bounds(start - DAY, cfg.period)
        origin = start + pd.Timedelta(days=cfg.at_day)
        if origin >= end:
            raise ValueError(f"at_day {cfg.at_day} is past the end of the {cfg.period} starting {start.date()}")
        out.append((start, origin, end))
    return out[::-1]


PERIOD_METHODS = ("funnelcast", "weighted_pipeline", "reps_close_dates")


def _period_groups(export: Export, scorer, cfg: PeriodBacktestConfig, start: pd.Timestamp, origin: pd.Timestamp,
                   end: pd.Timestamp) -> pd.DataFrame:
    """One period: per group, the three forecasts made at ``origin`` (each includes won so far) and
    the bookings of ``[start, end)``."""
    from models.forecast import period_forecast, won_in_period

    fc = period_forecast(export, scorer, origin, period=cfg.period, by=cfg.by, n_sims=cfg.n_sims, seed=cfg.deal.seed)
    actual = won_in_period(export, start, end, cfg.by)["won_so_far"]
    g = fc.groups.set_index("group")
    names = sorted(set(g.index) | set(actual.index))
    g = g.reindex(names).fillna(0.0)
    return pd.DataFrame({
        "period_start": start, "origin": origin, "group": names,
        "actual": actual.reindex(names).fillna(0.0).to_numpy(),
        "won_so_far": g["won_so_far"].to_numpy(),
        "funnelcast": g["expected_total"].to_numpy(), "p10": g["p10"].to_numpy(), "p90": g["p90"].to_numpy(),
        "weighted_pipeline": (g["won_so_far"] + g["weighted_pipeline"]).to_numpy(),
        "reps_close_dates": (g["won_so_far"] + g["reps_close_dates"]).to_numpy(),
    })


def _period_rows(g: pd.DataFrame, by: str) -> list[dict]:
    """WAPE, bias and share within +-10% over the groups (by owner: the reps; 'unassigned' is no rep,
    it counts in the total only), and the error of the company total."""
    from models.forecast import UNASSIGNED

    reps = g[g["group"] != UNASSIGNED] if by in ("owner_id", "team") else g
    y = reps["actual"].to_numpy()
    rows = []
    for m in PERIOD_METHODS:
        row = {"period_start": g["period_start"].iloc[0], "origin": g["origin"].iloc[0], "method": m,
               **accuracy(reps[m].to_numpy(), y)}
        total = g["actual"].sum()
        row["total_forecast"], row["total_actual"] = float(g[m].sum()), float(total)
        row["total_error"] = float((g[m].sum() - total) / total) if total > 0 else float("nan")
        if m == "funnelcast":
            row["coverage_p10_p90"] = float(np.mean((reps["p10"] <= y) & (y <= reps["p90"]))) if len(y) else float("nan")
        rows.append(row)
    return rows


def run_period_backtest(export: Export, cfg: PeriodBacktestConfig, progress: bool = True) -> PeriodBacktestResult:
    """Every past period: fit the deal models at its origin, forecast the period, compare with its bookings."""
    start_time = time.perf_counter()
    periods = period_origins(export, cfg)
    spec, snaps = _snapshots(export, [o for _, o, _ in periods], cfg.deal, progress)
    groups, rows, skipped = [], [], []
    for start, origin, end in tqdm(periods, desc=f"backtest {cfg.period}s", disable=not progress, unit=cfg.period):
        scorer = _fit_or_skip(export, snaps, spec, origin, cfg.deal, skipped)
        if scorer is None:
            continue
        g = _period_groups(export, scorer, cfg, start, origin, end)
        groups.append(g)
        rows += _period_rows(g, cfg.by)
    if not rows:
        later = ("With --period month (the latest month starts after the latest quarter) or a later --at-day the "
                 "origins come later" if cfg.period == "quarter" else "With a later --at-day the origins come later")
        raise _none_left(skipped, f"{cfg.period}s' origins", f"{later}; else backtest a longer export.")
    per_origin = pd.DataFrame(rows)
    overall = (per_origin.groupby("method", sort=False)
               [["wape", "bias", "within_10pct", "total_error"]].mean().reset_index())
    overall["total_abs_error"] = per_origin.groupby("method", sort=False)["total_error"].apply(lambda e: e.abs().mean()).to_numpy()
    cov = per_origin.loc[per_origin["method"] == "funnelcast", "coverage_p10_p90"].mean()
    overall["coverage_p10_p90"] = np.where(overall["method"] == "funnelcast", cov, np.nan)
    return PeriodBacktestResult(per_origin=per_origin, overall=overall, groups=pd.concat(groups, ignore_index=True),
                                seconds=time.perf_counter() - start_time, skipped=skipped,
                                remedy=_periods_remedy(periods, skipped, cfg) if skipped else "")


def write_period_report(result: PeriodBacktestResult, out: Path, cfg: PeriodBacktestConfig) -> list[Path]:
    """``period_per_origin.csv``, ``period_overall.csv``, ``period_groups.csv`` (rounded) and a plot
    of the company total forecast against the actual bookings per period, in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.score import rounded

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in (("per_origin", result.per_origin), ("overall", result.overall), ("groups", result.groups)):
        p = out / f"period_{name}.csv"
        rounded(frame.assign(period=cfg.period, at_day=cfg.at_day)).to_csv(p, index=False)
        paths.append(p)
    tot = result.groups.groupby("period_start")[["actual", "funnelcast", "weighted_pipeline", "reps_close_dates"]].sum()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = [str(d.date()) for d in tot.index]
    for c in tot.columns:
        ax.plot(x, tot[c], marker="o", label=c)
    ax.set_title(f"Company bookings per {cfg.period}: forecast at day {cfg.at_day} against actual")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "period_accuracy.png", dpi=110)
    plt.close(fig)
    return [*paths, out / "period_accuracy.png"]


def log_period_backtest(result: PeriodBacktestResult, client, experiment: str, artifact_location: str | None,
                        out: Path, cfg: PeriodBacktestConfig, data_source: str) -> str:
    """Log the period backtest's overall figures and its files to MLflow; returns the run id."""
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id(client, experiment, artifact_location),
                          run_name=f"forecast-backtest-{cfg.period}") as run:
        mlflow.set_tags({"task": "forecast_backtest", "period": cfg.period, "data_source": data_source})
        mlflow.log_params({"period": cfg.period, "periods": cfg.periods, "at_day": cfg.at_day, "by": cfg.by,
                           "n_sims": cfg.n_sims})
        for r in result.overall.to_dict("records"):
            mlflow.log_metrics({f"{cfg.period}_{r['method']}_{k}": float(v) for k, v in r.items()
                                if k != "method" and v is not None and np.isfinite(v)})
        mlflow.log_artifacts(str(out), artifact_path="backtest")
        return run.info.run_id


__all__ = ["BacktestConfig", "BacktestResult", "PeriodBacktestConfig", "PeriodBacktestResult", "accuracy", "origins",
           "NoOriginToBacktest", "log_backtest", "log_period_backtest", "period_origins", "run_backtest", "run_period_backtest", "write_period_report",
           "write_report"]
