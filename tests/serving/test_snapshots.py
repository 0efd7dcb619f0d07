"""The snapshot store: one transaction per snapshot, the latest good one, history, a stable paged
feed, and the trend rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from sqlalchemy import inspect

from models.worklist import trend
from serving.snapshots import BadPageToken, SnapshotStore, payload_key
from serving.store import OperationsStore

T0 = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> SnapshotStore:
    """The snapshot store on SQLite (the default) and on PostgreSQL (when `.ci/run` started a server;
    skipped otherwise), its tables dropped after each test."""
    if request.param == "sqlite":
        yield SnapshotStore(OperationsStore(f"sqlite:///{tmp_path / 'ops.db'}"))
        return
    from serving.snapshots import _meta

    store = SnapshotStore(OperationsStore(request.getfixturevalue("postgres_url")))
    try:
        yield store
    finally:
        _meta.drop_all(store.engine)
        store.engine.dispose()


def _snapshot(i: int, status: str = "ok", error: str | None = None) -> dict:
    return {"as_of": T0, "refreshed_at": T0 + timedelta(hours=i), "source": "crm", "status": status, "error": error,
            "models": {"lead_quality": str(i)}, "counts": {}, "missing": [], "bad_rows": 0}


def _scores(probabilities: dict[str, float], changed: set[str] | None = None) -> pd.DataFrame:
    ids = list(probabilities)
    return pd.DataFrame({
        "kind": "lead", "entity_id": ids, "name": None, "owner_id": "rep_1", "team": None, "model": "lead_quality",
        "version": "1", "probability": list(probabilities.values()),
        "score": [round(p * 100) for p in probabilities.values()], "grade": "B", "expected_value": 10.0,
        "reasons": [["Source is web"]] * len(ids), "trend": "steady", "previous_probability": None,
        "changed": [changed is None or i in changed for i in ids]})


def test_tables_live_in_the_operations_database_beside_served_scores(store):
    store.write(_snapshot(1))
    names = set(inspect(store.engine).get_table_names())
    assert {"snapshots", "snapshot_scores", "snapshot_payloads", "served_scores", "outcomes"} <= names
    indexes = {ix["name"] for ix in inspect(store.engine).get_indexes("snapshot_scores")}
    assert {"ix_scores_latest", "ix_scores_history", "ix_scores_feed"} <= indexes


def test_latest_good_snapshot_skips_failed_ones_and_a_failed_write_stores_nothing(store):
    assert store.latest() is None
    good = store.write(_snapshot(1), _scores({"L1": 0.2}), {payload_key("funnel", {"by": "none"}): {"x": 1}})
    store.write(_snapshot(2, "failed", "leads: missing table"))
    assert store.latest().id == good and store.latest(ok_only=False).status == "failed"
    assert store.latest(ok_only=False).error == "leads: missing table"
    assert store.payload(good, payload_key("funnel", {"by": "none"})) == {"x": 1}
    assert store.payload(good, payload_key("funnel", {"by": "team"})) is None
    broken = _scores({"L2": 0.3}).assign(probability=[None])  # NOT NULL: the whole snapshot is rolled back
    with pytest.raises(Exception):  # noqa: B017 - the database's integrity error
        store.write(_snapshot(3), broken)
    assert store.count() == 2 and store.latest().id == good


def test_history_is_oldest_first_and_only_ok_snapshots(store):
    for i, p in enumerate((0.1, 0.2, 0.3), start=1):
        store.write(_snapshot(i), _scores({"L1": p}))
    store.write(_snapshot(4, "failed", "x"))
    h = store.history("lead", "L1")
    assert [r["probability"] for r in h] == [0.1, 0.2, 0.3]
    assert [r["refreshed_at"] for r in h] == sorted(r["refreshed_at"] for r in h)
    assert store.history("lead", "L1", limit=2)[0]["probability"] == 0.2
    assert store.history("deal", "L1") == []


def test_feed_pages_are_ordered_stable_and_filtered_by_since_and_changed(store):
    store.write(_snapshot(1), _scores({f"L{i}": 0.1 for i in range(5)}))
    store.write(_snapshot(2), _scores({f"L{i}": 0.2 for i in range(5)}, changed={"L1", "L3"}))
    everything, token = store.feed(None, None, None, 100)
    assert len(everything) == 7 and token is None
    assert [r["id"] for r in everything] == sorted(r["id"] for r in everything)
    since = T0 + timedelta(hours=1, minutes=30)
    later, _ = store.feed(since, "lead", None, 100)
    assert [r["entity_id"] for r in later] == ["L1", "L3"]
    pages, token = [], None
    while True:
        rows, token = store.feed(None, None, token, 3)
        pages.append([r["id"] for r in rows])
        if token is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1] and sum(pages, []) == [r["id"] for r in everything]
    assert store.feed(None, "deal", None, 10)[0] == []
    with pytest.raises(BadPageToken, match="not-a-token"):
        store.feed(None, None, "not-a-token", 10)


@pytest.mark.parametrize(("probabilities", "expected"), [
    ([0.4], "not enough history"),
    ([], "not enough history"),
    ([0.40, 0.42, 0.46], "improving"),
    ([0.40, 0.42, 0.44], "steady"),       # +4 points: within the 5-point band
    ([0.60, 0.50, 0.54], "declining"),    # -6 points over the last 3
    ([0.10, 0.60, 0.58, 0.61], "steady"),  # only the latest 3 count
])
def test_trend_rule(probabilities, expected):
    assert trend(probabilities, points=3, threshold_points=5.0) == expected


def test_missing_strings_and_floats_are_stored_as_null_on_every_backend(store):
    """pandas holds a missing grade, name or previous probability as NaN; PostgreSQL would store the
    text 'NaN' and the float NaN (SQLite stores NULL), and a refresh then took the unchanged entity
    for a changed one."""
    scores = _scores({"L1": 0.2, "L2": 0.3}).assign(
        grade=pd.Series(["B", None], dtype="str"), name=pd.Series([None, "Acme"], dtype="str"),
        previous_probability=[0.1, float("nan")])
    assert pd.isna(scores["grade"].iloc[1]) and isinstance(scores["grade"].iloc[1], float)  # NaN, not None
    sid = store.write(_snapshot(1), scores)
    with store.engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT entity_id, grade, name, previous_probability FROM snapshot_scores "
                                 "WHERE snapshot_id = :s ORDER BY entity_id"), {"s": sid}).all()
    assert [tuple(r) for r in rows] == [("L1", "B", None, 0.1), ("L2", None, "Acme", None)]
    before = store.previous(["lead"], 1)
    assert before.set_index("entity_id")["grade"].isna().tolist() == [False, True]
