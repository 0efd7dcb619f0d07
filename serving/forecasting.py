"""The funnel and forecast answers as the API serves them: :func:`funnel_answer` and
:func:`forecast_answer`, which the ``/v1/funnel`` and ``/v1/forecast`` routes and the refresh
job all call (the CLI calls the same :mod:`models.funnel` and :mod:`models.forecast` functions
and writes their frames)."""

from __future__ import annotations

import math
from datetime import datetime

import pandas as pd

from features.contract import Export
from models.deals import DealScorer
from models.forecast import PERIODS, UNASSIGNED, PeriodForecast, forecast_bookings, period_forecast
from models.funnel import funnel_report
from models.registry import LoadedModel
from serving.errors import RequestProblem
from serving.records import utc_timestamp
from serving.schemas.common import ModelRef
from serving.schemas.deals import (
    ForecastGroup,
    ForecastResponse,
    FunnelResponse,
    FunnelStage,
    PeriodForecastGroup,
    PeriodForecastResponse,
)

_COUNTS = ("won_deals", "open_deals")


def _rows(frame: pd.DataFrame, key: str, reps: bool) -> list[PeriodForecastGroup]:
    out = []
    for r in frame.to_dict("records"):
        values = {k: (int(v) if k in _COUNTS else round(float(v), 2)) for k, v in r.items()
                  if k in PeriodForecastGroup.model_fields and k != "group" and not (isinstance(v, float) and math.isnan(v))}
        name = str(r[key])
        out.append(PeriodForecastGroup(group=name, is_rep=reps and name != UNASSIGNED, **values))
    return out


def period_response(fc: PeriodForecast, model: ModelRef) -> PeriodForecastResponse:
    """The response of a computed :class:`models.forecast.PeriodForecast`."""
    return PeriodForecastResponse(
        as_of=fc.as_of.to_pydatetime(), period=fc.period, start=fc.start.to_pydatetime(), end=fc.end.to_pydatetime(),
        by=fc.by, model=model, new_deals=fc.new_deals, has_crm_categories=fc.has_crm_categories,
        total=_rows(fc.total, "group", False)[0],
        teams=_rows(fc.teams, "team", False) if fc.teams is not None else None,
        groups=_rows(fc.groups, "group", fc.by == "owner_id"),
    )


def forecast_payload(export: Export, scorer: DealScorer, as_of: pd.Timestamp, by: str, period: str, model: ModelRef,
                     n_sims: int = 5000, seed: int = 0) -> PeriodForecastResponse:
    """The forecast of the calendar ``period`` (month or quarter) holding ``as_of``, per ``by``
    group, with the company total and (by owner) the team roll-up."""
    return period_response(period_forecast(export, scorer, as_of, period=period, by=by, n_sims=n_sims, seed=seed),
                           model)


# ------------------------------------------------------------------ funnel and forecast over an export
def _as_of(value: datetime | None, export: Export) -> pd.Timestamp:
    return utc_timestamp(value) if value is not None else export.exported_at


def _stages(frame: pd.DataFrame) -> list[FunnelStage]:
    out = []
    for r in frame.to_dict("records"):
        out.append(FunnelStage(**{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()
                                  if k in FunnelStage.model_fields}))
    return out


def _no_stage_history(export: Export) -> str:
    """Why there is no funnel at all, in the words of ``funnelcast funnel`` (training/cli_deals.py says
    the same by hand: serving and training do not import each other; a test compares the two)."""
    n = len(export.opportunities)
    deals = f"{n:,} opportunities" if n else "no opportunities"
    return (f"the funnel needs deals and their stage history; the export has {deals} and no stage_history rows: "
            "include the deals and each one's stage changes (stage_history) in the export")


def _no_deal_in_period(export: Export, start: pd.Timestamp, end: pd.Timestamp) -> tuple[str, str]:
    """Why the period ``[start, end)`` has no funnel, and the range of ``as_of`` whose period holds
    deals (after the first stage entry, up to the last one plus the period, never past the export)."""
    entered = export.stage_history["entered_at"]
    first, last = entered.min(), entered.max()
    low = (first + pd.Timedelta(days=1)).date()
    high = min(last + (end - start), export.exported_at).date()
    return (f"the funnel needs deals that entered a stage from {start.date()} to {end.date()}; the export has none "
            f"then (its deals entered stages from {first.date()} to {last.date()})", f"from {low} to {high}")


def funnel_answer(export: Export, as_of: datetime | None = None, by: str = "none",
                  period_days: int = 91) -> FunnelResponse:
    """The funnel over ``export`` (what ``GET /v1/funnel`` answers; the refresh stores it)."""
    if export.stage_history.empty:
        raise RequestProblem(_no_stage_history(export), [("stage_history", "no rows in the export")])
    report = funnel_report(export, _as_of(as_of, export), period_days=period_days, by=by)
    if not report.bottleneck:  # no stage had a deal in the period: nothing to report on
        found, span = _no_deal_in_period(export, report.start, report.end)
        raise RequestProblem(f"{found}: choose an as_of {span}", [("as_of", f"choose one {span}")])
    return FunnelResponse(start=report.start.to_pydatetime(), end=report.end.to_pydatetime(), by=by,
                          bottleneck=report.bottleneck, most_changed=report.most_changed, summary=report.summary(),
                          stages=_stages(report.table), overall=_stages(report.overall))


def forecast_answer(model: LoadedModel, export: Export, as_of: datetime | None = None, horizon_days: int | None = None,
                    by: str = "owner_id", sims: int = 5000, seed: int = 0,
                    period: str | None = None) -> ForecastResponse | PeriodForecastResponse:
    """The forecast over ``export`` (what ``GET /v1/forecast`` answers; the refresh stores it)."""
    t = _as_of(as_of, export)
    ref = ModelRef(name=model.name, version=model.version)
    if period is not None:
        if period not in PERIODS:
            raise RequestProblem(f"unknown period {period!r}", [("period", f"one of {', '.join(PERIODS)}")])
        if horizon_days is not None:
            raise RequestProblem("period and horizon_days exclude each other", [("horizon_days", "leave it out with period")])
        return forecast_payload(export, model.scorer, t, by, period, ref, n_sims=sims, seed=seed)
    h = horizon_days or model.scorer.spec.horizon_days
    table = forecast_bookings(export, model.scorer, t, by=by, horizon_days=h, n_sims=sims, seed=seed)
    table = table.rename(columns={table.columns[0]: "group"})
    groups = [ForecastGroup(**{k: (str(v) if k == "group" else v) for k, v in r.items() if k in ForecastGroup.model_fields})
              for r in table.to_dict("records")]
    return ForecastResponse(as_of=t.to_pydatetime(), horizon_days=h, by=by, model=ref, groups=groups)
