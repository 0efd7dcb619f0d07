"""A CRM export that shrank since training on the same source is refused loudly: the refresh fails and
the last good snapshot stays served, answers computed on it are 503s, /readyz says shrunken with the
figures and the log has an error line; an export of another source is not compared."""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.profile import shrinkage, source_key
from features.settings import Settings
from models.registry import configure, load_scorer
from serving.app import create_app
from training.pipeline import log_and_register

KEY, ADMIN = "export-key", "export-admin"


@pytest.fixture()
def crm(tmp_path, sample_dir, trained, train_config):
    """A copy of the sample export, and the lead model trained on it, logged and loaded back."""
    folder = tmp_path / "crm"
    shutil.copytree(sample_dir / "export", folder)
    client = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    own = dataclasses.replace(trained, scorer=copy.deepcopy(trained.scorer))  # logging records the source on it
    log_and_register(own, client, experiment="shrunk", artifact_location=(tmp_path / "a").as_uri(),
                     cfg=train_config, data_source=str(folder))
    return folder, load_scorer(client, "lead_quality")


def _truncate(folder, table: str, share: float) -> int:
    frame = pd.read_csv(folder / f"{table}.csv", dtype=str, keep_default_na=False)
    kept = int(len(frame) * share)
    frame.head(kept).to_csv(folder / f"{table}.csv", index=False)  # a sync cut short
    return len(frame)


def test_the_training_records_the_export_and_its_source(crm, sample_export):
    folder, model = crm
    profile = model.scorer.metadata["export_profile"]
    assert profile["source"] == source_key(str(folder))
    assert profile["rows"]["leads"] == len(sample_export.leads)
    assert pd.Timestamp(profile["latest_at"]) == sample_export.exported_at


def test_shrinkage_names_tables_under_the_share_and_older_events():
    then = {"rows": {"leads": 1000, "accounts": 100}, "latest_at": "2026-03-01T00:00:00+00:00"}
    assert shrinkage({"rows": {"leads": 800, "accounts": 100}, "latest_at": then["latest_at"]}, then, 0.8) == []
    short = shrinkage({"rows": {"leads": 799, "accounts": 100}, "latest_at": "2026-02-01T00:00:00+00:00"}, then, 0.8)
    assert short == ["leads: 799 rows, 1,000 at training (80%)",
                     "newest event 2026-02-01T00:00:00+00:00, 2026-03-01T00:00:00+00:00 at training"]
    assert shrinkage({"rows": {}}, then, 0) == []  # off


def test_an_export_truncated_to_60_percent_is_refused_and_the_last_good_snapshot_stays(crm, tmp_path):
    folder, model = crm
    home = tmp_path / "home"
    settings = Settings(home=home, api_keys=[KEY], admin_api_keys=[ADMIN], data=str(folder),
                        tracking_uri=f"sqlite:///{home / 'x.db'}")
    logged: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("funnelcast").addHandler(handler)
    try:
        with TestClient(create_app(settings, preloaded={"lead_quality": model}), headers={"X-API-Key": KEY}) as c:
            good = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN}).json()
            assert good["status"] == "ok", good
            before = c.get("/v1/worklist").json()
            rows = _truncate(folder, "leads", 0.6)
            refused = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN})  # the data's problem: 422
            after = c.get("/v1/worklist")
            data = c.get("/readyz").json()["data"]
    finally:
        logging.getLogger("funnelcast").removeHandler(handler)
    assert refused.status_code == 422 and "shrank" in refused.json()["detail"], refused.text
    assert f"leads: {int(rows * 0.6):,} rows, {rows:,} at training (60%)" in refused.json()["detail"]
    assert after.status_code == 200 and after.json()["snapshot_id"] == before["snapshot_id"]  # the last good one
    assert after.json()["items"] == before["items"]
    assert data["state"] == "shrunken" and f"{rows:,} at training" in data["reason"]
    assert str(folder) not in data["reason"] and str(tmp_path) not in refused.text  # no server paths to clients
    assert any("refusing the CRM export" in m and "leads:" in m for m in logged)  # the operator's log line


def test_a_funnel_computed_on_a_shrunken_export_is_a_503_naming_the_figures(crm, tmp_path):
    folder, model = crm
    rows = _truncate(folder, "leads", 0.6)
    home = tmp_path / "home"
    settings = Settings(home=home, api_keys=[KEY], data=str(folder), tracking_uri=f"sqlite:///{home / 'x.db'}")
    with TestClient(create_app(settings, preloaded={"lead_quality": model}), headers={"X-API-Key": KEY}) as c:
        funnel = c.get("/v1/funnel", params={"as_of": "2026-01-01T00:00:00Z"})  # computed on the export, not stored
        data = c.get("/readyz").json()["data"]
    assert funnel.status_code == 503 and f"{rows:,} at training" in funnel.json()["detail"], funnel.text
    assert data["state"] == "shrunken"


def test_a_model_of_another_source_is_not_compared(crm, tmp_path, sample_dir):
    _, model = crm
    home = tmp_path / "home"
    small = tmp_path / "other-crm"
    shutil.copytree(sample_dir / "export", small)
    _truncate(small, "leads", 0.5)  # smaller, but a different source than the model was trained on
    settings = Settings(home=home, api_keys=[KEY], data=str(small), tracking_uri=f"sqlite:///{home / 'x.db'}")
    with TestClient(create_app(settings, preloaded={"lead_quality": model}), headers={"X-API-Key": KEY}) as c:
        assert c.get("/v1/funnel", params={"as_of": "2026-01-01T00:00:00Z"}).status_code == 200


def test_the_share_can_be_turned_off(crm, tmp_path):
    folder, model = crm
    _truncate(folder, "leads", 0.6)
    home = tmp_path / "home"
    settings = Settings(home=home, api_keys=[KEY], data=str(folder), tracking_uri=f"sqlite:///{home / 'x.db'}",
                        min_export_share=0)
    with TestClient(create_app(settings, preloaded={"lead_quality": model}), headers={"X-API-Key": KEY}) as c:
        assert c.get("/v1/funnel", params={"as_of": "2026-01-01T00:00:00Z"}).status_code == 200
