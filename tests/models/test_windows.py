"""The horizon chosen from the data: the quantile, the rounding, the bounds, right-censoring, too little data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.errors import FunnelcastError
from models.windows import NoDecisions, _round_up, choose_horizon

CUTOFF = pd.Timestamp("2026-01-01", tz="UTC")


def _durations(days: np.ndarray, created: pd.DatetimeIndex) -> pd.Series:
    return pd.Series(pd.to_timedelta(days, unit="D"), index=created)


@pytest.mark.parametrize(("days", "rounded"), [(0.2, 1), (6.0, 6), (6.01, 7), (13.5, 14), (14.0, 14), (15.0, 21),
                                               (70.0, 70), (70.5, 77)])
def test_rounding_is_up_to_days_then_weeks(days, rounded):
    assert _round_up(days) == rounded


@pytest.mark.parametrize("seed", [0, 1])
def test_the_horizon_is_a_high_quantile_of_old_cohorts(seed):
    rng = np.random.default_rng(seed)
    created = pd.DatetimeIndex(CUTOFF - pd.to_timedelta(rng.uniform(200, 700, 2000), unit="D"))
    days = rng.exponential(20, 2000)
    h = choose_horizon(_durations(days, created), CUTOFF)
    assert h.source == "data" and h.note == ""
    assert h.quantile_days == pytest.approx(np.quantile(np.minimum(days, 182), 0.9))
    assert h.days == _round_up(h.quantile_days) and h.days % 7 == 0
    assert h.params()["horizon_source"] == "data"


def test_decisions_after_the_cutoff_are_never_read():
    created = pd.DatetimeIndex(CUTOFF - pd.to_timedelta(np.full(100, 300.0), unit="D"))
    early = _durations(np.full(100, 10.0), created)
    late = pd.concat([early, _durations(np.full(100, 400.0), created)])  # decided after the cutoff
    assert choose_horizon(late, CUTOFF).days == choose_horizon(early, CUTOFF).days == 10


def test_a_young_export_falls_back_to_every_decision_and_says_so():
    rng = np.random.default_rng(3)
    created = pd.DatetimeIndex(CUTOFF - pd.to_timedelta(rng.uniform(30, 120, 500), unit="D"))
    days = rng.uniform(1, 25, 500)
    h = choose_horizon(_durations(days, created), CUTOFF)
    assert "young export" in h.note and 7 <= h.days <= 28


def test_bounds_and_the_history_clamp():
    created = pd.DatetimeIndex(CUTOFF - pd.to_timedelta(np.full(200, 400.0), unit="D"))
    assert choose_horizon(_durations(np.full(200, 1.0), created), CUTOFF).days == 7  # min_days
    assert choose_horizon(_durations(np.full(200, 300.0), created), CUTOFF).days == 182  # max_days
    short = choose_horizon(_durations(np.full(200, 300.0), created), CUTOFF, history=pd.Timedelta(days=400))
    assert short.days == 100 and "quarter" in short.note


def test_too_few_decisions_are_a_domain_error_naming_the_count():
    created = pd.DatetimeIndex(CUTOFF - pd.to_timedelta(np.full(5, 100.0), unit="D"))
    with pytest.raises(NoDecisions, match="only 5 records") as err:
        choose_horizon(_durations(np.full(5, 3.0), created), CUTOFF)
    assert isinstance(err.value, FunnelcastError) and "--horizon" in str(err.value)
