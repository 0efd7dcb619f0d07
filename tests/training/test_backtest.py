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
    note = skipped_text(result.skipped, len(ran))
    assert note.startswith(f"note: {len(result.skipped)} origin(s) left out") and str(times[0].date()) in note
    write_report(result, tmp_path / "bt")
    assert str(times[0].date()) in (tmp_path / "bt" / "report.md").read_text()
    # every origin too early: one clear error, not a traceback from the first fit
    early = BacktestConfig(every="56d", span="112d", n_sims=200, deal=DealTrainConfig(snapshot_every_days=28, seed=7))
    young = dataclasses.replace(sample_export, exported_at=start + pd.Timedelta(days=120))
    with pytest.raises(NoOriginToBacktest, match=r"backtest: none of the \d+ origins .* has history enough"):
        run_backtest(young, early, progress=False)
