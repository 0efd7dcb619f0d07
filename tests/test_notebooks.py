"""Notebooks are executed so they cannot rot: each runs top to bottom, from its own folder, on
backtest results the test writes first from the small sample (as `funnelcast backtest` does)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "forecast_accuracy.ipynb"


def test_forecast_accuracy_notebook_runs(sample_export, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from training.backtest import BacktestConfig, run_backtest, write_report
    from training.deals import DealTrainConfig

    cfg = BacktestConfig(every="56d", span="56d", n_sims=300, deal=DealTrainConfig(snapshot_every_days=28, seed=7))
    write_report(run_backtest(sample_export, cfg, progress=False), tmp_path / "results")
    monkeypatch.setenv("FC_BACKTEST_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("2 origins in" in o.get("text", "") for o in outputs)


def test_the_committed_notebook_shows_its_plots_before_it_runs():
    """An analyst opening the notebook sees the figures of the committed results without running it."""
    nb = json.loads(NOTEBOOK.read_text())
    images = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # WAPE per origin, total over time, each rep's bias, latest owners, calibration
    assert (ROOT / "notebooks" / "backtest_results" / "groups.csv").exists()
    assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
