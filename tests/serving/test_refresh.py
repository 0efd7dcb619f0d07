"""Refresh against a live SQLite CRM: a new lead reaches the feed after ``POST /v1/admin/refresh``
without a restart; the worklist, funnel and forecast answer from the snapshot; a failed refresh
keeps the last good snapshot served and says why; the CLI, the schedule and a model reload."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from features.io import write_export
from features.settings import Settings
from models.registry import LoadedModel
from serving import refresh as refresh_module
from serving.app import create_app
from serving.cli import _cmd_refresh

KEY, ADMIN = "test-key", "admin-key"


@pytest.fixture(scope="module")
def deal_scorer(sample_export):
    from training.deals import DealTrainConfig, build_deal_model

    return build_deal_model(sample_export, DealTrainConfig(snapshot_every_days=28, seed=7),
                            sample_export.exported_at).scorer


@pytest.fixture(scope="module")
def models(lead_scorer, deal_scorer):
    return {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer),
            "stage_conversion": LoadedModel("stage_conversion", "2", "champion", None, deal_scorer)}


def _crm(sample_export, tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    write_export(sample_export, url)
    return url


def _settings(tmp_path, data: str, store_url: str | None = None) -> Settings:
    return Settings(home=tmp_path / "home", api_keys=[KEY], admin_api_keys=[ADMIN], data=data,
                    tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", store_url=store_url)


def _insert_lead(url: str, sample_export, lead_id: str) -> None:
    """A CRM user adds a lead: a row written straight into the source database."""
    row = sample_export.leads.iloc[[0]].copy()
    at = sample_export.exported_at - pd.Timedelta(hours=1)
    # the format SQLAlchemy wrote the export's timestamps in (naive UTC)
    naive = at.tz_convert(None)
    created = naive.to_pydatetime()
    row = row.assign(lead_id=lead_id, created_at=created, converted_at=None, disqualified_at=None,
                     opportunity_id=None)
    engine = sa.create_engine(url)
    leads = sa.Table("leads", sa.MetaData(), autoload_with=engine)  # the source's own column types
    with engine.begin() as conn:
        conn.execute(leads.insert(), row.astype(object).where(row.notna(), None).to_dict("records"))
    engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_lead_inserted_into_the_crm_appears_in_the_feed_after_an_admin_refresh(database, sample_export, models,
                                                                                   tmp_path, request):
    """On SQLite, and on PostgreSQL (the CRM export and the operations store with its snapshots in it;
    when `.ci/run` started a server, skipped otherwise)."""
    if database == "sqlite":
        url, store_url = _crm(sample_export, tmp_path), None
    else:
        url = store_url = request.getfixturevalue("postgres_url")
        write_export(sample_export, url)
    app = create_app(_settings(tmp_path, url, store_url), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        first = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["status"] == "ok" and body["source"] == url and body["counts"]["lead"] > 0
        assert body["counts"]["deal"] > 0 and any(m.startswith("accounts:") for m in body["missing"])
        since = datetime.now(UTC)
        _insert_lead(url, sample_export, "L-NEW-1")
        second = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN}).json()
        assert second["counts"]["lead"] == body["counts"]["lead"] + 1
        feed = c.get("/v1/scores", params={"since": since.isoformat(), "kind": "lead", "limit": 5000}).json()
        ids = [s["id"] for s in feed["scores"]]
        assert "L-NEW-1" in ids and feed["next_page_token"] is None
        new = next(s for s in feed["scores"] if s["id"] == "L-NEW-1")
        assert new["snapshot_id"] == second["snapshot_id"] and new["model_version"] == "1"
        assert new["trend"] == "not enough history" and new["previous_probability"] is None
        assert 0 <= new["score"] <= 100 and new["grade"] in "ABCD"
        assert len(ids) == len(set(ids)) and len(ids) < second["counts"]["lead"]  # changed ones only
        every_kind = c.get("/v1/scores", params={"since": since.isoformat(), "limit": 5000}).json()["scores"]
        assert not [s for s in every_kind if s["kind"] == "deal"]  # the deals did not change (no grade: NULL)
        for path, params in (("/v1/worklist", {}), ("/v1/funnel", {}), ("/v1/forecast", {"by": "owner_id"})):
            start = time.perf_counter()
            r = c.get(path, params=params)
            assert r.status_code == 200, r.text
            assert time.perf_counter() - start < 1.0, path
        w = c.get("/v1/worklist", params={"limit": 1000}).json()
        assert w["snapshot_id"] == second["snapshot_id"] and w["age_seconds"] >= 0 and w["refreshed_at"]
        assert "L-NEW-1" in {i["id"] for i in w["items"]}
        ready = c.get("/readyz").json()["snapshot"]
        assert ready["snapshot_id"] == second["snapshot_id"] and ready["status"] == "ok" and ready["error"] is None
        assert pd.Timestamp(ready["as_of"]) == sample_export.exported_at


def test_a_failed_refresh_keeps_the_last_good_snapshot_served_and_says_why(sample_export, models, tmp_path):
    url = _crm(sample_export, tmp_path)
    app = create_app(_settings(tmp_path, url), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        good = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN}).json()
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE leads"))
        engine.dispose()
        r = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN})
        assert r.status_code == 422 and "leads" in r.json()["detail"] and "last good snapshot" in r.json()["detail"]
        ready = c.get("/readyz").json()["snapshot"]
        assert ready["status"] == "failed" and "leads" in ready["error"]
        assert ready["snapshot_id"] == good["snapshot_id"]
        w = c.get("/v1/worklist")
        assert w.status_code == 200 and w.json()["snapshot_id"] == good["snapshot_id"]
        assert c.get("/v1/funnel").status_code == 200


def test_admin_refresh_needs_an_admin_key(sample_dir, models, tmp_path):
    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)
    with TestClient(app) as c:
        assert c.post("/v1/admin/refresh", headers={"X-API-Key": KEY}).status_code == 403
        assert c.post("/v1/admin/refresh").status_code == 401


def test_the_first_request_without_a_snapshot_runs_one_refresh(sample_dir, models, tmp_path):
    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        assert c.get("/readyz").json()["snapshot"]["status"] == "none"
        assert c.get("/v1/worklist").status_code == 200
        assert c.get("/v1/funnel").status_code == 200
        assert app.state.refresher.store.count() == 1


def test_without_a_snapshot_a_failing_source_answers_503_naming_the_command(models, tmp_path):
    app = create_app(_settings(tmp_path, str(tmp_path / "no-such-export")), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        r = c.get("/v1/worklist")
        assert r.status_code == 503 and "funnelcast refresh" in r.json()["detail"]
        assert "cannot be read" in r.json()["detail"] and "no-such-export" not in r.text  # no server paths
        again = c.get("/v1/funnel")  # right after a failed refresh, requests do not retry it
        assert again.status_code == 503 and "cannot be read" in again.json()["detail"]
        assert app.state.refresher.store.count() == 1


def test_a_refresh_already_running_makes_the_first_request_503_not_a_second_refresh(sample_dir, models, tmp_path):
    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        with app.state.refresher.lock:  # a refresh holds the lock
            r = c.get("/v1/worklist")
        assert r.status_code == 503 and "running" in r.json()["detail"] and r.headers["Retry-After"]
        assert app.state.refresher.store.count() == 0


def test_a_model_reload_refreshes_the_snapshot_with_the_new_version(sample_dir, models, tmp_path):
    from serving.routes_ops import swap_in_registered

    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN})
        newer = LoadedModel("lead_quality", "5", "champion", None, models["lead_quality"].scorer)
        app.state.model_loader = lambda: ({"lead_quality": newer}, {})
        threads = []
        app.state.after_models_swapped = lambda: threads.append(app.state.refresher.run_in_background())
        swap_in_registered(app.state)
        assert len(threads) == 1
        threads[0].join(timeout=120)
        snap = app.state.refresher.store.latest()
        assert snap.models["lead_quality"] == "5"
        w = c.get("/v1/worklist", params={"limit": 1000, "effort_deal": 1000}).json()
        assert w["snapshot_id"] == snap.id
        swap_in_registered(app.state)  # the same versions again: no refresh
        assert len(threads) == 1


def test_cli_refresh_prints_store_source_counts_and_fails_non_zero(sample_dir, tmp_path, capsys, monkeypatch, models):
    monkeypatch.setattr("serving.app.load_models", lambda settings: (dict(models), {}))
    settings = _settings(tmp_path, str(sample_dir / "export"))
    assert _cmd_refresh(argparse.Namespace(data=None), settings) == 0
    out = capsys.readouterr().out
    assert settings.resolved_store_url() in out and str(sample_dir / "export") in out
    assert "leads" in out and "deals" in out and "as of" in out and " s" in out
    assert _cmd_refresh(argparse.Namespace(data=str(tmp_path / "gone")), settings) == 1
    err = capsys.readouterr().err
    assert "refresh failed" in err and "gone" in err


def test_the_schedule_refreshes_at_start(sample_dir, models, tmp_path, monkeypatch):
    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)

    class Stop(Exception):
        pass

    async def stop(_seconds):
        raise Stop

    monkeypatch.setattr(refresh_module.asyncio, "sleep", stop)
    with pytest.raises(Stop):
        asyncio.run(refresh_module.refresh_every(app.state, 900))
    assert app.state.refresher.store.latest().status == "ok"


def test_refresh_every_takes_seconds_or_a_duration():
    assert Settings(refresh_every="15m").refresh_every == 900
    assert Settings(refresh_every="2h").refresh_every == 7200
    assert Settings(refresh_every=30).refresh_every == 30
    with pytest.raises(ValueError, match="soon"):
        Settings(refresh_every="soon")


def test_a_burst_of_reloads_while_a_refresh_runs_queues_one_more_refresh_not_a_thread_each(sample_dir, models,
                                                                                          tmp_path):
    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}):
        r = app.state.refresher
        with r.lock:  # a refresh is running
            threads = {r.run_in_background() for _ in range(5)}
            assert len(threads) == 1 and r.store.count() == 0
        threads.pop().join(timeout=120)
        assert r.store.count() == 1
        again = r.run_in_background()  # a change after that refresh started: a refresh of its own
        again.join(timeout=120)
        assert r.store.count() == 2


class _Unpicklable:
    """A scorer that cannot be sent to the refresh's child process (as a model holding a lock would be)."""

    def __reduce__(self):
        raise TypeError("cannot pickle this scorer")


def test_the_api_refreshes_in_a_nicer_child_process_and_the_export_stays_there(sample_dir, models, tmp_path):
    import os

    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        result = app.state.refresher.run()
        assert result.status == "ok" and result.pid != os.getpid()
        assert result.nice == min(19, os.nice(0) + app.state.settings.refresh_nice)
        assert result.export is None and getattr(app.state, "configured_export", None) is None
        data = c.get("/readyz").json()["data"]  # what the child read, without the export in this process
        assert data["state"] == "readable" and data["rows"]["leads"] > 0
        assert c.get("/v1/worklist").json()["snapshot_id"] == result.snapshot_id


def test_the_same_refresh_in_a_worker_thread_when_the_child_process_is_off(sample_dir, models, tmp_path):
    import os

    settings = _settings(tmp_path, str(sample_dir / "export")).model_copy(update={"refresh_process": False})
    app = create_app(settings, preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}):
        result = app.state.refresher.run()
    assert result.status == "ok" and result.pid == os.getpid() and app.state.configured_export is result.export


def test_a_refresh_whose_child_process_fails_is_recorded_and_the_last_good_snapshot_stays(sample_dir, models,
                                                                                           tmp_path):
    app = create_app(_settings(tmp_path, str(sample_dir / "export")), preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        good = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN}).json()
        app.state.models = {**models, "lead_quality": LoadedModel("lead_quality", "9", "champion", None, _Unpicklable())}
        r = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN})
        ready = c.get("/readyz").json()["snapshot"]
        w = c.get("/v1/worklist")
    assert r.status_code == 503 and "child process failed" in r.json()["detail"] and "cannot pickle" in r.json()["detail"]
    assert ready["status"] == "failed" and "child process failed" in ready["error"]
    assert ready["snapshot_id"] == good["snapshot_id"] and w.json()["snapshot_id"] == good["snapshot_id"]


def test_a_leads_only_crm_refreshes_and_each_missing_part_says_why(sample_export, lead_scorer, tmp_path):
    """A CRM with leads and no deals (X Education's shape): the refresh succeeds and scores the leads; the
    funnel says the export has no deals (422); the forecast names its missing model at once, without a
    Retry-After a page would wait out (nothing changes until a model is trained)."""
    from dataclasses import replace

    leads_only = replace(
        sample_export,
        opportunities=sample_export.opportunities.iloc[:0], stage_history=sample_export.stage_history.iloc[:0],
        leads=sample_export.leads.assign(opportunity_id=None),
        activities=sample_export.activities[sample_export.activities["opportunity_id"].isna()])
    url = _crm(leads_only, tmp_path)
    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer)}
    with TestClient(create_app(_settings(tmp_path, url), preloaded=models), headers={"X-API-Key": KEY}) as c:
        refreshed = c.post("/v1/admin/refresh", headers={"X-API-Key": ADMIN})
        assert refreshed.status_code == 200, refreshed.text
        w = c.get("/v1/worklist", params={"limit": 1000})
        funnel = c.get("/v1/funnel")
        forecast = c.get("/v1/forecast", params={"by": "owner_id"})
    assert w.status_code == 200 and w.json()["items"] and {i["kind"] for i in w.json()["items"]} == {"lead"}
    assert any("stage_conversion" in m for m in w.json()["missing"])
    assert funnel.status_code == 422 and "no stage_history rows" in funnel.json()["detail"]
    assert forecast.status_code == 503 and "stage_conversion" in forecast.json()["detail"]
    assert "Retry-After" not in forecast.headers


def _held_refreshes(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Refreshes that wait for ``release`` once started (``started`` set): a refresh caught while it runs."""
    started, release = threading.Event(), threading.Event()
    run = refresh_module.Refresher._refresh_locked

    def held(self):
        started.set()
        assert release.wait(timeout=120), "the test never released the refresh"
        return run(self)

    monkeypatch.setattr(refresh_module.Refresher, "_refresh_locked", held)
    return started, release


def test_a_server_with_an_export_and_no_snapshot_refreshes_at_start_and_answers_503_at_once_meanwhile(
        sample_dir, models, tmp_path, monkeypatch):
    """No request starts it: the lifespan does. While it runs /readyz says refreshing (since when) and the
    worklist answers a 503 with Retry-After at once, saying what is happening and what to do; then ready."""
    started, release = _held_refreshes(monkeypatch)
    settings = _settings(tmp_path, str(sample_dir / "export")).model_copy(update={"refresh_at_start": True})
    app = create_app(settings, preloaded=models)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        assert started.wait(timeout=30)  # without any request
        ready = c.get("/readyz").json()["snapshot"]
        assert ready["status"] == "refreshing" and ready["snapshot_id"] is None and ready["error"] is None
        since = pd.Timestamp(ready["refresh_started_at"])
        assert 0 <= (pd.Timestamp.now(tz="UTC") - since).total_seconds() < 60
        for path in ("/v1/worklist", "/v1/funnel", "/v1/forecast"):
            asked = time.perf_counter()
            r = c.get(path)
            assert r.status_code == 503 and time.perf_counter() - asked < 2.0, (path, r.text)
            assert r.headers["Retry-After"] == "10"
            detail = r.json()["detail"]
            assert "a refresh is running to compute the first scores" in detail, detail
            assert f"started {since:%H:%M:%S} UTC" in detail and "GET /readyz" in detail
            assert "funnelcast refresh" not in detail  # a second refresh would not help: it is running
        assert app.state.refresher.store.count() == 0
        release.set()
        app.state.first_refresh.join(timeout=120)
        ready = c.get("/readyz").json()["snapshot"]
        assert ready["status"] == "ok" and ready["snapshot_id"] is not None and ready["refresh_started_at"] is None
        w = c.get("/v1/worklist")
        assert w.status_code == 200 and w.json()["snapshot_id"] == ready["snapshot_id"]
        assert app.state.refresher.store.count() == 1


def test_the_refresh_at_start_runs_only_without_a_current_snapshot_and_only_with_a_source(sample_dir, models,
                                                                                         tmp_path):
    """A restart over a snapshot of the same models and source serves it; other model versions (a new
    champion while the server was down) refresh at start; no source configured, or the setting off: no
    refresh at start (the first request runs it, as before)."""
    settings = _settings(tmp_path, str(sample_dir / "export")).model_copy(update={"refresh_at_start": True})
    with TestClient(create_app(settings, preloaded=models)) as c:
        c.app.state.first_refresh.join(timeout=120)
        assert c.app.state.refresher.store.count() == 1
    with TestClient(create_app(settings, preloaded=models)) as c:
        assert c.app.state.first_refresh is None  # the snapshot there is current
    newer = {**models, "lead_quality": LoadedModel("lead_quality", "5", "champion", None, models["lead_quality"].scorer)}
    with TestClient(create_app(settings, preloaded=newer)) as c:
        c.app.state.first_refresh.join(timeout=120)
        assert c.app.state.refresher.store.latest().models["lead_quality"] == "5"
    no_source = settings.model_copy(update={"data": None, "home": tmp_path / "empty-home"})
    with TestClient(create_app(no_source, preloaded=models)) as c:
        assert c.app.state.first_refresh is None and c.get("/readyz").json()["snapshot"]["status"] == "none"
    off = _settings(tmp_path / "off", str(sample_dir / "export"))
    assert not off.refresh_at_start  # tests/serving/conftest.py turns it off for the other tests
    with TestClient(create_app(off, preloaded=models)) as c:
        assert c.app.state.first_refresh is None and c.app.state.refresher.store.count() == 0
    assert Settings.model_fields["refresh_at_start"].default is True


def _refresh_that_never_ends(settings, models, load_errors):
    """The refresh's child process, stuck (a first refresh of years of a large CRM): says it started, then waits."""
    import os

    (settings.home / "refresh-child.pid").write_text(str(os.getpid()))
    threading.Event().wait()


def test_a_shutdown_during_the_first_refresh_ends_its_child_process_and_records_nothing(sample_dir, models, tmp_path,
                                                                                        monkeypatch):
    """The server stops at once instead of waiting out the refresh (a Ctrl+C right after `serve`); no failed
    snapshot is recorded for it, so the next start refreshes again."""
    import os

    monkeypatch.setattr(refresh_module, "_refresh_in_child", _refresh_that_never_ends)
    settings = _settings(tmp_path, str(sample_dir / "export")).model_copy(update={"refresh_at_start": True})
    settings.home.mkdir(parents=True)
    marker = settings.home / "refresh-child.pid"
    app = create_app(settings, preloaded=models)
    with TestClient(app) as c:
        for _ in range(600):  # the spawned child imports the scoring libraries first
            if marker.exists() and marker.read_text():
                break
            time.sleep(0.1)
        child = int(marker.read_text())
        assert c.get("/readyz").json()["snapshot"]["status"] == "refreshing"
        stopping = time.perf_counter()
    app.state.first_refresh.join(timeout=30)
    assert not app.state.first_refresh.is_alive() and time.perf_counter() - stopping < 30
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert app.state.refresher.store.count() == 0


def test_serve_prints_the_funnelcast_lines_once_beside_uvicorns(monkeypatch):
    """`funnelcast serve` hands uvicorn a logging configuration with the funnelcast loggers on the console at INFO
    ("refreshing at start" was lost: the logger had no handler), printed once, as uvicorn's lines read; the JSON
    access lines keep their own handler. Applied in a fresh interpreter, as uvicorn does in each worker."""
    import json
    import subprocess
    import sys

    from serving import cli

    given = {}
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: given.update(kw))
    cli.serve(Settings(api_keys=["k"]), port=1)
    assert given["log_config"] == cli.log_config()
    script = ("import json, logging, logging.config, sys; logging.config.dictConfig(json.loads(sys.argv[1])); "
              "logging.getLogger('funnelcast.refresh').info('refreshing at start'); "
              "logging.getLogger('funnelcast.serving').debug('not shown'); "
              "logging.getLogger('uvicorn.error').info('Started server process')")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(cli.log_config())], capture_output=True,
                          text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert lines == ["INFO:     funnelcast.refresh: refreshing at start", "INFO:     Started server process"]
