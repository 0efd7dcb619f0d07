"""The per-fit choice of the sales calendar (``choose_calendar``): which columns each deal model reads,
the rule the choice follows, and that nothing after the cutoff reaches it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from features.deals import CALENDAR_FEATURES, PERIOD_CALENDAR_FEATURES
from models.candidates import TIE
from training.deals import (
    DealTrainConfig,
    _criterion,
    _kept,
    _timing_predictions,
    _validation_rows,
    choose_calendar,
    choose_refit,
    choose_timing,
    criterion_rows,
    model_columns,
    win_scores,
)


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
    p = _timing_predictions(spec, fixed_cfg, val["hazard"], val["rows"])
    with_calendar = criterion_rows(val["outcomes"], *p)
    # the rows' mean is the criterion the candidates are chosen by
    assert np.mean(with_calendar) == pytest.approx(_criterion(win_scores(val["outcomes"], *p)), abs=1e-6)
    got = choose_calendar(spec, fixed_cfg, val, with_calendar)
    without = got["validation_log_loss_without"]
    assert np.isfinite(without) and without != got["validation_log_loss_with"]  # two different models were fitted
    assert got["chosen"] == (got["gain"] > max(got["standard_error"], TIE))
    assert got["gain"] == pytest.approx(without - got["validation_log_loss_with"])
    # the rule itself, on the rows of the model without the calendar: a clear, even gain keeps it,
    # a gain within TIE does not, and a gain of the same mean but as noisy as the rows themselves does not
    base = criterion_rows(val["outcomes"], *_timing_predictions(spec, replace(fixed_cfg, timing_calendar=False),
                                                                 val["hazard"], val["rows"]))
    assert np.mean(base) == pytest.approx(without)
    assert choose_calendar(spec, fixed_cfg, val, base - 10 * TIE)["chosen"] is True
    assert choose_calendar(spec, fixed_cfg, val, base - TIE / 2)["chosen"] is False
    noise = np.random.default_rng(0).normal(0.0, 1.0, len(base))
    noisy = choose_calendar(spec, fixed_cfg, val, base - 10 * TIE + noise)
    assert noisy["standard_error"] > 10 * TIE and noisy["chosen"] is False
    # no window to choose on: the calendar stays; excluded from the features: nothing to choose
    assert choose_calendar(spec, fixed_cfg, None, with_calendar)["chosen"] is True
    no_calendar = replace(spec, excluded=(*spec.excluded, *CALENDAR_FEATURES))
    assert choose_calendar(no_calendar, fixed_cfg, val, with_calendar)["chosen"] is False


def test_a_win_must_clear_its_error_clustered_by_deal():
    """``_kept``: the same per-row gains pass when the rows are separate deals and fail when they are the
    weekly snapshots of a few deals (a deal's snapshots share its outcome, so they are one observation)."""
    rng = np.random.default_rng(3)
    n = 400
    deal_effect = np.repeat(rng.normal(0.0, 0.05, 8), n // 8)  # 8 deals, 50 snapshots each
    gain = 0.004 + deal_effect - deal_effect.mean() + rng.normal(0.0, 0.01, n)
    before = np.full(n, 0.5)
    many = pd.DataFrame({"opportunity_id": np.arange(n)})
    few = pd.DataFrame({"opportunity_id": np.repeat(np.arange(8), n // 8)})
    assert _kept(before, before - gain, many)[0] is True
    kept, mean, se = _kept(before, before - gain, few)
    assert kept is False and mean == pytest.approx(0.004, abs=0.002) and se > 0.004
    assert _kept(before, before + gain, many)[0] is False  # a loss is never kept


def test_the_choice_is_recorded_and_reads_nothing_after_the_cutoff(deal_snapshot_frame, fixed_cfg):
    """``choose_timing`` settles ``timing_calendar`` and says why; outcomes after the cutoff (rewritten
    here: every deal still open then is made a quick win) leave the choice and its figures unchanged."""
    spec, snaps = deal_snapshot_frame
    times = np.sort(snaps["as_of"].unique())
    cutoff = times[int(len(times) * 0.8)]
    fixed_cfg = replace(fixed_cfg, refit_timing=None)  # the refit chosen too
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
    assert again.refit_timing == fixed.refit_timing and choice_again["refit"] == choice["refit"]


def test_the_refit_is_kept_only_when_it_lowers_the_validation_criterion(deal_snapshot_frame, fixed_cfg, cutoff):
    """``choose_refit``: the chosen candidate grown again on every hazard row known where the validation window
    starts, kept by the rule of every choice (a gain beyond one standard error clustered by deal, and ``TIE``)."""
    spec, snaps = deal_snapshot_frame
    val = _validation_rows(snaps, cutoff, fixed_cfg)
    cfg = replace(fixed_cfg, timing_calendar=True, refit_timing=None)
    base = criterion_rows(val["outcomes"], *_timing_predictions(spec, cfg, val["hazard"], val["rows"]))
    got = choose_refit(spec, cfg, val, snaps, base)
    refitted = got["validation_log_loss_refitted"]
    assert np.isfinite(refitted) and refitted != pytest.approx(got["validation_log_loss_as_fitted"], abs=1e-9)
    assert got["validation_log_loss_as_fitted"] == pytest.approx(np.mean(base))
    assert got["chosen"] == (got["gain"] > max(got["standard_error"], TIE))
    # the rule on a made-up baseline: far worse than the refit keeps it, far better refuses it
    assert choose_refit(spec, cfg, val, snaps, base + 1.0)["chosen"] is True
    assert choose_refit(spec, cfg, val, snaps, base - 1.0)["chosen"] is False
    assert choose_refit(spec, cfg, None, snaps, base)["chosen"] is False  # no window: no refit
    # chosen per fit with None, fixed when set (off by default)
    fixed, choice = choose_timing(snaps, spec, cutoff, cfg)
    assert fixed.refit_timing is choice["refit"]["chosen"]
    off, choice_off = choose_timing(snaps, spec, cutoff, replace(cfg, refit_timing=False))
    assert off.refit_timing is False and choice_off["refit"] == {}
    assert DealTrainConfig().refit_timing is False
