"""The per-fit choice of the sales calendar (``choose_calendar``): which columns each deal model reads,
the rule the choice follows, and that nothing after the cutoff reaches it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from features.deals import CALENDAR_FEATURES, PERIOD_CALENDAR_FEATURES
from models.candidates import TIE
from training.deals import _criterion, _timing_scores, _validation_rows, choose_calendar, choose_timing, model_columns


@pytest.fixture(scope="module")
def fixed_cfg(deal_config):
    """One timing candidate, no history grid: only the calendar is left to choose."""
    return replace(deal_config, timing_layout="competing_risks", timing_lgbm="conservative", choose_history=False)


@pytest.fixture(scope="module")
def cutoff(deal_snapshot_frame):
    _, snaps = deal_snapshot_frame
    return snaps["as_of"].max()


def test_model_columns_follow_the_calendar_choice(deal_snapshot_frame, deal_config):
    spec, _ = deal_snapshot_frame
    calendar = {*CALENDAR_FEATURES, *PERIOD_CALENDAR_FEATURES}
    for chosen in (None, True):
        c = replace(deal_config, timing_calendar=chosen)
        assert set(CALENDAR_FEATURES) <= set(model_columns(spec, c))
        assert calendar <= set(model_columns(spec, c, timing=True)) and "period" in model_columns(spec, c, timing=True)
        assert not set(PERIOD_CALENDAR_FEATURES) & set(model_columns(spec, c))  # the next-stage model has no periods
    off = replace(deal_config, timing_calendar=False)
    assert not calendar & set(model_columns(spec, off, timing=True)) and not calendar & set(model_columns(spec, off))
    assert set(model_columns(spec, off, timing=True)) == set(model_columns(spec, deal_config, timing=True)) - calendar


def test_the_calendar_is_kept_only_when_it_lowers_the_validation_criterion(deal_snapshot_frame, fixed_cfg, cutoff):
    spec, snaps = deal_snapshot_frame
    val = _validation_rows(snaps, cutoff, fixed_cfg)
    assert val["hazard"] is not None, val["note"]
    with_calendar = _criterion(_timing_scores(spec, fixed_cfg, val["hazard"], val["rows"], val["outcomes"]))
    got = choose_calendar(spec, fixed_cfg, val, with_calendar)
    without = got["validation_log_loss_without"]
    assert np.isfinite(without) and without != with_calendar  # two different models were fitted
    assert got["chosen"] == (with_calendar < without - TIE)
    # the rule itself: a criterion clearly below the one without keeps the calendar, one within TIE does not
    assert choose_calendar(spec, fixed_cfg, val, without - 10 * TIE)["chosen"] is True
    assert choose_calendar(spec, fixed_cfg, val, without - TIE / 2)["chosen"] is False
    # no window to choose on: the calendar stays; excluded from the features: nothing to choose
    assert choose_calendar(spec, fixed_cfg, None, with_calendar)["chosen"] is True
    no_calendar = replace(spec, excluded=(*spec.excluded, *CALENDAR_FEATURES))
    assert choose_calendar(no_calendar, fixed_cfg, val, with_calendar)["chosen"] is False


def test_the_choice_is_recorded_and_reads_nothing_after_the_cutoff(deal_snapshot_frame, fixed_cfg):
    """``choose_timing`` settles ``timing_calendar`` and says why; outcomes after the cutoff (rewritten
    here: every deal still open then is made a quick win) leave the choice and its figures unchanged."""
    spec, snaps = deal_snapshot_frame
    times = np.sort(snaps["as_of"].unique())
    cutoff = times[int(len(times) * 0.8)]
    fixed, choice = choose_timing(snaps, spec, cutoff, fixed_cfg)
    assert fixed.timing_calendar in (True, False) and fixed.timing_calendar == choice["calendar"]["chosen"]
    rewritten = snaps.copy()
    late = ~(rewritten["closed_at"] < cutoff)
    rewritten.loc[late, "closed_at"] = cutoff + np.timedelta64(1, "D")
    rewritten.loc[late, ["won"]] = 1.0
    rewritten.loc[late, "won_amount"] = 1e6
    again, choice_again = choose_timing(rewritten, spec, cutoff, fixed_cfg)
    assert again.timing_calendar == fixed.timing_calendar
    assert choice_again["calendar"] == choice["calendar"]
