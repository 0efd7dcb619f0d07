"""The funnel's "nothing to report" answers read the same in ``funnelcast funnel`` and ``GET /v1/funnel``.

The two are written by hand in training/cli_deals.py and serving/forecasting.py (training and serving
do not import each other), so this test holds them together: the same export gives the same sentence,
apart from how the cutoff is named (``--as-of`` on the command line, ``as_of`` in the API)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from features.io import load_export
from features.settings import get_settings
from serving.errors import RequestProblem
from serving.forecasting import funnel_answer
from training.cli import main


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """The command's settings in this test's folder, never the user's."""
    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _cli_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _api_problem(export, **kwargs) -> RequestProblem:
    with pytest.raises(RequestProblem) as got:
        funnel_answer(export, **kwargs)
    return got.value


def test_an_export_without_stage_history_is_worded_the_same(sample_dir, tmp_path, capsys):
    folder = tmp_path / "no_history"
    shutil.copytree(sample_dir / "export", folder)
    path = folder / "stage_history.csv"
    pd.read_csv(path, nrows=0).to_csv(path, index=False)  # the header only: deals, no stage changes
    export, _ = load_export(folder)
    n = len(export.opportunities)
    cli = _cli_error(capsys, ["funnel", "--data", str(folder)])
    api = _api_problem(export)
    assert cli == api.detail
    assert api.detail == (f"the funnel needs deals and their stage history; the export has {n:,} opportunities and "
                          "no stage_history rows: include the deals and each one's stage changes (stage_history) "
                          "in the export")
    assert api.status_code == 422 and [path for path, _ in api.errors] == ["stage_history"]


@pytest.mark.parametrize("as_of", ["1999-01-01", "2035-06-30"])  # before the deals, long after them
def test_a_period_without_deals_is_worded_the_same_and_names_the_as_of_that_has_deals(sample_dir, sample_export,
                                                                                      capsys, as_of):
    cli = _cli_error(capsys, ["funnel", "--data", str(sample_dir / "export"), "--as-of", as_of])
    api = _api_problem(sample_export, as_of=pd.Timestamp(as_of, tz="UTC").to_pydatetime())
    assert cli == api.detail.replace("choose an as_of", "choose an --as-of")
    entered = sample_export.stage_history["entered_at"]
    low = (entered.min() + pd.Timedelta(days=1)).date()
    high = min(entered.max() + pd.Timedelta(days=91), sample_export.exported_at).date()
    assert api.detail.startswith(f"the funnel needs deals that entered a stage from "
                                 f"{(pd.Timestamp(as_of) - pd.Timedelta(days=91)).date()} to {as_of}; the export has "
                                 f"none then (its deals entered stages from {entered.min().date()} to "
                                 f"{entered.max().date()})")
    assert api.detail.endswith(f": choose an as_of from {low} to {high}")
    assert [path for path, _ in api.errors] == ["as_of"]
    for end in (low, high):  # the range given has deals at both ends
        assert funnel_answer(sample_export, as_of=pd.Timestamp(end, tz="UTC").to_pydatetime()).bottleneck
