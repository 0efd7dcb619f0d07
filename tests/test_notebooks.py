"""Notebooks are executed so they cannot rot: each runs top to bottom on the small sample."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_forecast_accuracy_notebook_runs(sample_dir, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FUNNELCAST_DATA", str(sample_dir / "export"))
    monkeypatch.setenv("FC_BACKTEST_SPAN_DAYS", "56")
    monkeypatch.setenv("FC_BACKTEST_EVERY_DAYS", "56")
    monkeypatch.setenv("FC_SNAPSHOT_EVERY_DAYS", "28")
    monkeypatch.setenv("FC_BACKTEST_SIMS", "300")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "forecast_accuracy.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("origins in" in o.get("text", "") for o in outputs)
