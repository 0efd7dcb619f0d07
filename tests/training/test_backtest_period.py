"""The backtest of the calendar-period forecast: past complete periods, three forecasts that each
include what was won before the origin, rep WAPE without 'unassigned', the files and the command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.settings import get_settings
from models.forecast import UNASSIGNED
from training.backtest import PeriodBacktestConfig, period_origins, run_period_backtest, write_period_report
from training.deals import DealTrainConfig


def test_period_origins_are_complete_periods_before_the_export(sample_export):
    got = period_origins(sample_export, PeriodBacktestConfig(period="month", periods=3, at_day=10))
    assert [s.strftime("%Y-%m-%d") for s, _, _ in got] == ["2026-06-01", "2026-07-01", "2026-08-01"]
    assert all(o == s + pd.Timedelta(days=10) and e <= sample_export.exported_at for s, o, e in got)
    with pytest.raises(ValueError, match="at_day 40"):
        period_origins(sample_export, PeriodBacktestConfig(period="month", periods=1, at_day=40))


def test_period_backtest(sample_export, tmp_path):
    cfg = PeriodBacktestConfig(period="quarter", periods=2, at_day=14, n_sims=300,
                               deal=DealTrainConfig(snapshot_every_days=28, seed=7))
    result = run_period_backtest(sample_export, cfg, progress=False)
    g = result.groups
    assert g["period_start"].nunique() == 2 and set(result.overall["method"]) == {"funnelcast", "weighted_pipeline",
                                                                                   "reps_close_dates"}
    for start, part in g.groupby("period_start"):  # the actual is every deal won in the quarter, by its owner
        opps = sample_export.opportunities
        won = opps[(opps["outcome"] == "won") & (opps["closed_at"] >= start)
                   & (opps["closed_at"] < start + pd.offsets.QuarterBegin(startingMonth=1))]
        assert part["actual"].sum() == pytest.approx(won["amount"].fillna(0).sum(), rel=0.02)
        # what was won before the origin is in every forecast
        assert (part["funnelcast"] >= part["won_so_far"] - 1e-6).all()
        assert (part["weighted_pipeline"] >= part["won_so_far"] - 1e-6).all()
    po = result.per_origin
    for (_, m), row in po.set_index(["period_start", "method"]).iterrows():
        part = g[(g["period_start"] == _) & (g["group"] != UNASSIGNED)]
        wape = np.abs(part[m] - part["actual"]).sum() / part["actual"].sum()
        assert row["wape"] == pytest.approx(wape)
    paths = write_period_report(result, tmp_path / "bt", cfg)
    assert all(p.exists() for p in paths)
    table = pd.read_csv(tmp_path / "bt" / "period_groups.csv")
    assert set(table["period"]) == {"quarter"} and (table["actual"].round(2) == table["actual"]).all()


def test_backtest_period_command(sample_dir, tmp_path, monkeypatch, capsys):
    from training.cli import main

    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        out = tmp_path / "bt"
        assert main(["backtest", "--data", str(sample_dir / "export"), "--period", "month", "--periods", "2",
                     "--sims", "200", "--no-mlflow", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "funnelcast" in printed
        # first what the forecasts depend on: the horizon and where it came from, then the periods
        said = [line for line in printed.splitlines() if line.startswith("backtest: ")]
        assert said[0].startswith("backtest: stage_conversion horizon ") and "d chosen from the data (90% of " in said[0]
        assert said[1].startswith("backtest: the last 2 complete months, from ") and "at day 0 by owner_id" in said[1]
        assert len(pd.read_csv(out / "period_per_origin.csv")) == 6
    finally:
        get_settings.cache_clear()
