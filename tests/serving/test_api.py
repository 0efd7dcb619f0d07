"""The API: auth, scoring with reasons, served == batch, every error path a CRM can hit."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from unittest.mock import patch

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.contract import TABLES
from features.io import coerce_table
from features.pit import open_leads
from features.settings import Settings
from models.registry import LoadedModel
from models.tasks import Task
from serving.app import create_app
from serving.deps import model_dependency
from serving.records import export_items
from serving.routes_leads import lead_export
from serving.schemas.leads import LeadScoreRequest
from training.score import score_open_leads

KEY = "test-key"


@pytest.fixture(scope="module")
def client(lead_scorer, tmp_path_factory):
    """The app with a test key and the session's scorer swapped in for the registry."""
    home = tmp_path_factory.mktemp("api")
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=f"sqlite:///{home / 'empty.db'}")
    app = create_app(settings)
    loaded = LoadedModel(name="lead_quality", version="7", alias="champion", run_id=None, scorer=lead_scorer)
    app.dependency_overrides[model_dependency(Task.LEAD_QUALITY)] = lambda: loaded
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        c.app.state.models["lead_quality"] = loaded
        yield c


@pytest.fixture(scope="module")
def open_at_export(sample_export):
    as_of = sample_export.exported_at
    return as_of, open_leads(sample_export.leads, as_of)


def _body(sample_export, leads, as_of) -> dict:
    items = export_items(leads, sample_export.accounts, sample_export.activities, as_of)
    return {"as_of": as_of.isoformat(), "leads": items}


def test_health_and_docs_need_no_key(client):
    anon = TestClient(client.app)
    assert anon.get("/healthz").json() == {"status": "ok"}
    docs = anon.get("/docs")
    assert docs.status_code == 200 and "http" not in docs.text  # no CDN: every asset is served by the API
    assert "/docs-static/swagger-ui-bundle.js" in docs.text and "/openapi.json" in docs.text
    js = anon.get("/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and "isOAS31" in js.text  # Swagger UI 5: renders FastAPI's OpenAPI 3.1
    assert anon.get("/docs-static/swagger-ui.css").status_code == 200
    schema = anon.get("/openapi.json").json()
    assert "/v1/leads/score" in schema["paths"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}])
def test_scoring_without_a_valid_key_is_401(client, headers, sample_export, open_at_export):
    as_of, leads = open_at_export
    r = TestClient(client.app).post("/v1/leads/score", json=_body(sample_export, leads.head(1), as_of), headers=headers)
    assert r.status_code == 401
    assert "API key" in r.json()["detail"]


def test_no_configured_key_refuses_with_a_hint(lead_scorer, tmp_path):
    app = create_app(Settings(home=tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'x.db'}"))
    with TestClient(app) as c:
        r = c.get("/v1/models", headers={"X-API-Key": "anything"})
    assert r.status_code == 401 and "FUNNELCAST_API_KEY_HASHES" in r.json()["detail"]


def test_scores_come_with_reasons_that_add_up(client, sample_export, open_at_export):
    as_of, leads = open_at_export
    r = client.post("/v1/leads/score", json=_body(sample_export, leads.head(5), as_of))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "lead_quality", "version": "7"}
    assert len(body["scores"]) == 5
    for s in body["scores"]:
        assert s["model"]["version"] == "7"
        assert len(s["reasons"]) == 5
        assert all("the probability by" in x["text"] for x in s["reasons"])
        assert 0 <= s["score"] <= 100 and s["grade"] in "ABCD"



def test_served_reasons_are_the_top_of_contributions_that_add_up(client, lead_scorer, sample_export, open_at_export):
    """The 5 reasons served are the largest of all contributions, and base + all = probability."""
    as_of, leads = open_at_export
    body = _body(sample_export, leads.head(5), as_of)
    served = client.post("/v1/leads/score", json=body).json()["scores"]
    request = LeadScoreRequest.model_validate(body)
    frames = lead_export(request.leads, lead_scorer.spec, Settings().open_stages, pd.Timestamp(as_of))
    every = len(lead_scorer.classifier.feature_names_)
    full = lead_scorer.score(frames.leads, frames.accounts, frames.activities, as_of, n_reasons=every)
    for s, (_, f) in zip(served, full.iterrows(), strict=True):
        assert s["lead_id"] == f["lead_id"]
        total = f["base_probability"] + sum(r["contribution"] for r in f["reasons"])
        assert total == pytest.approx(s["probability"], abs=1e-9)
        assert [r["feature"] for r in s["reasons"]] == [r["feature"] for r in f["reasons"][:5]]
        assert [r["contribution"] for r in s["reasons"]] == pytest.approx([r["contribution"] for r in f["reasons"][:5]])


def test_served_score_equals_the_batch_score(client, sample_export, lead_scorer, open_at_export):
    as_of, leads = open_at_export
    batch = score_open_leads(sample_export, lead_scorer, as_of).set_index("lead_id")
    sample = leads.sample(n=min(25, len(leads)), random_state=1)
    r = client.post("/v1/leads/score", json=_body(sample_export, sample, as_of))
    assert r.status_code == 200, r.text
    for s in r.json()["scores"]:
        b = batch.loc[s["lead_id"]]
        assert s["probability"] == pytest.approx(b["probability"], abs=1e-9)
        assert s["score"] == b["score"] and s["grade"] == b["grade"]
        assert s["expected_value"] == pytest.approx(b["expected_value"], rel=1e-9)
        assert s["reasons"][0]["text"] == b["reason_1"]


def test_messy_values_are_normalised_like_the_loader(client, sample_export, open_at_export):
    as_of, leads = open_at_export
    body = _body(sample_export, leads.head(1), as_of)
    clean = client.post("/v1/leads/score", json=body).json()["scores"][0]
    lead = body["leads"][0]["lead"]
    if "source" in lead:
        lead["source"] = f"  {lead['source'].upper()} "
    lead["created_at"] = pd.Timestamp(lead["created_at"]).tz_convert("Europe/Berlin").isoformat()
    messy = client.post("/v1/leads/score", json=body).json()["scores"][0]
    assert messy["probability"] == pytest.approx(clean["probability"], abs=1e-12)



def _via_coerce_table(table, records, *, open_stages, custom_kinds):
    """How the API typed records before coerce_records: one frame of ISO text through coerce_table."""
    if not records:
        frame = pd.DataFrame(columns=TABLES[table].column_names)
    else:
        frame = pd.DataFrame([{k: v.isoformat() if isinstance(v, datetime) else v for k, v in r.items()} for r in records])
    kinds = {c: k for c, k in custom_kinds.items() if c in frame.columns}
    return coerce_table(table, frame, open_stages=open_stages, row_offset=0, custom_kinds=kinds)


def _messy(rng: np.random.Generator, item: dict) -> dict:
    """The same lead as a different CRM might send it: case, spaces, offsets, dropped optional fields."""
    def text(v):
        v = [str.upper, str.lower, str.title, str][rng.integers(4)](v)
        return " " * rng.integers(3) + v + "\t" * rng.integers(2)

    def moment(v):
        offset = pd.Timedelta(minutes=int(rng.integers(-14 * 60, 14 * 60)))
        return pd.Timestamp(v).tz_convert(timezone(offset.to_pytimedelta())).isoformat()

    out = {}
    for part, value in item.items():
        records = value if isinstance(value, list) else [value]
        messed = []
        for rec in records:
            rec = dict(rec)
            for k, v in list(rec.items()):
                if k.endswith("_at"):
                    rec[k] = moment(v)
                elif isinstance(v, str) and not k.endswith("_id"):
                    rec[k] = text(v) if k == "type" or rng.random() < 0.8 else "  "
                elif isinstance(v, float) and v.is_integer() and rng.random() < 0.5:
                    rec[k] = int(v)
                if k not in ("lead_id", "account_id", "activity_id", "created_at", "occurred_at", "type") and rng.random() < 0.2:
                    del rec[k]
            messed.append(rec)
        out[part] = messed if isinstance(value, list) else messed[0]
    return out


@pytest.mark.parametrize("seed", range(6))
def test_request_frames_equal_the_export_loaders_on_messy_records(seed, sample_export, lead_scorer, open_at_export):
    """online == batch at the source: the typed frames of a messy request equal coerce_table's."""
    as_of, leads = open_at_export
    rng = np.random.default_rng(seed)
    picked = leads.iloc[rng.choice(len(leads), size=8, replace=False)]
    body = _body(sample_export, picked, as_of)
    body["leads"] = [_messy(rng, it) for it in body["leads"]]
    accounts: dict[str, dict] = {}  # leads of one account send the same account record
    for it in body["leads"]:
        if "account" in it:
            it["account"] = accounts.setdefault(it["account"]["account_id"], it["account"])
    request = LeadScoreRequest.model_validate(body)
    stages = Settings().open_stages

    with patch("features.io.coerce_table", side_effect=AssertionError("a valid request needs no coerce_table")):
        fast = lead_export(request.leads, lead_scorer.spec, stages, as_of)
    with patch("serving.records.coerce_records", _via_coerce_table):
        slow = lead_export(request.leads, lead_scorer.spec, stages, as_of)

    for table in ("leads", "accounts", "activities"):
        pd.testing.assert_frame_equal(getattr(fast, table), getattr(slow, table))

def test_missing_optional_fields_and_unseen_categories_are_scored_with_warnings(client, open_at_export):
    as_of, _ = open_at_export
    body = {
        "as_of": as_of.isoformat(),
        "leads": [
            {"lead": {"lead_id": "new-1", "created_at": (as_of - pd.Timedelta(days=3)).isoformat(), "source": "tiktok"}},
            {"lead": {"lead_id": "new-2", "created_at": (as_of - pd.Timedelta(days=30)).isoformat()}, "activities": []},
        ],
    }
    r = client.post("/v1/leads/score", json=body)
    assert r.status_code == 200, r.text
    first, second = r.json()["scores"]
    assert any("tiktok" in w and "not seen in training" in w for w in first["warnings"])
    assert any("seniority is missing" in w for w in second["warnings"])
    assert 0 < first["probability"] < 1


def _post(client, body):
    return client.post("/v1/leads/score", json=body)


def test_bad_timestamp_is_422_naming_the_field(client, open_at_export):
    as_of, _ = open_at_export
    r = _post(client, {"as_of": as_of.isoformat(), "leads": [{"lead": {"lead_id": "a", "created_at": "yesterday"}}]})
    assert r.status_code == 422
    paths = [e["path"] for e in r.json()["errors"]]
    assert paths == ["leads[0].lead.created_at"]


def test_missing_lead_id_is_422_naming_the_field(client):
    r = _post(client, {"leads": [{"lead": {"created_at": "2026-01-01"}}]})
    assert r.status_code == 422
    assert r.json()["errors"][0] == {"path": "leads[0].lead.lead_id", "reason": "required field missing"}


def test_lead_created_after_as_of_is_422(client, open_at_export):
    as_of, _ = open_at_export
    body = {"as_of": as_of.isoformat(), "leads": [{"lead": {"lead_id": "late", "created_at": (as_of + pd.Timedelta(days=1)).isoformat()}}]}
    r = _post(client, body)
    assert r.status_code == 422
    assert [e["path"] for e in r.json()["errors"]] == ["leads[0].lead.created_at"]


def test_as_of_before_the_training_cutoff_is_422(client, open_at_export):
    as_of, _ = open_at_export
    early = as_of - pd.Timedelta(days=400)
    body = {"as_of": early.isoformat(), "leads": [{"lead": {"lead_id": "x", "created_at": (early - pd.Timedelta(days=2)).isoformat()}}]}
    r = _post(client, body)
    assert r.status_code == 422 and "training cutoff" in r.json()["detail"]


def test_duplicate_ids_in_a_batch_are_422(client):
    lead = {"lead_id": "dup", "created_at": "2026-09-01"}
    r = _post(client, {"as_of": "2026-10-01", "leads": [{"lead": lead}, {"lead": lead}]})
    assert r.status_code == 422
    assert [e["path"] for e in r.json()["errors"]] == ["leads[0].lead.lead_id", "leads[1].lead.lead_id"]


def test_activity_of_another_lead_is_422(client):
    item = {
        "lead": {"lead_id": "a", "created_at": "2026-09-01"},
        "activities": [{"activity_id": "1", "occurred_at": "2026-09-02", "type": "email", "lead_id": "b"}],
    }
    r = _post(client, {"as_of": "2026-10-01", "leads": [item]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "leads[0].activities[0].lead_id"


def test_negative_employees_is_422(client):
    item = {"lead": {"lead_id": "a", "created_at": "2026-09-01", "account_id": "acc"},
            "account": {"account_id": "acc", "created_at": "2025-01-01", "employees": -5}}
    r = _post(client, {"as_of": "2026-10-01", "leads": [item]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "leads[0].account.employees"


def test_every_bad_value_of_every_table_is_named_in_one_422(client):
    item = {"lead": {"lead_id": "a", "created_at": "2026-09-01", "account_id": "acc", "budget_k": "lots"},
            "account": {"account_id": "acc", "created_at": "2025-01-01", "employees": 5},
            "activities": [{"activity_id": "1", "occurred_at": "2026-09-02", "type": "   "}]}
    second = {"lead": {"lead_id": "b", "created_at": "2026-09-03", "account_id": "acc"},
              "account": {**item["account"], "employees": 6}}
    r = _post(client, {"as_of": "2026-10-01", "leads": [item, second]})
    assert r.status_code == 422 and r.json()["errors"] == [
        {"path": "leads[1].account", "reason": "differs from leads[0].account for the same account_id 'acc'"}]
    r = _post(client, {"as_of": "2026-10-01", "leads": [item]})
    assert r.status_code == 422
    paths = sorted(e["path"] for e in r.json()["errors"])
    assert paths == ["leads[0].activities[0].type", "leads[0].lead.budget_k"]


def test_batch_over_the_limit_is_refused_with_a_clear_message(client):
    leads = [{"lead": {"lead_id": f"l{i}", "created_at": "2026-09-01"}} for i in range(1001)]
    r = _post(client, {"as_of": "2026-10-01", "leads": leads})
    assert r.status_code == 413
    assert "exceeds the limit of 1,000" in r.json()["detail"]


@pytest.mark.parametrize(
    ("content", "ctype"),
    [("{not json", "application/json"), ("leads=1", "application/x-www-form-urlencoded"), ("[]", "application/json"),
     (json.dumps({"leads": []}), "application/json")],
)
def test_malformed_bodies_are_4xx_never_500(client, content, ctype):
    r = client.post("/v1/leads/score", content=content, headers={"Content-Type": ctype})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"]


def test_without_a_model_readyz_is_503_and_scoring_says_why(tmp_path):
    settings = Settings(home=tmp_path, api_keys=[KEY], tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}")
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        s = c.post("/v1/leads/score", json={"leads": [{"lead": {"lead_id": "a", "created_at": "2026-01-01"}}]})
        assert s.status_code == 503
        assert "funnelcast train" in s.json()["detail"]


def test_app_loads_the_champion_from_the_registry(mlflow_store, sample_export, open_at_export):
    settings = Settings(home=mlflow_store["home"], api_keys=[KEY], tracking_uri=mlflow_store["uri"])
    as_of, leads = open_at_export
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        ready = c.get("/readyz").json()
        assert {k: ready[k] for k in ("ready", "models", "reason")} == {
            "ready": True, "models": {"lead_quality": mlflow_store["version"]}, "reason": None}
        assert ready["tasks"]["lead_quality"] == {"state": "loaded", "version": mlflow_store["version"], "reason": None}
        assert ready["tasks"]["stage_conversion"]["state"] == "not_registered"
        assert ready["snapshot"]["status"] == "none"  # no refresh yet
        r = c.post("/v1/leads/score", json=_body(sample_export, leads.head(2), as_of))
        assert r.status_code == 200 and r.json()["model"]["version"] == mlflow_store["version"]
        models = c.get("/v1/models").json()["models"]
        assert "champion" in models[0]["aliases"] and models[0]["loaded"] is True
        assert models[0]["metrics"]["eval_roc_auc"] > 0.6
        assert np.isfinite(models[0]["metrics"]["eval_brier"])
        # beside the figures: the naive-Bayes baseline's on the same window, and the floor's outcome
        baselines = models[0]["baselines"]
        nb = baselines["naive_bayes"]
        assert nb["roc_auc"] == models[0]["metrics"]["baseline_naive_bayes_roc_auc"] and "brier" in nb
        assert "logistic" in baselines
        floor = models[0]["floor"]
        assert floor["passed"] is True and floor["model"] == models[0]["metrics"]["eval_roc_auc"]
        assert floor["baseline"] == max(b["roc_auc"] for b in baselines.values()) and floor["allowance"] > 0


def test_models_lists_baselines_beside_a_deal_models_figures(tmp_path, monkeypatch, empty_store):
    """Baseline names with underscores and metrics that end alike (win_roc_auc, win_h_roc_auc) parse apart."""
    metrics = {"eval_win_roc_auc": 0.70, "eval_win_h_roc_auc": 0.74, "baseline_stage_win_roc_auc": 0.66,
               "baseline_stage_win_h_roc_auc": 0.64, "baseline_logistic_regression_win_roc_auc": 0.79,
               "floor_model": 0.70, "floor_baseline": 0.79, "floor_allowance": 0.04, "floor_passed": 0.0}

    def versions(client, name):
        return [{"name": name, "version": "1", "aliases": ["challenger"], "run_id": "r", "created_at": "2026-01-01",
                 "trained_from": None, "trained_until": None, "metrics": metrics, "run_error": None}]

    monkeypatch.setattr("serving.routes_admin.describe_versions", versions)
    settings = Settings(home=tmp_path, api_keys=[KEY], tracking_uri=empty_store)
    with TestClient(create_app(settings, preloaded={}), headers={"X-API-Key": KEY}) as c:
        deal = c.get("/v1/models").json()["models"][1]
    assert deal["baselines"] == {"stage": {"win_roc_auc": 0.66, "win_h_roc_auc": 0.64},
                                 "logistic_regression": {"win_roc_auc": 0.79}}
    assert deal["floor"] == {"passed": False, "model": 0.70, "baseline": 0.79, "allowance": 0.04}


def test_models_lists_every_task_and_says_why_metrics_are_missing(tmp_path, lead_scorer, monkeypatch, empty_store):
    def versions(client, name):
        return [{"name": name, "version": "1", "aliases": ["champion"], "run_id": "r", "created_at": "2026-01-01",
                 "trained_from": None, "trained_until": None, "metrics": {},
                 "run_error": "run r could not be read: gone" if name == "high_value" else None}]

    monkeypatch.setattr("serving.routes_admin.describe_versions", versions)
    settings = Settings(home=tmp_path, api_keys=[KEY], tracking_uri=empty_store)
    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer)}
    with TestClient(create_app(settings, preloaded=models), headers={"X-API-Key": KEY}) as c:
        listed = c.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == [t.value for t in Task]
    assert [m["loaded"] for m in listed] == [True, False, False]
    assert listed[2]["run_error"] == "run r could not be read: gone" and listed[0]["run_error"] is None


@pytest.mark.parametrize("where", ["home", "tracking_uri"])
def test_no_request_creates_a_missing_store_and_each_says_which_and_what_to_run(tmp_path, where):
    """Start, readiness, the models list, reload and the alias poll on a missing SQLite store (the home's
    default ``mlflow.db``, or a file FUNNELCAST_TRACKING_URI names): each refuses it (503 naming the store
    and what to run, without a server path) and no file is created."""
    from serving.routes_ops import poll_alias_once

    home = tmp_path / "home"
    home.mkdir()
    db = home / "mlflow.db" if where == "home" else tmp_path / "models.db"
    uri = {} if where == "home" else {"tracking_uri": f"sqlite:///{db}"}
    settings = Settings(home=home, api_keys=[KEY], admin_api_keys=["admin-" + KEY], reload_poll_seconds=0, **uri)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        ready = c.get("/readyz")
        listed = c.get("/v1/models")
        reloaded = c.post("/v1/admin/reload", headers={"X-API-Key": "admin-" + KEY})
        assert poll_alias_once(c.app.state) is False
        scored = c.post("/v1/leads/score", json={"leads": [{"lead": {"lead_id": "a", "created_at": "2026-01-01"}}]})
    store = ready.json()["store"]
    assert ready.status_code == 503 and store["state"] == "missing" and store["name"] == db.name
    reason = store["reason"]
    assert ready.json()["reason"] == reason  # said once, not once per task
    assert f"{db.name}" in reason and "`funnelcast train`" in reason and "never creates one" in reason
    assert ("project home (set by FUNNELCAST_HOME)" in reason) == (where == "home")
    assert listed.status_code == 503 and listed.json()["detail"] == reason and listed.json()["request_id"]
    assert listed.headers["Retry-After"] == "60"
    assert reloaded.status_code == 200 and reloaded.json()["problems"]["lead_quality"] == reason
    assert scored.status_code == 503 and reason in scored.json()["detail"]
    for r in (ready, listed, reloaded, scored):
        assert str(tmp_path) not in r.text
    assert not db.exists() and not db.with_name(db.name + "-journal").exists()
    assert "mlflow.db" not in {p.name for p in home.iterdir()}


def test_readiness_says_the_store_is_present(mlflow_store):
    settings = Settings(home=mlflow_store["home"], api_keys=[KEY], tracking_uri=mlflow_store["uri"],
                        reload_poll_seconds=0)
    with TestClient(create_app(settings)) as c:
        store = c.get("/readyz").json()["store"]
    assert store == {"state": "present", "kind": "sqlite", "name": "mlflow.db", "reason": None}


def test_a_store_trained_after_start_is_picked_up_by_the_alias_poll(tmp_path, trained, train_config):
    """Started on a missing store (refused, not created); once training makes it, the next poll loads it."""
    import copy
    import dataclasses

    from models.registry import configure
    from serving.routes_ops import poll_alias_once
    from training.pipeline import log_and_register

    home = tmp_path / "home"
    home.mkdir()
    settings = Settings(home=home, api_keys=[KEY], reload_poll_seconds=0)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        assert c.get("/readyz").json()["store"]["state"] == "missing"
        own = dataclasses.replace(trained, scorer=copy.deepcopy(trained.scorer))
        log_and_register(own, configure(settings.resolved_tracking_uri(), home=home), experiment="funnelcast",
                         artifact_location=settings.artifact_location(), cfg=train_config, data_source="sample")
        assert poll_alias_once(c.app.state) is True
        ready = c.get("/readyz")
        listed = c.get("/v1/models")
    assert ready.status_code == 200 and ready.json()["store"]["state"] == "present"
    assert ready.json()["tasks"]["lead_quality"] == {"state": "loaded", "version": "1", "reason": None}
    assert listed.status_code == 200 and [m["loaded"] for m in listed.json()["models"]] == [True]


def test_readiness_names_a_task_its_export_cannot_train_apart_from_one_never_registered():
    from types import SimpleNamespace

    from serving.routes_admin import _task_states

    state = SimpleNamespace(models={}, load_errors={
        "lead_quality": "no version has the alias 'champion' yet; run `funnelcast train --task lead_quality`",
        "stage_conversion": "not trained on the last export: stage_conversion needs opportunities (deals) and their "
                            "stage history; the export has no opportunities",
        "high_value": "loading failed: OSError: disk"})
    states = _task_states(state)
    assert states["lead_quality"].state == "not_registered"
    assert states["stage_conversion"].state == "not_trained"
    assert states["stage_conversion"].reason.startswith("not trained on the last export: stage_conversion needs")
    assert states["high_value"].state == "failed"
