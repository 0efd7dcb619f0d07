"""The served-score log off the request path: queued, written in batches, nothing acknowledged lost."""

from __future__ import annotations

import threading

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from features.pit import open_leads
from features.settings import Settings
from models.registry import LoadedModel
from serving.app import create_app
from serving.records import export_items
from serving.store import OperationsStore, _ScoreWriter, served_scores

KEY = "log-key"


def _rows(store: OperationsStore) -> list[tuple]:
    with store.engine.connect() as conn:
        q = select(served_scores.c.record_id, served_scores.c.model_version, served_scores.c.probability)
        return sorted(tuple(r) for r in conn.execute(q))


def test_queued_scores_from_many_threads_are_all_written_once(tmp_path):
    store = OperationsStore(f"sqlite:///{tmp_path / 'ops.db'}")
    expected = []

    def serve(t: int) -> None:
        for i in range(50):
            store.log_scores("lead_quality", "2", "2026-01-01", [f"L-{t}-{i}"], [i / 100])

    for t in range(4):
        expected += [(f"L-{t}-{i}", "2", i / 100) for i in range(50)]
    threads = [threading.Thread(target=serve, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.flush_scores(timeout=30)
    assert _rows(store) == sorted(expected)


def test_reading_served_scores_waits_for_the_queue(tmp_path):
    store = OperationsStore(f"sqlite:///{tmp_path / 'ops.db'}")
    store.upsert_outcomes([{"task": "lead_quality", "record_id": "L-1", "outcome": "converted",
                            "occurred_at": "2026-03-01T00:00:00Z"}])
    store.log_scores("lead_quality", "1", "2026-01-01T00:00:00Z", ["L-1"], [0.4])
    decided = store.scored_then_decided("lead_quality")  # no explicit flush: the read does it
    assert decided["record_id"].tolist() == ["L-1"] and decided["probability"].tolist() == [0.4]


def test_a_failed_insert_is_retried_and_a_full_queue_writes_in_the_caller():
    written, calls = [], []
    lock = threading.Lock()

    def flaky(rows):
        with lock:
            calls.append(threading.current_thread().name)
            if len(calls) <= 2:
                raise RuntimeError("database is locked")
            written.extend(rows)

    writer = _ScoreWriter(flaky, retries=5)
    writer.put([{"record_id": "L-1"}])
    assert writer.flush(timeout=30)
    assert written == [{"record_id": "L-1"}] and calls.count("funnelcast-score-log") == 3

    full = _ScoreWriter(flaky, max_queued=0)
    full.put([{"record_id": "L-2"}])  # nothing queued: written before put returns, in this thread
    assert written[-1] == {"record_id": "L-2"} and calls[-1] == threading.current_thread().name


def test_the_app_writes_every_served_score_before_it_shuts_down(lead_scorer, sample_export, tmp_path):
    settings = Settings(home=tmp_path, api_keys=[KEY], tracking_uri=f"sqlite:///{tmp_path / 'none.db'}",
                        rate_limit_per_minute=0)
    model = LoadedModel(name="lead_quality", version="7", alias="champion", run_id=None, scorer=lead_scorer)
    app = create_app(settings, preloaded={"lead_quality": model})
    as_of = sample_export.exported_at
    leads = open_leads(sample_export.leads, as_of).head(30)
    items = export_items(leads, sample_export.accounts, sample_export.activities, as_of)
    served = []
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        for item in items:
            r = c.post("/v1/leads/score", json={"as_of": as_of.isoformat(), "leads": [item]})
            assert r.status_code == 200
            served += [(s["lead_id"], "7", s["probability"]) for s in r.json()["scores"]]
    # the lifespan's end flushed the queue: a new store on the same database reads them all
    store = OperationsStore(settings.resolved_store_url())
    assert _rows(store) == sorted(served)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(served_scores)).scalar() == len(items)
