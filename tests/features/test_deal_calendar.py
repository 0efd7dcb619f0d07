"""The sales-calendar features of the deal snapshots (``days_to_month_end``, ``days_to_quarter_end``):
against a naive calendar loop, read from ``as_of`` only (nothing after it), one value per snapshot."""

from __future__ import annotations

import calendar
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from features.contract import Export
from features.deals import (
    CALENDAR_FEATURES,
    PERIOD_CALENDAR_FEATURES,
    DealFeatureSpec,
    calendar_features,
    deal_context,
    deal_features,
    deal_snapshots,
    open_opportunities,
    period_calendar,
)


def _naive(as_of: dt.datetime) -> tuple[float, float]:
    """Days to the end of the month and of the quarter, the obvious way: the first instant of the next
    month (of the month after the quarter's last) minus ``as_of``, in days."""
    y, m = as_of.year, as_of.month
    month_end = dt.datetime(y, m, calendar.monthrange(y, m)[1], tzinfo=dt.UTC) + dt.timedelta(days=1)
    last = 3 * ((m - 1) // 3) + 3
    quarter_end = dt.datetime(y, last, calendar.monthrange(y, last)[1], tzinfo=dt.UTC) + dt.timedelta(days=1)
    return ((month_end - as_of) / dt.timedelta(days=1), (quarter_end - as_of) / dt.timedelta(days=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calendar_features_equal_a_naive_calendar(seed):
    rng = np.random.default_rng(seed)
    base = pd.Timestamp("2015-01-01", tz="UTC")
    times = [base + pd.Timedelta(seconds=int(s)) for s in rng.integers(0, 10 * 365 * 86400, 200)]
    # the edges: a period's first instant, its last second, a leap day, the year's end
    times += [pd.Timestamp(t, tz="UTC") for t in ("2017-07-01", "2017-06-30 23:59:59", "2016-02-29 12:00",
                                                  "2016-12-31 23:00", "2017-01-01", "2017-03-31")]
    for t in times:
        got = calendar_features(t, 3)
        month, quarter = _naive(t.to_pydatetime())
        assert got["days_to_month_end"] == pytest.approx(np.full(3, month), abs=1e-9), t
        assert got["days_to_quarter_end"] == pytest.approx(np.full(3, quarter), abs=1e-9), t
        assert 0 < month <= 31 and month <= quarter <= 92


def test_calendar_features_are_read_in_utc():
    """The same instant written in another time zone gives the same figures (UTC, the house rule)."""
    utc = pd.Timestamp("2017-06-30 22:00", tz="UTC")
    tokyo = calendar_features(utc.tz_convert("Asia/Tokyo"), 1)
    for name, values in calendar_features(utc, 1).items():
        assert tokyo[name] == pytest.approx(values)
    assert calendar_features(utc, 1)["days_to_quarter_end"][0] == pytest.approx(2 / 24)


def _past_only(export: Export, as_of: pd.Timestamp) -> Export:
    """The export as it stood at ``as_of``: every row at or after it dropped, exported then."""
    keep = export.opportunities["created_at"] < as_of
    return Export(accounts=export.accounts[export.accounts["created_at"] < as_of],
                  leads=export.leads[export.leads["created_at"] < as_of],
                  opportunities=export.opportunities[keep],
                  stage_history=export.stage_history[export.stage_history["entered_at"] < as_of],
                  activities=export.activities[export.activities["occurred_at"] < as_of],
                  reps=export.reps, open_stages=export.open_stages, exported_at=as_of,
                  custom_fields=export.custom_fields)


@pytest.mark.parametrize("frac", [0.45, 0.8])
def test_calendar_columns_see_nothing_after_as_of(sample_export, frac, assert_future_is_invisible):
    lo, hi = sample_export.opportunities["created_at"].min(), sample_export.exported_at
    as_of = (lo + (hi - lo) * frac).floor("D") + pd.Timedelta(hours=7)
    spec = DealFeatureSpec.from_export(sample_export, as_of=as_of)

    def calendar_columns(export: Export) -> pd.DataFrame:
        opps = open_opportunities(export.opportunities, export.stage_history, as_of)
        ctx = deal_context(export, as_of, spec.horizon_days)
        frame = deal_features(opps, export.stage_history, export.activities, export.leads, export.accounts, as_of,
                              ctx, spec)
        return frame[list(CALENDAR_FEATURES)].sort_index()

    got = assert_future_is_invisible(calendar_columns, sample_export, _past_only(sample_export, as_of))
    month, quarter = _naive(as_of.to_pydatetime())
    assert (got["days_to_month_end"] == month).all() and (got["days_to_quarter_end"] == quarter).all()


def test_snapshots_carry_each_snapshot_s_own_calendar(sample_export):
    """Every snapshot row's calendar is its own ``as_of``'s (not the export's, not the latest snapshot's)."""
    spec = DealFeatureSpec.from_export(sample_export, as_of=sample_export.exported_at)
    assert set(CALENDAR_FEATURES) <= set(spec.feature_names)
    end = sample_export.exported_at.floor("D")
    times = [end - pd.Timedelta(days=d) for d in (200, 131, 95, 40, 3)]
    snaps = deal_snapshots(sample_export, times, spec)
    assert snaps["as_of"].nunique() == len(times)
    for t, part in snaps.groupby("as_of"):
        month, quarter = _naive(t.to_pydatetime())
        assert np.allclose(part["days_to_month_end"], month) and np.allclose(part["days_to_quarter_end"], quarter)
    assert snaps.groupby("as_of")["days_to_quarter_end"].first().nunique() > 1


def test_calendar_features_can_be_excluded(sample_export):
    spec = DealFeatureSpec.from_export(sample_export, exclude=list(CALENDAR_FEATURES),
                                       as_of=sample_export.exported_at)
    assert not set(CALENDAR_FEATURES) & set(spec.feature_names)


@pytest.mark.parametrize("seed", [0, 1])
def test_period_calendar_is_the_calendar_of_each_period_s_start(seed):
    """Each timing period's days to the end of its month and quarter: within three days of the exact
    calendar of its start, for periods as far out as the timing model looks (12 periods of a 30-day
    horizon: 120 days; the snapshot's figures wrapped by the mean month and quarter, whose error
    grows with the months of uneven length in between: February's 28 days)."""
    rng = np.random.default_rng(seed)
    base = pd.Timestamp("2016-01-01", tz="UTC")
    as_of = [(base + pd.Timedelta(days=float(d))).floor("s") for d in rng.uniform(0, 3 * 365, 300)]
    X = pd.DataFrame([{k: v[0] for k, v in calendar_features(t, 1).items()} for t in as_of])
    start = np.floor(rng.uniform(0, 120, len(X)))
    got = period_calendar(X, start)
    assert set(got) == set(PERIOD_CALENDAR_FEATURES)
    for i, t in enumerate(as_of):
        month, quarter = _naive((t + pd.Timedelta(days=start[i])).to_pydatetime())
        # the exact figure and the wrapped one may sit on the two sides of a period's end
        assert min(abs(got["period_days_to_month_end"][i] - month), 31 - abs(got["period_days_to_month_end"][i] - month)) < 3
        assert min(abs(got["period_days_to_quarter_end"][i] - quarter), 92 - abs(got["period_days_to_quarter_end"][i] - quarter)) < 3
    assert (got["period_days_to_quarter_end"] > 0).all() and (got["period_days_to_quarter_end"] <= 92).all()
    # with no offset a period's calendar is its snapshot's
    same = period_calendar(X, np.zeros(len(X)))
    assert np.allclose(same["period_days_to_quarter_end"], X["days_to_quarter_end"])
    assert period_calendar(X.drop(columns=list(CALENDAR_FEATURES)), start) == {}


def test_timing_rows_carry_each_period_s_calendar(deal_snapshot_frame, deal_config, sample_export):
    """The timing models' rows (a snapshot x a period after it): the period's calendar is that of the
    period's start, ``as_of + period x period_days`` (within three days), and the timing models read it."""
    from models.deals import timing_columns
    from training.deals import hazard_rows

    spec, snaps = deal_snapshot_frame
    cutoff = snaps["as_of"].max()
    rows = hazard_rows(snaps, cutoff, deal_config.period_days, deal_config.n_periods)
    assert rows["period"].nunique() > 3
    sample = rows.sample(400, random_state=0)
    for _, r in sample.iterrows():
        month, quarter = _naive((r["as_of"] + pd.Timedelta(days=r["period"] * deal_config.period_days)).to_pydatetime())
        gap = abs(r["period_days_to_quarter_end"] - quarter)
        assert min(gap, 92 - gap) < 3, (r["as_of"], r["period"])
        gap = abs(r["period_days_to_month_end"] - month)
        assert min(gap, 31 - gap) < 3, (r["as_of"], r["period"])
    assert set(PERIOD_CALENDAR_FEATURES) <= set(timing_columns(spec))
    without = DealFeatureSpec.from_export(sample_export, exclude=list(CALENDAR_FEATURES), as_of=cutoff)
    assert not set(PERIOD_CALENDAR_FEATURES) & set(timing_columns(without))
