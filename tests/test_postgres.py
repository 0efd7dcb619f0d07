"""funnelcast on a real PostgreSQL server: the CRM export, the operations store, MLflow's tracking and registry.

Each module gets a fresh database from the ``postgres_url`` fixture (tests/conftest.py); without
``FUNNELCAST_TEST_POSTGRES_URL`` (``.ci/run`` sets it) these tests skip and say why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.contract import TABLES

KEY = "pg-key"


@pytest.fixture(autouse=True)
def _no_leaking_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: put it back after each test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_a_crm_export_in_postgresql_reads_as_the_same_export_as_its_csv_folder(sample_dir, postgres_url):
    import sqlalchemy as sa

    from features.io import load_export

    folder = sample_dir / "export"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:  # the CRM's tables as a database holds them: loaded from its CSV export as text
        for name in TABLES:
            if (folder / f"{name}.csv").exists():
                pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False).replace("", None).to_sql(
                    name, conn, index=False)
    engine.dispose()
    from_sql, report_sql = load_export(postgres_url)
    from_csv, report_csv = load_export(folder)
    assert not report_sql and not report_csv
    assert from_sql.exported_at == from_csv.exported_at
    for name in TABLES:
        a, b = from_sql.table(name), from_csv.table(name)
        assert (a is None) == (b is None), name
        if a is not None:
            pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_like=True,
                                          obj=name)


def test_typed_tables_written_by_funnelcast_read_back_unchanged(sample_export, postgres_url):
    import sqlalchemy as sa

    from features.io import load_export, write_export

    url = postgres_url
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # write_export replaces the tables: start from the text ones above or none
        for name in TABLES:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()
    write_export(sample_export, url)
    back, report = load_export(url)
    assert not report
    keys = {"leads": ["lead_id"], "opportunities": ["opportunity_id"],
            "stage_history": ["opportunity_id", "entered_at", "stage"]}
    for name, key in keys.items():  # the database returns the rows in its own order
        a, b = (t.table(name).sort_values(key).reset_index(drop=True) for t in (back, sample_export))
        pd.testing.assert_frame_equal(a, b, check_like=True, obj=name)


def test_operations_and_outcomes_live_in_postgresql_and_concurrent_reports_never_fail(postgres_url, race_outcomes):
    from serving.store import OperationsStore

    errors, results, rows = race_outcomes(postgres_url)
    assert errors == [] and len(results) == 20 and rows == 50
    assert [sum(r[i] == "accepted" for r in results) for i in range(50)] == [1] * 50

    store = OperationsStore(postgres_url)
    store.record_scores("lead_quality", "3", "2029-06-01T00:00:00Z", ["L-1", "L-2", "L-x"], [0.9, 0.2, 0.5])
    fixed = store.upsert_outcomes([{"task": "lead_quality", "record_id": "L-2", "outcome": "converted",
                                    "occurred_at": "2030-01-01T00:00:00Z"},
                                   {"task": "lead_quality", "record_id": "L-1", "outcome": "converted",
                                    "occurred_at": "2030-01-01T00:00:00Z"}])
    assert fixed.statuses == ["corrected", "duplicate"]
    decided = store.scored_then_decided("lead_quality").sort_values("record_id")
    assert decided["record_id"].tolist() == ["L-1", "L-2"] and decided["label"].tolist() == [1, 1]
    store.engine.dispose()


def test_mlflow_tracking_and_registry_on_postgresql_serve_the_champion(trained, train_config, postgres_url,
                                                                       sample_export, tmp_path):
    from features.pit import open_leads
    from features.settings import Settings
    from models.registry import configure, load_scorer
    from serving.app import create_app
    from serving.records import export_items
    from training.pipeline import log_and_register

    client = configure(postgres_url)
    result = log_and_register(trained, client, experiment="funnelcast-pg", artifact_location=(tmp_path / "art").as_uri(),
                              cfg=train_config, data_source="generated sample")
    assert result.version == "1" and "champion" in result.aliases
    loaded = load_scorer(client, "lead_quality", "champion")
    X = trained.snapshots[trained.scorer.feature_names].head(50)
    np.testing.assert_allclose(loaded.scorer.predict_proba(X), trained.scorer.predict_proba(X))

    settings = Settings(home=tmp_path / "home", tracking_uri=postgres_url, store_url=postgres_url, api_keys=[KEY],
                        reload_poll_seconds=0)
    from serving.store import OperationsStore

    before = OperationsStore(postgres_url).outcome_count("lead_quality")  # the module's database is shared
    as_of = sample_export.exported_at
    leads = open_leads(sample_export.leads, as_of).head(5)
    body = {"as_of": as_of.isoformat(), "leads": export_items(leads, sample_export.accounts, sample_export.activities,
                                                                as_of)}
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        ready = c.get("/readyz")
        scored = c.post("/v1/leads/score", json=body)
        outcome = {"record_id": str(leads["lead_id"].iloc[0]), "task": "lead_quality", "outcome": "converted",
                   "occurred_at": "2031-01-01T00:00:00Z"}
        reported = c.post("/v1/outcomes", json={"outcomes": [outcome]})
        perf = c.get("/v1/models/lead_quality/performance")
    assert ready.status_code == 200 and ready.json()["models"]["lead_quality"] == "1"
    assert scored.status_code == 200 and len(scored.json()["scores"]) == 5
    assert reported.json()["results"] == ["accepted"]
    assert perf.json()["outcomes_stored"] == before + 1
    assert {v["version"]: v["n"] for v in perf.json()["versions"]}["1"] == 1  # scored by v1, then decided
    assert not (tmp_path / "home" / "mlflow.db").exists()  # nothing fell back to SQLite
