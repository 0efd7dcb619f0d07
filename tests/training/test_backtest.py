"""The forecast backtest: origins from the deal models' time fold, three forecasts per origin, the report."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.backtest import BacktestConfig, origins, run_backtest, write_report
from training.deals import DealTrainConfig


def test_origins_are_the_time_folds(sample_export):
    cfg = BacktestConfig(every="8w", span="112d", deal=DealTrainConfig(horizon_days=91))
    got = origins(sample_export, cfg)
    assert len(got) == 3 and got == sorted(got)
    assert got[-1] == (sample_export.exported_at - pd.Timedelta(days=91)).floor("D")  # its horizon is complete
    assert all(b - a == pd.Timedelta(days=56) for a, b in zip(got, got[1:], strict=False))


def test_backtest_on_a_few_origins(sample_export, tmp_path):
    cfg = BacktestConfig(every="56d", span="112d", n_sims=300, deal=DealTrainConfig(snapshot_every_days=28, seed=7))
    result = run_backtest(sample_export, cfg, progress=False)
    assert result.per_origin["origin"].nunique() == 3
    assert set(result.overall["method"]) == {"funnelcast", "weighted_pipeline", "reps_close_dates"}
    fc = result.overall.set_index("method")
    assert 0 <= fc.loc["funnelcast", "coverage_p10_p90"] <= 1
    w = result.waterfall
    parts = w["won"] + w["lost"] + w["pushed_out"] + w["still_open_beyond"]
    assert np.allclose(parts, w["starting_pipeline"])
    paths = write_report(result, tmp_path / "bt")
    assert (tmp_path / "bt" / "report.md").read_text().startswith("# Forecast accuracy review")
    assert all(p.exists() for p in paths)


def test_origins_with_too_little_history_before_them_are_left_out_and_named(sample_export, tmp_path):
    """A young export: the first origins come before the deal history; the backtest runs the later ones."""
    import dataclasses

    import pytest

    from training.backtest import NoOriginToBacktest, skipped_text

    start = sample_export.opportunities["created_at"].min()
    span = (sample_export.exported_at - start).days + 200  # the first origin about 200 days before any deal
    cfg = BacktestConfig(every=f"{span // 2}d", span=f"{span}d", n_sims=200,
                         deal=DealTrainConfig(snapshot_every_days=28, seed=7))
    times = origins(sample_export, cfg)
    assert times[0] < start
    result = run_backtest(sample_export, cfg, progress=False)
    assert [o for o, _ in result.skipped][0] == times[0]
    assert "too few to learn from" in result.skipped[0][1] or "needs" in result.skipped[0][1]
    ran = set(result.per_origin["origin"])
    assert ran and ran.isdisjoint(o for o, _ in result.skipped) and ran | {o for o, _ in result.skipped} == set(times)
    note = skipped_text(result.skipped, len(ran), remedy=result.remedy)
    assert note.startswith(f"note: {len(result.skipped)} origin(s) left out") and str(times[0].date()) in note
    # what the backtest's user can do: its own --span (from the first origin that ran), not train's --as-of
    first = min(ran)
    assert f"give --span {(times[-1] - first).days}d (the origins from {first.date()} on)" in note
    assert "--as-of" not in note and "train with" not in note
    assert origins(sample_export, dataclasses.replace(cfg, span=f"{(times[-1] - first).days}d")) == sorted(ran)
    write_report(result, tmp_path / "bt")
    assert str(times[0].date()) in (tmp_path / "bt" / "report.md").read_text()
    assert "--as-of" not in (tmp_path / "bt" / "report.md").read_text()
    # every origin too early: one clear error, not a traceback from the first fit
    early = BacktestConfig(every="56d", span="112d", n_sims=200, deal=DealTrainConfig(snapshot_every_days=28, seed=7))
    young = dataclasses.replace(sample_export, exported_at=start + pd.Timedelta(days=120))
    with pytest.raises(NoOriginToBacktest, match=r"backtest: none of the \d+ origins .* has history enough") as none:
        run_backtest(young, early, progress=False)
    assert "--as-of" not in str(none.value) and "shorter --horizon" in str(none.value)


def test_training_advice_in_a_skipped_origins_reason_gives_way_to_the_backtests_own():
    """The errors of too little history end with what to give `funnelcast train`; the backtest keeps what was
    missing and drops that advice (it has no --as-of)."""
    from models.folds import NotEnoughHistory
    from models.windows import NoDecisions
    from training.backtest import _why_too_early
    from training.deals import TooFewOutcomes

    few = TooFewOutcomes("won: 2 positive(s) among 40 rows in the fit window: too few to learn from (at least 5 of "
                         "each class); train with --as-of later or on a longer export")
    assert _why_too_early(few) == ("won: 2 positive(s) among 40 rows in the fit window: too few to learn from "
                                   "(at least 5 of each class)")
    short = _why_too_early(NotEnoughHistory("2 months", ["91d/42d"], "3 conversions in the fit window"))
    assert short.endswith("at the smallest, 3 conversions in the fit window") and "--as-of" not in short
    assert _why_too_early(NoDecisions(3, 30)).endswith("at least 30 are needed to choose the horizon from the data")


def test_the_remedy_for_early_origins_names_the_span_or_the_periods_that_leave_them_out():
    from training.backtest import PeriodBacktestConfig, _origins_remedy, _periods_remedy

    times = [pd.Timestamp("2025-01-01", tz="UTC") + k * pd.Timedelta(days=28) for k in range(4)]
    early = [(times[0], "too few"), (times[1], "too few")]
    assert "give --span 28d (the origins from 2025-02-26 on)" in _origins_remedy(times, early)
    assert _origins_remedy(times, [(times[2], "too few")]).startswith("A shorter --span")  # not the early ones
    periods = [(t, t, t + pd.Timedelta(days=28)) for t in times]
    assert "give --periods 2;" in _periods_remedy(periods, early, PeriodBacktestConfig(period="month", periods=4))


def test_backtest_command_says_its_horizon_and_origins_first_and_its_own_remedy_for_early_ones(
        sample_dir, sample_export, tmp_path, monkeypatch, capsys):
    from features.settings import get_settings
    from training.cli import main

    start = sample_export.opportunities["created_at"].min()
    span = (sample_export.exported_at - start).days + 200  # the first origin before any deal, as above
    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        assert main(["backtest", "--data", str(sample_dir / "export"), "--horizon", "91d", "--every", f"{span // 2}d",
                     "--span", f"{span}d", "--sims", "200", "--no-mlflow", "--out", str(tmp_path / "bt")]) == 0
    finally:
        get_settings.cache_clear()
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("backtest: ")]
    assert lines[0] == "backtest: stage_conversion horizon 91d (set by the user)"
    assert lines[1].startswith(f"backtest: 3 origins every {span // 2}d from ") and "the next 91d by owner_id" in lines[1]
    note = next(line for line in captured.err.splitlines() if line.startswith("note: "))
    assert "left out for too little history" in note and "give --span " in note and "--as-of" not in note
