"""Model operations over HTTP: atomic reload under load, outcomes, live performance, monitoring."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from features.pit import open_leads
from features.settings import Settings
from models.registry import LoadedModel
from serving.app import create_app
from serving.records import export_items

KEY, ADMIN = "ops-key", "admin-key"


def _loaded(scorer, version: str) -> LoadedModel:
    return LoadedModel(name="lead_quality", version=version, alias="champion", run_id=None, scorer=scorer)


@pytest.fixture
def app(lead_scorer, tmp_path):
    settings = Settings(home=tmp_path, api_keys=[KEY], admin_api_keys=[ADMIN],
                        tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    return create_app(settings, preloaded={"lead_quality": _loaded(lead_scorer, "1")})


@pytest.fixture(scope="module")
def body(sample_export):
    as_of = sample_export.exported_at
    leads = open_leads(sample_export.leads, as_of).head(40)
    items = export_items(leads, sample_export.accounts, sample_export.activities, as_of)
    return {"as_of": as_of.isoformat(), "leads": items}


def _score(c: TestClient, body: dict) -> tuple[int, set[str]]:
    r = c.post("/v1/leads/score", json={**body, "leads": body["leads"][:3]})
    if r.status_code != 200:
        return r.status_code, set()
    data = r.json()
    versions = {data["model"]["version"], r.headers["X-Model-Version"].split("/")[1]}
    versions |= {s["model"]["version"] for s in data["scores"]}
    return 200, versions


def test_reload_swaps_atomically_while_requests_keep_succeeding(app, lead_scorer, body):
    loading, release = threading.Event(), threading.Event()

    def slow_loader():  # the new champion "loads" until the test lets it finish
        loading.set()
        assert release.wait(30)
        return {"lead_quality": _loaded(lead_scorer, "2")}, {}

    app.state.model_loader = slow_loader
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        results: list[tuple[int, set[str]]] = []
        reload_answer: dict = {}
        stop = threading.Event()

        def reload() -> None:
            reload_answer["r"] = c.post("/v1/admin/reload", headers={"X-API-Key": ADMIN})

        def keep_scoring() -> None:
            while not stop.is_set():
                results.append(_score(c, body))

        t_reload = threading.Thread(target=reload)
        t_reload.start()
        assert loading.wait(30)
        during = [_score(c, body) for _ in range(3)]  # the new model is loading beside the old one
        assert during == [(200, {"1"})] * 3
        t_score = threading.Thread(target=keep_scoring)
        t_score.start()
        while len(results) < 2:  # make sure scoring is in flight when the swap happens
            t_score.join(0.01)
        release.set()
        t_reload.join(30)
        n_at_swap = len(results)
        while len(results) < n_at_swap + 2:  # and carries on after it
            t_score.join(0.01)
        stop.set()
        t_score.join(30)
        after = _score(c, body)

    r = reload_answer["r"]
    assert r.status_code == 200, r.text
    assert r.json()["models"]["lead_quality"] == {"version": "2", "previous": "1", "changed": True}
    assert all(code == 200 for code, _ in results)
    # every response was produced by exactly one version, and names it everywhere
    assert all(len(v) == 1 and v <= {"1", "2"} for _, v in results)
    assert results[-1][1] == {"2"} and after == (200, {"2"})


def test_a_failed_load_keeps_the_old_model(app):
    app.state.model_loader = lambda: ({}, {"lead_quality": "loading failed: boom"})
    with TestClient(app) as c:
        r = c.post("/v1/admin/reload", headers={"X-API-Key": ADMIN})
        assert r.status_code == 200
        assert r.json()["problems"] == {"lead_quality": "loading failed: boom"}
        assert r.json()["models"]["lead_quality"]["version"] == "1"
        assert c.get("/readyz").json()["models"] == {"lead_quality": "1"}


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong", 401), (KEY, 403)])
def test_reload_needs_an_admin_key(app, key, status):
    with TestClient(app) as c:
        r = c.post("/v1/admin/reload", headers={"X-API-Key": key} if key else {})
    assert r.status_code == status and "key" in r.json()["detail"]


def _outcome(record_id: str, outcome: str, at: str = "2030-01-01T00:00:00Z", task: str = "lead_quality") -> dict:
    return {"record_id": record_id, "task": task, "outcome": outcome, "occurred_at": at}


def test_outcomes_are_idempotent_by_record_id(app):
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        batch = {"outcomes": [_outcome("L-1", "converted"), _outcome("L-2", "disqualified")]}
        first = c.post("/v1/outcomes", json=batch).json()
        again = c.post("/v1/outcomes", json=batch).json()
        fixed = c.post("/v1/outcomes", json={"outcomes": [_outcome("L-2", "converted")]}).json()
        perf = c.get("/v1/models/lead_quality/performance").json()
    assert first == {"received": 2, "created": 2, "updated": 0, "unchanged": 0, "results": ["accepted", "accepted"]}
    assert again == {"received": 2, "created": 0, "updated": 0, "unchanged": 2, "results": ["duplicate", "duplicate"]}
    assert fixed == {"received": 1, "created": 0, "updated": 1, "unchanged": 0, "results": ["corrected"]}
    assert perf["outcomes_stored"] == 2


def test_four_clients_posting_the_same_outcomes_at_once_all_succeed_with_one_row_each(app):
    """Select-then-insert raced the unique key (500s, whole batches rolled back); the upsert cannot."""
    batch = {"outcomes": [_outcome(f"L-{i}", "converted" if i % 3 else "disqualified") for i in range(30)]}
    codes: list[int] = []
    results: list[list[str]] = []
    start = threading.Barrier(4)

    def client() -> None:
        start.wait()
        for _ in range(10):
            r = c.post("/v1/outcomes", json=batch)
            codes.append(r.status_code)
            results.append(r.json().get("results", []))

    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stored = c.get("/v1/models/lead_quality/performance").json()["outcomes_stored"]
    assert codes == [200] * 40
    assert stored == 30
    accepted = [sum(r[i] == "accepted" for r in results) for i in range(30)]
    assert accepted == [1] * 30  # each record created exactly once; every other report a duplicate
    assert all(s in ("accepted", "duplicate") for r in results for s in r)


@pytest.mark.parametrize(
    ("outcome", "path"),
    [
        (_outcome("L-1", "won"), "outcomes[0].outcome"),
        (_outcome("L-1", "converted", task="churn"), "outcomes[0].task"),
        (_outcome("L-1", "converted", at="yesterday"), "outcomes[0].occurred_at"),
        ({"task": "lead_quality", "outcome": "converted", "occurred_at": "2030-01-01"}, "outcomes[0].record_id"),
    ],
)
def test_bad_outcomes_name_the_field(app, outcome, path):
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        r = c.post("/v1/outcomes", json={"outcomes": [outcome]})
        anon = TestClient(app).post("/v1/outcomes", json={"outcomes": [outcome]})
    assert r.status_code == 422 and path in [e["path"] for e in r.json()["errors"]]
    assert anon.status_code == 401


def test_live_performance_joins_served_scores_with_later_outcomes(app, body, sample_export):
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        scored = c.post("/v1/leads/score", json=body).json()["scores"]
        ranked = sorted(scored, key=lambda s: -s["probability"])
        # the CRM reports: the better half converted, the rest disqualified; one decided before scoring
        outcomes = [_outcome(s["lead_id"], "converted" if i < 20 else "disqualified") for i, s in enumerate(ranked)]
        outcomes[-1]["occurred_at"] = "2000-01-01T00:00:00Z"
        assert c.post("/v1/outcomes", json={"outcomes": outcomes}).status_code == 200
        perf = c.get("/v1/models/lead_quality/performance").json()
        unknown = c.get("/v1/models/nope/performance")
    assert perf["outcomes_stored"] == 40
    (v1,) = perf["versions"]
    assert v1["version"] == "1" and v1["loaded"] and v1["n"] == 39 and v1["positives"] == 20
    assert v1["roc_auc"] == pytest.approx(1.0)
    assert 0 <= v1["brier"] <= 1 and v1["calibration_error"] is not None
    assert unknown.status_code == 404


def test_monitoring_reports_drift_of_recent_traffic(app, body):
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        empty = c.get("/v1/monitoring").json()["models"][0]
        c.post("/v1/leads/score", json=body)
        (m,) = c.get("/v1/monitoring").json()["models"]
    assert empty["rows"] == 0
    assert m["version"] == "1" and m["rows"] == 40 and m["reference_rows"] > 0
    assert m["score"]["psi"] >= 0 and m["score"]["mean_recent"] is not None
    assert {"feature", "psi", "missing_change", "level"} <= set(m["features"][0])
    psis = [f["psi"] for f in m["features"]]
    assert psis == sorted(psis, reverse=True)


def test_the_served_score_log_commits_without_an_fsync_per_request(tmp_path):
    """SQLite in WAL mode with synchronous=NORMAL; two workers' stores both write and read."""
    from sqlalchemy import func, select

    from serving.store import OperationsStore, served_scores

    url = f"sqlite:///{tmp_path / 'operations.db'}"
    first, second = OperationsStore(url), OperationsStore(url)  # as two uvicorn workers
    first.record_scores("lead_quality", "1", "2025-01-01", ["L-1"], [0.25])
    second.record_scores("lead_quality", "1", "2025-01-01", ["L-2", "L-3"], [0.5, 0.75])
    with first.engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        rows = conn.execute(select(func.count()).select_from(served_scores)).scalar()
    assert (mode, sync, rows) == ("wal", 1, 3)
