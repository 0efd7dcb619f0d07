"""`funnelcast drift --task high_value`: the accounts known at --as-of against the customers the model
calibrated on (the reference logged with it); lead_quality and stage_conversion are tested with their training."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest


@pytest.fixture
def registered(account_sample, tmp_path, monkeypatch):
    """``register(result)``: log a high_value result into a fresh store under a fresh home, as the CLI sees it."""
    from features.settings import get_settings
    from models.registry import configure
    from training.pipeline import log_and_register

    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # configure() elsewhere sets it: this store is new
    get_settings.cache_clear()
    settings = get_settings()
    settings.home.mkdir(parents=True)

    def register(result):
        return log_and_register(result, configure(settings.resolved_tracking_uri()), experiment="drift-hv",
                                artifact_location=settings.artifact_location(), cfg=account_sample[2],
                                data_source="sample")

    yield register
    get_settings.cache_clear()


def test_high_value_drift_against_its_logged_reference(account_sample, registered, tmp_path, capsys):
    from training.cli import main
    from training.tasks import task_definition

    folder, export, _, result = account_sample
    registered(result)
    out = tmp_path / "drift.json"
    assert main(["drift", "--task", "high_value", "--data", str(folder), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    known = task_definition("high_value").population(export, export.exported_at)
    assert report["rows"] == len(known) and report["reference_rows"] > 0
    assert {f["feature"] for f in report["features"]} == set(result.scorer.spec.feature_names)
    assert 0 <= report["score"]["psi"] < 10
    assert "accounts known at" in capsys.readouterr().out


def test_a_model_without_reference_is_named(account_sample, registered, capsys):
    from training.cli import main

    folder, _, _, result = account_sample
    meta = {k: v for k, v in result.scorer.metadata.items() if k != "reference"}
    registered(replace(result, scorer=replace(result.scorer, metadata=meta)))
    assert main(["drift", "--task", "high_value", "--data", str(folder)]) == 2
    assert "without reference distributions" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["drift", "--task", "churn"], ["tune", "--task", "churn"]])
def test_an_unknown_task_is_refused_by_name(argv, capsys):
    from training.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    assert "churn" in capsys.readouterr().err
