"""The time fold: windows, the horizon gap, rolling splits, origins, and every validation error."""

from __future__ import annotations

import pandas as pd
import pytest

from features.errors import FunnelcastError
from models.folds import InvalidFold, TimeFold, parse_duration

TIMES = list(pd.date_range("2024-01-01", "2025-12-31", freq="14D", tz="UTC"))
DAY = pd.Timedelta(days=1)


@pytest.mark.parametrize(("text", "days"), [("91d", 91), ("13w", 91), (" 42 d ", 42), (7, 7), ("0d", 0),
                                            (pd.Timedelta(days=3), 3)])
def test_durations_parse_in_days_or_weeks(text, days):
    assert parse_duration(text) == pd.Timedelta(days=days)


@pytest.mark.parametrize("bad", ["91", "3m", "-4d", "d", "", -1, True, pd.Timedelta(hours=12)])
def test_a_bad_duration_is_named(bad):
    with pytest.raises(InvalidFold) as err:
        parse_duration(bad, "horizon")
    assert "horizon" in str(err.value) and repr(bad) in str(err.value)
    assert isinstance(err.value, FunnelcastError)


@pytest.mark.parametrize(("kwargs", "named"), [({"horizon": "0d"}, "horizon"), ({"calibrate": "0d"}, "calibrate"),
                                               ({"evaluate": "x"}, "evaluate"), ({"horizon": "2y"}, "horizon")])
def test_the_constructor_refuses_a_bad_setting(kwargs, named):
    with pytest.raises(InvalidFold, match=named):
        TimeFold(**kwargs)


def test_split_keeps_a_horizon_between_calibration_labels_and_evaluation():
    fold = TimeFold(horizon="91d", evaluate="91d", calibrate="91d")
    s = fold.split(TIMES)
    assert s.fit and s.calibrate and s.evaluate
    assert max(s.fit) < min(s.calibrate) and max(s.calibrate) < min(s.evaluate)
    assert max(s.calibrate) + fold.horizon < min(s.evaluate)
    assert s.evaluate[-1] == TIMES[-1] and s.evaluate[0] > TIMES[-1] - fold.evaluate
    assert s.cutoff == TIMES[-1] - fold.evaluate + DAY and max(s.fit) <= s.calibrate_start
    assert set(s.fit) | set(s.calibrate) | set(s.evaluate) <= set(TIMES)
    assert s.describe()["evaluate"].endswith(f"({len(s.evaluate)})")


def test_only_labelled_times_are_split_when_a_cutoff_is_given():
    fold = TimeFold(horizon="91d", evaluate="91d", calibrate="42d")
    cutoff = TIMES[-1]
    s = fold.split(TIMES, cutoff)
    assert s.evaluate[-1] + fold.horizon <= cutoff < s.evaluate[-1] + fold.horizon + pd.Timedelta(days=14)


def test_the_final_split_calibrates_on_the_latest_times():
    fold = TimeFold(calibrate="42d")
    s = fold.final(TIMES, TIMES[-1] + pd.Timedelta(days=91))
    assert not s.evaluate and s.calibrate[-1] == TIMES[-1]
    assert s.calibrate[0] > TIMES[-1] - fold.calibrate and s.fit[-1] <= TIMES[-1] - fold.calibrate
    assert s.cutoff == TIMES[-1] + pd.Timedelta(days=91)


def test_too_short_a_history_names_the_times():
    with pytest.raises(InvalidFold, match="not enough history"):
        TimeFold().split(TIMES[:6])
    with pytest.raises(InvalidFold, match="no snapshot"):
        TimeFold().split(TIMES[:3], TIMES[0])


def test_rolling_splits_evaluate_one_window_after_another():
    fold = TimeFold(horizon="91d", evaluate="91d", calibrate="91d")
    splits = fold.splits(TIMES, n=3)
    assert len(splits) == 3
    for older, newer in zip(splits, splits[1:]):
        assert max(older.evaluate) < min(newer.evaluate)
    assert splits[-1].evaluate == fold.split(TIMES).evaluate
    assert len(fold.splits(TIMES, n=50)) < 50  # folds without enough history are left out
    with pytest.raises(InvalidFold, match="n 0"):
        fold.splits(TIMES, n=0)
    with pytest.raises(InvalidFold, match="evaluate"):
        TimeFold(evaluate="0d").split(TIMES)


def test_backtest_origins_end_a_horizon_before_the_cutoff():
    fold = TimeFold(horizon="91d")
    cutoff = pd.Timestamp("2025-12-31 15:00", tz="UTC")
    origins = fold.origins(cutoff, span="364d", every="13w")
    assert origins[-1] == (cutoff - fold.horizon).floor("D") and len(origins) == 5
    assert all(b - a == pd.Timedelta(weeks=13) for a, b in zip(origins, origins[1:]))
    with pytest.raises(InvalidFold, match="every"):
        fold.origins(cutoff, span="364d", every="0d")
    assert "horizon='91d'" in repr(fold) and fold.describe()["calibrate"] == "91d"


def test_windows_shrink_to_what_a_short_history_allows():
    times = list(pd.date_range("2025-01-01", periods=20, freq="7D", tz="UTC"))  # 19 weeks
    fold = TimeFold(horizon="14d", evaluate="91d", calibrate="91d")
    s = fold.split(times)
    assert s.fit and s.calibrate and s.evaluate
    assert 14 <= s.evaluate_days < 91 and 14 <= s.calibrate_days < 91
    assert max(s.calibrate) + fold.horizon < min(s.evaluate)


def test_not_enough_history_names_what_was_found_and_tried():
    from models.folds import NotEnoughHistory

    times = list(pd.date_range("2025-01-01", periods=4, freq="7D", tz="UTC"))
    with pytest.raises(NotEnoughHistory) as err:
        TimeFold(horizon="14d", evaluate="28d", calibrate="28d").split(times)
    text = str(err.value)
    assert "months of labelled snapshots" in text and "28d/28d" in text and "14d/14d" in text
    assert "empty" in text and isinstance(err.value, FunnelcastError)


def test_enough_makes_the_windows_shrink_and_its_reason_is_named():
    from models.folds import NotEnoughHistory

    fold = TimeFold(horizon="14d", evaluate="91d", calibrate="91d")
    s = fold.split(TIMES, enough=lambda split: None if len(split.evaluate) <= 3 else "too long")
    assert len(s.evaluate) <= 3 and s.evaluate_days < 91
    with pytest.raises(NotEnoughHistory, match="3 positives"):
        fold.split(TIMES, enough=lambda split: "3 positives")


def test_the_validation_window_lies_before_the_evaluation_window():
    fold = TimeFold(horizon="28d", evaluate="56d", calibrate="56d")
    s = fold.split(TIMES)
    v = fold.validation(TIMES, s)
    assert v.evaluate and max(v.evaluate) + fold.horizon <= s.cutoff < min(s.evaluate) + DAY
    assert v.evaluate_days == s.evaluate_days
