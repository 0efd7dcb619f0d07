"""Readiness that tells the truth about the stores: a read never creates the operations database, and a
store deleted while the server runs makes ``/readyz`` answer 503 naming it (issue 17)."""

from __future__ import annotations

import shutil
import time

import pytest
from fastapi.testclient import TestClient

from features.settings import Settings
from models.registry import LoadedModel
from serving.app import create_app
from serving.store import GONE, NOT_YET, PRESENT, FilePresence, OperationsStore, sqlite_file

KEY = "test-key"
ADMIN = "admin-" + KEY
LEAD = {"leads": [{"lead": {"lead_id": "a", "created_at": "2026-01-01"}}]}
OUTCOME = {"outcomes": [{"task": "lead_quality", "record_id": "a", "outcome": "converted",
                         "occurred_at": "2026-02-01T00:00:00Z"}]}


def _files(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def fresh_home(tmp_path, lead_scorer, empty_store):
    """A project home with an MLflow store and no operations database, and an app serving the lead model."""
    home = tmp_path / "home"
    home.mkdir()
    settings = Settings(home=home, api_keys=[KEY], admin_api_keys=[ADMIN], tracking_uri=empty_store,
                        reload_poll_seconds=0, refresh_every=0)
    loaded = LoadedModel(name="lead_quality", version="3", alias="champion", run_id=None, scorer=lead_scorer)
    return home, create_app(settings, preloaded={"lead_quality": loaded})


def test_read_only_requests_never_create_the_operations_database(fresh_home):
    home, app = fresh_home
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        ready = c.get("/readyz")
        feed = c.get("/v1/scores")
        history = c.get("/v1/scores/lead/a/history")
        performance = c.get("/v1/models/lead_quality/performance")
        assert "operations.db" not in _files(home)
        stored = c.post("/v1/outcomes", json=OUTCOME)  # a write: creates it
        after = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    ops = ready.json()["operations"]
    assert ops["state"] == "none" and ops["name"] == "operations.db"
    assert ops["reason"].startswith("no operations store yet")
    assert ready.json()["snapshot"]["status"] == "none" and "no operations store yet" in ready.json()["snapshot"]["error"]
    assert feed.status_code == 200 and feed.json()["scores"] == []
    assert history.status_code == 404
    assert performance.status_code == 200 and performance.json()["outcomes_stored"] == 0
    assert stored.status_code == 200 and stored.json()["created"] == 1
    assert "operations.db" in _files(home)
    assert after.json()["operations"] == {"state": "present", "kind": "sqlite", "name": "operations.db", "reason": None}


def test_a_deleted_operations_database_is_not_ready_and_not_recreated(fresh_home):
    home, app = fresh_home
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        assert c.post("/v1/outcomes", json=OUTCOME).status_code == 200
        for p in home.glob("operations.db*"):
            p.unlink()
        ready = c.get("/readyz")
        scored = c.post("/v1/leads/score", json=LEAD)
        outcome = c.post("/v1/outcomes", json=OUTCOME)
        performance = c.get("/v1/models/lead_quality/performance")
        c.app.state.ops_store.flush_scores(5)
    body = ready.json()
    assert ready.status_code == 503 and body["ready"] is False and body["operations"]["state"] == "gone"
    assert "operations.db was deleted while the server ran" in body["reason"]
    assert "scoring with the loaded models continues" in body["reason"]
    assert body["store"]["state"] == "present"  # only the store that is gone is named
    assert scored.status_code == 200  # the loaded model keeps scoring; its score log is dropped, logged
    for r in (outcome, performance):
        assert r.status_code == 503 and "operations.db was deleted" in r.json()["detail"]
        assert r.headers["Retry-After"] == "60" and str(home) not in r.text
    assert not any(p.name.startswith("operations.db") for p in home.iterdir())  # never recreated empty


def test_a_deleted_mlflow_store_is_not_ready_but_loaded_models_keep_scoring(tmp_path, mlflow_store):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_store["home"] / "mlflow.db", home / "mlflow.db")  # a store of its own to delete
    settings = Settings(home=home, api_keys=[KEY], reload_poll_seconds=0, refresh_every=0)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        before = c.get("/readyz")
        (home / "mlflow.db").unlink()
        ready = c.get("/readyz")
        scored = c.post("/v1/leads/score", json=LEAD)
        listed = c.get("/v1/models")
    assert before.status_code == 200 and before.json()["store"]["state"] == "present"
    store = ready.json()["store"]
    assert ready.status_code == 503 and store["state"] == "gone" and store["name"] == "mlflow.db"
    assert "mlflow.db was deleted while the server ran" in ready.json()["reason"]
    assert f"lead_quality version {mlflow_store['version']}" in store["reason"] and "keep scoring" in store["reason"]
    assert scored.status_code == 200 and scored.json()["model"]["version"] == str(mlflow_store["version"])
    assert listed.status_code == 503
    assert not (home / "mlflow.db").exists()  # never recreated by readiness, scoring or the listing


def test_file_presence_tells_none_present_gone_and_replaced(tmp_path):
    path = tmp_path / "x.db"
    presence = FilePresence(path)
    assert presence.status() == NOT_YET
    path.write_bytes(b"a")
    assert presence.status() == PRESENT and not presence.replaced
    path.unlink()
    assert presence.status() == GONE
    path.write_bytes(b"b")  # another file under the same name
    assert presence.status() == PRESENT and presence.replaced
    assert FilePresence(None).status() == PRESENT


@pytest.mark.parametrize(("url", "file"), [("sqlite:////srv/ops.db", "/srv/ops.db"), ("sqlite://", None),
                                           ("sqlite:///:memory:", None), ("postgresql+psycopg://u:p@h/db", None),
                                           ("sqlite:///file:ops?mode=memory&uri=true", None)])
def test_sqlite_file_of_a_url(url, file):
    assert sqlite_file(url) == (None if file is None else __import__("pathlib").Path(file))


def test_a_restored_operations_database_is_followed(tmp_path):
    url = f"sqlite:///{tmp_path / 'operations.db'}"
    store = OperationsStore(url)
    store.upsert_outcomes([{"task": "lead_quality", "record_id": "a", "outcome": "converted",
                            "occurred_at": "2026-02-01"}])
    other = OperationsStore(f"sqlite:///{tmp_path / 'other.db'}")
    other.upsert_outcomes([{"task": "lead_quality", "record_id": r, "outcome": "converted",
                            "occurred_at": "2026-02-01"} for r in ("b", "c")])
    other.engine.dispose()
    for p in tmp_path.glob("operations.db*"):
        p.unlink()
    assert store.status() == GONE
    shutil.copy(tmp_path / "other.db", tmp_path / "operations.db")  # restored from another copy
    assert store.outcome_count("lead_quality") == 2  # read from the file now there, not the deleted one


def test_a_check_that_races_the_first_write_is_not_taken_for_a_deletion(tmp_path, monkeypatch):
    """A thread whose stat found no file yet while another thread's first write created it answers
    "none yet", never "gone" (the race that failed concurrent first outcomes on a fresh home)."""
    import threading

    import serving.store as store

    db = tmp_path / "operations.db"
    presence = FilePresence(db)
    real_stat, other = store.os.stat, {}

    def stat_then_file_appears(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs) if threading.current_thread() is not main else None
        if st is not None:
            return st
        db.write_bytes(b"")  # the other thread's first write creates the file now...
        t = threading.Thread(target=lambda: other.setdefault("status", presence.status()))
        t.start()
        t.join(0.2)  # ...and checks while this thread's stat is still answering "no file"
        raise FileNotFoundError(path)

    main = threading.current_thread()
    monkeypatch.setattr(store.os, "stat", stat_then_file_appears)
    assert presence.status() == NOT_YET
    monkeypatch.setattr(store.os, "stat", real_stat)
    time.sleep(0.05)
    assert other["status"] == PRESENT and presence.status() == PRESENT and not presence.replaced


def test_one_stat_per_access_once_the_database_exists(tmp_path, monkeypatch):
    """Each read or write of an existing operations database checks the file once (every score-log write and
    every read goes through it); the access that creates the file checks once more, so it counts as seen."""
    import serving.store as store_module

    calls = []
    db = tmp_path / "operations.db"
    real_stat = store_module.os.stat
    monkeypatch.setattr(store_module.os, "stat",
                        lambda p, *a, **k: (calls.append(p) if str(p) == str(db) else None) or real_stat(p, *a, **k))
    store = OperationsStore(f"sqlite:///{db}")
    assert store.read_engine() is None and len(calls) == 1  # not there yet: nothing created
    calls.clear()
    assert store.engine is not None and len(calls) == 2  # the first write creates it, then sees it
    for access in (lambda: store.read_engine(), lambda: store.engine):
        calls.clear()
        assert access() is not None and len(calls) == 1
    db.unlink()
    calls.clear()
    with pytest.raises(store_module.OperationsStoreGone):
        store.read_engine()
    assert len(calls) == 1
