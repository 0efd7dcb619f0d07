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
