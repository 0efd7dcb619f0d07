"""The forecast of a calendar period as the API serves it, in one function that the
``/v1/forecast?period=`` route and the refresh job both call (the CLI calls the same
:func:`models.forecast.period_forecast` and writes its frames)."""

from __future__ import annotations

import math

import pandas as pd

from features.contract import Export
from models.deals import DealScorer
from models.forecast import UNASSIGNED, PeriodForecast, period_forecast
from serving.schemas.common import ModelRef
from serving.schemas.deals import PeriodForecastGroup, PeriodForecastResponse

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
