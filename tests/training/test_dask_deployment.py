"""A multi-machine deployment's model store (docs/guides/deployment.md): MLflow's tracking and registry
on PostgreSQL and the models in a shared artifact root (``FUNNELCAST_ARTIFACT_ROOT``), so a model
registered from one host loads on another that has nothing of the first host's home."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from features.settings import Settings


def test_the_artifact_root_setting_decides_where_a_new_experiment_stores_models(tmp_path):
    home = tmp_path / "home"
    assert Settings(home=home).artifact_location() == (home / "mlartifacts").resolve().as_uri()
    shared = Settings(home=home, artifact_root=str(tmp_path / "shared" / "mlartifacts"))
    assert shared.artifact_location() == (tmp_path / "shared" / "mlartifacts").resolve().as_uri()
    bucket = Settings(home=home, artifact_root="s3://funnelcast-models/mlartifacts")
    assert bucket.artifact_location() == "s3://funnelcast-models/mlartifacts"
    # a tracking server: its own artifact root (None lets the server choose), unless one is set
    server = Settings(home=home, tracking_uri="http://mlflow.internal:5000")
    assert server.artifact_location() is None
    assert Settings(home=home, tracking_uri="https://mlflow.internal", artifact_root="s3://b/m").artifact_location() \
        == "s3://b/m"


def test_a_model_registered_on_one_host_loads_on_another_from_the_shared_artifact_root(
        trained, train_config, postgres_url, tmp_path):
    from models.registry import configure, load_scorer
    from training.pipeline import log_and_register

    root = tmp_path / "nfs" / "mlartifacts"  # a folder every host mounts at the same path
    host_a = Settings(home=tmp_path / "host-a", tracking_uri=postgres_url, artifact_root=str(root))
    host_b = Settings(home=tmp_path / "host-b", tracking_uri=postgres_url, artifact_root=str(root))
    host_a.home.mkdir()
    client = configure(host_a.resolved_tracking_uri())
    result = log_and_register(trained, client, experiment="funnelcast-shared", artifact_location=host_a.artifact_location(),
                              cfg=train_config, data_source="generated sample")
    assert result.version == "1" and "champion" in result.aliases
    stored = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name.endswith((".joblib", ".pkl")) or "scorer" in p.parts for p in stored), stored[:10]
    assert not [p for p in host_a.home.rglob("*") if p.is_file()]  # nothing of the model on host A's disk
    shutil.rmtree(host_a.home)

    loaded = load_scorer(configure(host_b.resolved_tracking_uri()), "lead_quality", "champion")
    assert Path(host_b.home).resolve() != Path(host_a.home).resolve()
    X = trained.snapshots[trained.scorer.feature_names].head(200)
    np.testing.assert_array_equal(loaded.scorer.predict_proba(X), trained.scorer.predict_proba(X))


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """Settings honour MLFLOW_TRACKING_URI; configure() exports it: no test here inherits another's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
