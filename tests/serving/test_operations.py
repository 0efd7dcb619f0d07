"""Request ids, JSON access logs, metrics, body limit, rate limiting, idempotency, CORS."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from features.settings import Settings
from models.registry import LoadedModel
from models.tasks import Task
from serving.app import create_app
from serving.deps import model_dependency
from serving.middleware import IdempotencyCache, RateLimiter

KEY = "ops-key"


def _app(lead_scorer, tmp_path, **overrides):
    settings = Settings(home=tmp_path, api_keys=[KEY], tracking_uri=f"sqlite:///{tmp_path / 'e.db'}", **overrides)
    app = create_app(settings)
    loaded = LoadedModel(name="lead_quality", version="3", alias="champion", run_id=None, scorer=lead_scorer)
    app.dependency_overrides[model_dependency(Task.LEAD_QUALITY)] = lambda: loaded
    return app


def _lead(i: int = 0) -> dict:
    return {"as_of": "2026-10-01T00:00:00Z", "leads": [{"lead": {"lead_id": f"L{i}", "created_at": "2026-09-20", "source": "web"}}]}


def test_every_response_has_a_request_id_and_a_json_access_line(lead_scorer, tmp_path, caplog):
    # the access logger prints its JSON lines itself and does not propagate to the root logger,
    # where caplog listens: listen on it directly (the test passed or failed with test order)
    access = logging.getLogger("funnelcast.access")
    with TestClient(_app(lead_scorer, tmp_path), headers={"X-API-Key": KEY}) as c:
        access.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.INFO, logger="funnelcast.access"):
                r = c.post("/v1/leads/score", json=_lead(), headers={"X-Request-ID": "crm-42"})
                anon = c.get("/healthz")
        finally:
            access.removeHandler(caplog.handler)
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "crm-42"
    assert len(anon.headers["X-Request-ID"]) == 32
    assert r.headers["X-Model-Version"] == "lead_quality/3"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "funnelcast.access"]
    scored = next(x for x in lines if x["request_id"] == "crm-42")
    assert scored["path"] == "/v1/leads/score" and scored["status"] == 200 and scored["model_version"] == "lead_quality/3"
    assert KEY not in caplog.text


def test_metrics_count_latency_errors_and_scores_per_model_version(lead_scorer, tmp_path):
    with TestClient(_app(lead_scorer, tmp_path), headers={"X-API-Key": KEY}) as c:
        c.post("/v1/leads/score", json=_lead())
        c.post("/v1/leads/score", json={"leads": []})
        text = c.get("/metrics").text
    assert 'funnelcast_scores_total{model="lead_quality",version="3"} 1.0' in text
    assert 'funnelcast_request_seconds_count{method="POST",route="/v1/leads/score",status="200"} 1.0' in text
    assert 'funnelcast_errors_total{route="/v1/leads/score",status="422"} 1.0' in text


def test_rate_limit_answers_429_with_retry_after(lead_scorer, tmp_path):
    with TestClient(_app(lead_scorer, tmp_path, rate_limit_per_minute=2), headers={"X-API-Key": KEY}) as c:
        codes = [c.post("/v1/leads/score", json=_lead(i)).status_code for i in range(3)]
        r = c.post("/v1/leads/score", json=_lead(9))
    assert codes == [200, 200, 429]
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "rate limit" in r.json()["detail"]


def test_token_bucket_refills_with_time():
    limiter = RateLimiter(per_minute=60)
    assert all(limiter.check("k", now=0.0) == 0 for _ in range(60))
    assert limiter.check("k", now=0.0) == pytest.approx(1.0)
    assert limiter.check("k", now=1.0) == 0
    assert limiter.check("other", now=0.0) == 0


def test_a_retried_request_is_answered_from_the_first_result(lead_scorer, tmp_path):
    with TestClient(_app(lead_scorer, tmp_path), headers={"X-API-Key": KEY}) as c:
        first = c.post("/v1/leads/score", json=_lead(), headers={"Idempotency-Key": "abc"})
        again = c.post("/v1/leads/score", json=_lead(), headers={"Idempotency-Key": "abc"})
        other = c.post("/v1/leads/score", json=_lead(1), headers={"Idempotency-Key": "abc"})
        metrics = c.get("/metrics").text
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422 and "different request body" in other.json()["detail"]
    assert 'funnelcast_scores_total{model="lead_quality",version="3"} 1.0' in metrics  # scored once


def test_idempotency_entries_expire_and_are_bounded():
    cache = IdempotencyCache(size=2, ttl=10)
    cache.put(("k", "a"), "f", b"1", 200, now=0)
    assert cache.get(("k", "a"), now=5) == ("f", b"1", 200)
    assert cache.get(("k", "a"), now=11) is None
    for i in range(3):
        cache.put(("k", str(i)), "f", b"x", 200, now=0)
    assert cache.get(("k", "0"), now=0) is None and cache.get(("k", "2"), now=0) is not None


def test_oversized_body_is_413(lead_scorer, tmp_path):
    with TestClient(_app(lead_scorer, tmp_path, max_body_bytes=200), headers={"X-API-Key": KEY}) as c:
        r = c.post("/v1/leads/score", json=_lead() | {"padding": "x" * 500})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_cors_is_closed_by_default_and_opens_only_to_configured_origins(lead_scorer, tmp_path):
    pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with TestClient(_app(lead_scorer, tmp_path)) as c:
        assert "access-control-allow-origin" not in c.options("/v1/leads/score", headers=pre).headers
    with TestClient(_app(lead_scorer, tmp_path / "b", cors_origins=["https://crm.example"])) as c:
        ok = c.options("/v1/leads/score", headers={**pre, "Origin": "https://crm.example"})
        assert ok.headers["access-control-allow-origin"] == "https://crm.example"
        bad = c.options("/v1/leads/score", headers=pre)
        assert bad.headers.get("access-control-allow-origin") != "https://evil.example"


def test_the_api_picks_up_a_new_champion_by_polling_the_alias(trained, train_config, tmp_path):
    """Promote a new version: after a poll the app serves it, with no request failing meanwhile."""
    import time

    from models.registry import configure
    from training.pipeline import log_and_register

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = configure(uri)

    def register() -> str:
        return log_and_register(trained, client, experiment="poll", artifact_location=(tmp_path / "a").as_uri(),
                                cfg=train_config, data_source="generated sample").version

    first = register()  # the first version becomes champion directly
    settings = Settings(home=tmp_path, api_keys=[KEY], tracking_uri=uri, reload_poll_seconds=0.2)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        r = c.post("/v1/leads/score", json=_lead())
        assert r.status_code == 200 and r.json()["model"]["version"] == first
        second = register()  # a challenger: not served until promoted
        assert second != first
        time.sleep(0.6)
        assert c.post("/v1/leads/score", json=_lead()).json()["model"]["version"] == first
        client.set_registered_model_alias("lead_quality", "champion", second)  # what `funnelcast promote` does
        seen, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1] != second):
            r = c.post("/v1/leads/score", json=_lead(len(seen)))
            assert r.status_code == 200, r.text  # requests keep succeeding during the swap
            assert r.headers["X-Model-Version"] == f"lead_quality/{r.json()['model']['version']}"
            seen.append(r.json()["model"]["version"])
        assert seen[-1] == second, f"still serving {seen[-1]} after 60 s of polling"
        assert set(seen) <= {first, second} and seen == sorted(seen, key=int)  # never back to the old one
        assert c.get("/readyz").json()["models"]["lead_quality"] == second


def test_alias_polling_is_off_at_zero(lead_scorer, tmp_path):
    import asyncio

    from serving.routes_ops import start_alias_polling

    assert Settings(home=tmp_path).reload_poll_seconds == 60
    assert asyncio.run(_start(start_alias_polling, 0)) is None


async def _start(start, seconds):
    return start(None, seconds)


def test_concurrent_outcome_upserts_on_sqlite_never_fail_and_store_one_row_each(race_outcomes, tmp_path):
    errors, results, rows = race_outcomes(f"sqlite:///{tmp_path / 'operations.db'}")
    assert errors == [] and len(results) == 20 and rows == 50
    assert [sum(r[i] == "accepted" for r in results) for i in range(50)] == [1] * 50
