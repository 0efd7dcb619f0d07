"""`funnelcast drift --task high_value`: the accounts known at --as-of against the customers the model
calibrated on (the reference logged with it); lead_quality and stage_conversion are tested with their training."""

from __future__ import annotations

import json

import pytest


def test_high_value_drift_against_its_logged_reference(account_sample, tmp_path, monkeypatch, capsys):
    from features.settings import get_settings
    from models.registry import configure
    from training.cli import main
    from training.pipeline import log_and_register
    from training.tasks import task_definition

    folder, export, cfg, result = account_sample
    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # configure() elsewhere sets it: this store is new
    get_settings.cache_clear()
    try:
        settings = get_settings()
        settings.home.mkdir(parents=True)
        client = configure(settings.resolved_tracking_uri())
        log_and_register(result, client, experiment="drift-hv", artifact_location=settings.artifact_location(),
                         cfg=cfg, data_source="sample")
        out = tmp_path / "drift.json"
        assert main(["drift", "--task", "high_value", "--data", str(folder), "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        known = task_definition("high_value").population(export, export.exported_at)
        assert report["rows"] == len(known) and report["reference_rows"] > 0
        assert {f["feature"] for f in report["features"]} == set(result.scorer.spec.feature_names)
        assert 0 <= report["score"]["psi"] < 10
        assert "accounts known at" in capsys.readouterr().out
    finally:
        get_settings.cache_clear()


def test_a_model_without_reference_is_named(account_sample, tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    from features.settings import get_settings
    from models.registry import configure
    from training.cli import main
    from training.pipeline import log_and_register

    folder, _, cfg, result = account_sample
    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # configure() elsewhere sets it: this store is new
    get_settings.cache_clear()
    try:
        settings = get_settings()
        settings.home.mkdir(parents=True)
        old = replace(result, scorer=replace(result.scorer, metadata={
            k: v for k, v in result.scorer.metadata.items() if k != "reference"}))
        log_and_register(old, configure(settings.resolved_tracking_uri()), experiment="drift-hv",
                         artifact_location=settings.artifact_location(), cfg=cfg, data_source="sample")
        assert main(["drift", "--task", "high_value", "--data", str(folder)]) == 2
        assert "without reference distributions" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("argv", [["drift", "--task", "churn"], ["tune", "--task", "churn"]])
def test_an_unknown_task_is_refused_by_name(argv, capsys):
    from training.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    assert "churn" in capsys.readouterr().err
