"""The score feed, one entity's history with its trend, and ``funnelcast export-scores`` for
Salesforce and HubSpot."""

from __future__ import annotations

import argparse
import csv
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from features.errors import FunnelcastError
from features.settings import Settings
from models.registry import LoadedModel
from serving.app import create_app
from serving.cli import CRM_FIELDS, _cmd_export_scores, export_scores

KEY, ADMIN = "test-key", "admin-key"


@pytest.fixture(scope="module")
def settings(sample_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("feed")
    return Settings(home=home, api_keys=[KEY], admin_api_keys=[ADMIN], data=str(sample_dir / "export"),
                    tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


@pytest.fixture(scope="module")
def client(lead_scorer, settings):
    models = {"lead_quality": LoadedModel("lead_quality", "3", "champion", None, lead_scorer)}
    with TestClient(create_app(settings, preloaded=models), headers={"X-API-Key": KEY}) as c:
        first = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN}).json()
        c.between = datetime.now(UTC)
        second = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN}).json()
        c.snapshots = (first, second)
        yield c


def test_feed_has_every_score_once_then_only_what_changed(client):
    first, second = client.snapshots
    everything = client.get("/v1/scores", params={"limit": 5000}).json()
    assert [s["snapshot_id"] for s in everything["scores"]] == [first["snapshot_id"]] * first["counts"]["lead"]
    # the same export scored again by the same model: nothing appeared or changed
    assert client.get("/v1/scores", params={"since": client.between.isoformat()}).json() == {
        "scores": [], "next_page_token": None}
    page = client.get("/v1/scores", params={"limit": 7}).json()
    rest = client.get("/v1/scores", params={"limit": 5000, "page_token": page["next_page_token"]}).json()
    assert [s["id"] for s in page["scores"] + rest["scores"]] == [s["id"] for s in everything["scores"]]
    s = everything["scores"][0]
    assert s["model"] == "lead_quality" and s["model_version"] == "3" and s["kind"] == "lead" and s["reasons"]


def test_feed_errors_are_422_naming_the_parameter(client):
    r = client.get("/v1/scores", params={"page_token": "garbage"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "page_token"
    r = client.get("/v1/scores", params={"kind": "contact"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "kind"
    assert client.get("/v1/scores", params={"since": "yesterday"}).status_code == 422
    assert TestClient(client.app).get("/v1/scores").status_code == 401


def test_history_has_a_point_per_snapshot_and_the_worklist_shows_the_same_trend(client):
    w = client.get("/v1/worklist", params={"limit": 5}).json()
    item = w["items"][0]
    h = client.get(f"/v1/scores/lead/{item['id']}/history").json()
    assert h["kind"] == "lead" and h["id"] == item["id"] and len(h["points"]) == 2
    assert [p["snapshot_id"] for p in h["points"]] == [s["snapshot_id"] for s in client.snapshots]
    assert h["points"][-1]["probability"] == pytest.approx(item["score"])
    assert h["trend"] == item["trend"] == "steady" and item["previous_score"] == pytest.approx(item["score"])
    assert {"as_of", "refreshed_at", "probability", "score", "expected_value", "model_version"} <= set(h["points"][0])
    assert client.get("/v1/scores/lead/no-such-lead/history").status_code == 404
    assert client.get("/v1/scores/contact/x/history").status_code == 422


@pytest.mark.parametrize("mapping", ["salesforce", "hubspot"])
def test_export_scores_writes_the_crm_field_names_with_rounded_numbers(client, settings, tmp_path, mapping, capsys):
    out = tmp_path / f"{mapping}.csv"
    assert _cmd_export_scores(argparse.Namespace(mapping=mapping, kind="lead", out=str(out)), settings) == 0
    assert str(out) in capsys.readouterr().out
    with out.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    fields = CRM_FIELDS[mapping]
    assert list(rows[0]) == list(fields.values())
    assert len(rows) == client.snapshots[1]["counts"]["lead"]
    feed = {s["id"]: s for s in client.get("/v1/scores", params={"limit": 5000}).json()["scores"]}
    row = rows[0]
    lead = feed[row[fields["id"]]]
    assert int(row[fields["score"]]) == lead["score"] and row[fields["grade"]] == lead["grade"]
    assert row[fields["probability"]] == f"{lead['probability']:.3f}"
    assert row[fields["model_version"]] == "lead_quality/3" and row[fields["owner_id"]] == (lead["owner_id"] or "")
    assert row[fields["reasons"]].split(" | ") == lead["reasons"]


def test_export_scores_without_a_snapshot_names_the_command(tmp_path):
    empty = Settings(home=tmp_path, store_url=f"sqlite:///{tmp_path / 'ops.db'}")
    with pytest.raises(FunnelcastError, match="funnelcast refresh"):
        export_scores(empty, "salesforce", "lead", tmp_path / "x.csv")
