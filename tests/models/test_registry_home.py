"""A project home that can be moved: train into home A, ``mv`` it to B, load and serve from B."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from features.settings import Settings
from models.registry import HOME_RECORD, configure, follow_home, load_scorer
from training.pipeline import log_and_register


@pytest.fixture()
def moved(tmp_path, trained, train_config):
    """A home trained into at ``a/.funnelcast`` and then moved to ``b/.funnelcast``: (old, new)."""
    old = _home(tmp_path / "a" / ".funnelcast")
    old.home.mkdir(parents=True)
    client = configure(old.resolved_tracking_uri(), home=old.home)
    own = dataclasses.replace(trained, scorer=copy.deepcopy(trained.scorer))  # logging records the source on it
    log_and_register(own, client, experiment="funnelcast", artifact_location=old.artifact_location(),
                     cfg=train_config, data_source="sample")
    assert json.loads((old.home / HOME_RECORD).read_text())["path"] == str(old.home.resolve())
    (tmp_path / "b").mkdir()
    shutil.move(tmp_path / "a" / ".funnelcast", tmp_path / "b" / ".funnelcast")
    return old, _home(tmp_path / "b" / ".funnelcast")


def _home(home):
    # the default store under the home, named: mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI,
    # which a Settings without tracking_uri would read
    return Settings(home=home, tracking_uri=f"sqlite:///{home.resolve() / 'mlflow.db'}")


def test_a_moved_store_without_following_points_at_the_old_place(moved):
    _, new = moved
    with pytest.raises((MlflowException, OSError)):
        load_scorer(configure(new.resolved_tracking_uri()), "lead_quality")  # the stored locations are absolute


def test_a_moved_home_is_followed_and_its_models_load_from_the_new_place(moved, trained, sample_export):
    old, new = moved
    client = configure(new.resolved_tracking_uri(), home=new.home)
    loaded = load_scorer(client, "lead_quality")
    frame = trained.snapshots[trained.scorer.feature_names].head(50)
    np.testing.assert_allclose(loaded.scorer.predict_proba(frame), trained.scorer.predict_proba(frame))
    assert json.loads((new.home / HOME_RECORD).read_text())["path"] == str(new.home.resolve())
    run = client.get_run(loaded.run_id)
    assert run.info.artifact_uri.startswith(new.home.resolve().as_uri())
    assert str(old.home.resolve()) not in run.info.artifact_uri
    assert follow_home(new.home, new.resolved_tracking_uri()) == 0  # followed once: nothing left to rewrite


def test_the_api_serves_from_the_moved_home(moved):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    _, new = moved
    settings = new.model_copy(update={"api_keys": ["k"]})
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz").json()
    assert ready["tasks"]["lead_quality"]["state"] == "loaded", ready


def test_a_store_outside_the_home_is_left_alone(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert follow_home(home, f"sqlite:///{tmp_path / 'elsewhere.db'}") == 0
    assert follow_home(home, "http://mlflow.internal:5000") == 0
    assert not (home / HOME_RECORD).exists()


@pytest.fixture()
def unrecorded(tmp_path, trained, train_config):
    """A home trained into at ``a/.funnelcast`` without a home record (the Python API without a home,
    or a version before records were kept): ``(settings of a, the trained lead scorer)``."""
    old = _home(tmp_path / "a" / ".funnelcast")
    old.home.mkdir(parents=True)
    own = dataclasses.replace(trained, scorer=copy.deepcopy(trained.scorer))
    log_and_register(own, configure(old.resolved_tracking_uri()), experiment="funnelcast",
                     artifact_location=old.artifact_location(), cfg=train_config, data_source="sample")
    assert not (old.home / HOME_RECORD).exists()
    return old, own.scorer


@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_home_moved_or_copied_before_its_first_open_serves_and_scores_from_the_new_place(
        how, unrecorded, tmp_path, sample_dir, monkeypatch, capsys):
    """Moved (or copied, the original then deleted) before any command opened it: the first ``score``
    finds where the store was from its own artifact locations, rewrites them, and scores; the API then
    serves the same version from the new place."""
    from fastapi.testclient import TestClient

    from features.settings import get_settings
    from serving.app import create_app
    from training.cli import main

    old, scorer = unrecorded
    (tmp_path / "b").mkdir()
    (shutil.move if how == "move" else shutil.copytree)(old.home, tmp_path / "b" / ".funnelcast")
    new = _home(tmp_path / "b" / ".funnelcast")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # configure() above exported a's store
    monkeypatch.setenv("FUNNELCAST_HOME", str(new.home))
    get_settings.cache_clear()
    try:
        assert main(["score", "--task", "lead_quality", "--data", str(sample_dir / "export"),
                     "--out", str(tmp_path / "scores.csv")]) == 0
    finally:
        get_settings.cache_clear()
    assert json.loads((new.home / HOME_RECORD).read_text())["path"] == str(new.home.resolve())
    if how == "copy":
        shutil.rmtree(old.home)  # the copy is its own: nothing points at the original any more
    scored = pd.read_csv(tmp_path / "scores.csv")
    assert len(scored) > 0 and set(scored["model"]) == {"lead_quality@1"}, capsys.readouterr().err
    client = configure(new.resolved_tracking_uri(), home=new.home)
    run = client.get_run(client.get_model_version_by_alias("lead_quality", "champion").run_id)
    assert run.info.artifact_uri.startswith(new.home.resolve().as_uri())
    with TestClient(create_app(new.model_copy(update={"api_keys": ["k"], "reload_poll_seconds": 0}))) as c:
        ready = c.get("/readyz").json()
        loaded = c.app.state.models["lead_quality"].scorer
    assert ready["tasks"]["lead_quality"] == {"state": "loaded", "version": "1", "reason": None}, ready
    assert loaded.feature_names == scorer.feature_names


def test_a_store_whose_artifacts_live_elsewhere_is_not_rewritten(tmp_path, trained, train_config):
    """No record and locations outside the home that the home does not hold: nothing is guessed."""
    s = _home(tmp_path / "h" / ".funnelcast")
    s.home.mkdir(parents=True)
    log_and_register(dataclasses.replace(trained, scorer=copy.deepcopy(trained.scorer)),
                     configure(s.resolved_tracking_uri()), experiment="e",
                     artifact_location=(tmp_path / "shared" / "artifacts").as_uri(), cfg=train_config, data_source="x")
    assert follow_home(s.home, s.resolved_tracking_uri()) == 0
    run = configure(s.resolved_tracking_uri()).search_runs([configure(s.resolved_tracking_uri())
                                                             .get_experiment_by_name("e").experiment_id])[0]
    assert run.info.artifact_uri.startswith((tmp_path / "shared" / "artifacts").as_uri())


def test_a_home_whose_record_cannot_be_written_still_opens(tmp_path, monkeypatch, caplog):
    """A read-only home (a mounted model store): the store opens, the log says the place is not recorded."""
    import logging

    home = tmp_path / "ro"
    home.mkdir()
    uri = f"sqlite:///{home / 'mlflow.db'}"

    def refuse(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr("models.registry.os.replace", refuse)
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        assert follow_home(home, uri) == 0
    assert "cannot record where the project home is" in caplog.text and not (home / HOME_RECORD).exists()
    assert list(home.iterdir()) == []  # no temporary file left either
