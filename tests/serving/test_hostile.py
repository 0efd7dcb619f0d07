"""Hostile and unlucky clients: each request that once answered 500 answers 2xx or 4xx naming the
field; a server fault is a 5xx carrying a request id the log line has too; every request's work is
bounded (body read while counting, idempotency cache in bytes, allocation in cells, analytics in
concurrency); failed keys are throttled per client address; readiness names each task's state."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from fastapi.testclient import TestClient

from features.settings import Settings
from models.registry import LoadedModel
from serving.app import create_app

KEY = "hostile-key"


@pytest.fixture(scope="module")
def deal_scorer(sample_export):
    from training.deals import DealTrainConfig, build_deal_model

    return build_deal_model(sample_export, DealTrainConfig(snapshot_every_days=28, seed=7),
                            sample_export.exported_at).scorer


@pytest.fixture(scope="module")
def models(lead_scorer, account_sample, deal_scorer):
    return {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer),
            "high_value": LoadedModel("high_value", "1", "champion", None, account_sample[3].scorer),
            "stage_conversion": LoadedModel("stage_conversion", "1", "champion", None, deal_scorer)}


def _app(tmp_path_factory, sample_dir, models, **overrides):
    home = tmp_path_factory.mktemp("hostile")
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=f"sqlite:///{home / 'x.db'}",
                        data=str(sample_dir / "export"), **overrides)
    return create_app(settings, preloaded=models)


@pytest.fixture(scope="module")
def client(tmp_path_factory, sample_dir, models):
    with TestClient(_app(tmp_path_factory, sample_dir, models), headers={"X-API-Key": KEY}) as c:
        yield c


def _paths(r) -> list[str]:
    return [e["path"] for e in r.json()["errors"]]


# ------------------------------------------------------------------ requests that answered 500
def test_prospects_only_accounts_are_scored(client):
    """No account of the batch has a won deal (the look-alike use case): was a TypeError."""
    body = {"as_of": "2027-06-01T00:00:00Z", "accounts": [
        {"account": {"account_id": "p1", "created_at": "2027-01-01", "industry": "software", "employees": 40}},
        {"account": {"account_id": "p2", "created_at": "2027-02-01"},
         "opportunities": [{"opportunity_id": "o1", "created_at": "2027-03-01", "stage": "proposal", "amount": 900}]}]}
    r = client.post("/v1/accounts/score", json=body)
    assert r.status_code == 200, r.text
    assert [s["is_customer"] for s in r.json()["scores"]] == [False, False]


def _deal(i: int, **fields) -> dict:
    opp = {"opportunity_id": f"d{i}", "account_id": f"a{i}", "created_at": "2027-01-05", "stage": "proposal", **fields}
    return {"opportunity": opp, "stage_history": [{"stage": "qualification", "entered_at": "2027-01-05"},
                                                  {"stage": "proposal", "entered_at": "2027-02-01"}]}


@pytest.mark.parametrize("missing", ["amount", "expected_close_date"])
def test_deals_without_any_amount_or_close_date_are_scored(client, missing):
    """Was an IndexError in last_first_changes when no deal of the batch had the field."""
    given = {"amount": 5000.0, "expected_close_date": "2027-05-01"}
    given.pop(missing)
    r = client.post("/v1/opportunities/score", json={"as_of": "2027-03-01T00:00:00Z",
                                                     "opportunities": [_deal(1, **given), _deal(2, **given)]})
    assert r.status_code == 200, r.text
    assert len(r.json()["scores"]) == 2


@pytest.mark.parametrize("as_of", ["1500-01-01T00:00:00Z", "2300-01-01T00:00:00Z", "2360-06-01T00:00:00Z"])
def test_as_of_out_of_range_is_a_422_naming_it(client, as_of):
    """pandas holds 1677-2262; the schemas take 1900-2200 and say so (was OutOfBoundsDatetime / OverflowError)."""
    deals = client.post("/v1/opportunities/score", json={"as_of": as_of, "opportunities": [_deal(1, amount=5.0)]})
    accounts = client.post("/v1/accounts/score", json={"as_of": as_of, "accounts": [
        {"account": {"account_id": "p1", "created_at": "2026-01-01"}}]})
    leads = client.post("/v1/leads/score", json={"as_of": as_of, "leads": [
        {"lead": {"lead_id": "l1", "created_at": "2026-01-01"}}]})
    for r in (deals, accounts, leads):
        assert r.status_code == 422, r.text
        assert _paths(r) == ["as_of"] and "1900" in r.json()["errors"][0]["reason"]
    for route in ("/v1/funnel", "/v1/forecast"):
        r = client.get(route, params={"as_of": as_of})
        assert r.status_code == 422, r.text
        assert _paths(r) == ["as_of"], r.text


def test_record_timestamps_out_of_range_are_422s(client):
    r = client.post("/v1/opportunities/score", json={"opportunities": [_deal(1, expected_close_date="9999-01-01")]})
    assert r.status_code == 422 and _paths(r) == ["opportunities[0].opportunity.expected_close_date"]


def test_funnel_before_the_data_is_a_422_naming_as_of(client, sample_export):
    """Was ``KeyError: ''``: a period with no deal in it."""
    r = client.get("/v1/funnel", params={"as_of": "1950-01-01T00:00:00Z"})
    assert r.status_code == 422, r.text
    assert _paths(r) == ["as_of"] and "the export has none then" in r.json()["detail"]
    assert "choose an as_of from " in r.json()["detail"]


@pytest.mark.parametrize("value", ["Infinity", "1e309", "NaN"])
def test_allocation_with_a_non_finite_value_is_a_422(client, value):
    raw = ('{"reps": [{"owner_id": "a", "capacity": 2}], "items": [{"item_id": "x", "expected_value": '
           + value + '}]}')
    r = client.post("/v1/allocation", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert _paths(r) == ["items[0].expected_value"]


def test_worklist_effort_too_small_to_divide_by_is_a_422(client):
    """effort_account=5e-324 made value_per_effort infinite (served as null, against the schema)."""
    r = client.get("/v1/worklist", params={"effort_account": "5e-324"})
    assert r.status_code == 422 and _paths(r) == ["effort_account"]


@pytest.mark.parametrize("field, value", [("employees", True), ("employees", "12"), ("created_at", 1700000000),
                                          ("created_at", "1700000000")])
def test_booleans_are_not_numbers_and_integers_are_not_timestamps(client, field, value):
    account = {"account_id": "p1", "created_at": "2026-01-01", field: value}
    r = client.post("/v1/accounts/score", json={"accounts": [{"account": account}]})
    assert r.status_code == 422, r.text
    assert _paths(r) == [f"accounts[0].account.{field}"]


def test_openapi_documents_the_finite_and_range_rules(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    ts = json.dumps(schema["LeadRecord"]["properties"]["created_at"])
    assert "1900" in ts and "2199" in ts
    assert "date-time" in ts


# ------------------------------------------------------------------ server faults
def test_a_server_fault_is_a_500_with_the_request_id_in_header_body_and_log(tmp_path_factory, sample_dir, models,
                                                                          caplog):
    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("the model file is corrupt")

    broken = dict(models, high_value=LoadedModel("high_value", "1", "champion", None, Broken()))
    app = _app(tmp_path_factory, sample_dir, broken)
    with TestClient(app, headers={"X-API-Key": KEY}, raise_server_exceptions=False) as c, \
            caplog.at_level(logging.INFO):
        r = c.get("/v1/traits", headers={"X-Request-ID": "fault-1"})
    assert r.status_code == 500
    assert r.headers["X-Request-ID"] == "fault-1" and r.json()["request_id"] == "fault-1"
    assert "corrupt" not in r.text  # the client is not told the server's internals
    logged = [rec for rec in caplog.records if "fault-1" in rec.getMessage() or getattr(rec, "request_id", "") == "fault-1"]
    assert any(rec.levelno >= logging.ERROR and rec.exc_info for rec in logged), [r.getMessage() for r in logged]


# ------------------------------------------------------------------ bounded work per request
def test_a_chunked_body_over_the_limit_is_a_413(tmp_path_factory, sample_dir, models):
    """A generator body goes out chunked (no Content-Length): still a 413 naming the limit."""
    def chunks():
        for _ in range(40):
            yield b" " * 65_536

    app = _app(tmp_path_factory, sample_dir, models, max_body_bytes=1_000_000)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        r = c.post("/v1/leads/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert r.status_code == 413, r.text
    assert "1,000,000 bytes" in r.json()["detail"] and r.json()["request_id"] == r.headers["X-Request-ID"]


def test_a_streamed_body_is_read_only_up_to_the_limit(tmp_path_factory, sample_dir, models):
    """At the ASGI level (TestClient joins a body before sending it): a 64 MB stream of 64 KB
    messages is refused after the ~16 that pass 1 MB; the rest is never received."""
    import anyio

    app = _app(tmp_path_factory, sample_dir, models, max_body_bytes=1_000_000)
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b" " * 65_536, "more_body": len(pulled) < 1000}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/leads/score", "raw_path": b"/v1/leads/score",
             "root_path": "", "scheme": "http", "query_string": b"", "client": ("127.0.0.1", 1), "server": ("t", 80),
             "headers": [(b"content-type", b"application/json"), (b"x-api-key", KEY.encode())]}
    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 413
    assert len(pulled) <= 17


def test_the_idempotency_cache_is_bounded_in_bytes():
    from serving.middleware import IdempotencyCache

    cache = IdempotencyCache(max_bytes=10_000)
    for i in range(50):
        cache.put(("caller", f"k{i}"), "f" * 64, b"x" * 1_000, 200, now=0)
    assert cache.stored_bytes <= 10_000
    assert cache.get(("caller", "k49"), now=0) is not None and cache.get(("caller", "k0"), now=0) is None
    kept = [i for i in range(50) if cache.get(("caller", f"k{i}"), now=0) is not None]
    assert len(kept) == len(range(kept[0], 50)) and len(kept) >= 5
    cache.get(("caller", f"k{kept[0]}"), now=0)  # used: now kept over the newer ones
    for i in range(50, 50 + len(kept) - 1):
        cache.put(("caller", f"k{i}"), "f" * 64, b"x" * 1_000, 200, now=0)
    assert cache.get(("caller", f"k{kept[0]}"), now=0) is not None
    assert cache.get(("caller", f"k{kept[1]}"), now=0) is None
    cache.put(("caller", "huge"), "f", b"x" * 5_000, 200, now=0)  # over a quarter of the budget: not kept
    assert cache.get(("caller", "huge"), now=0) is None and cache.stored_bytes <= 10_000


def test_allocation_over_the_cell_limit_is_a_422_naming_it(tmp_path_factory, sample_dir, models):
    app = _app(tmp_path_factory, sample_dir, models, max_allocation_cells=10_000)
    reps = [{"owner_id": f"r{j}", "capacity": 50} for j in range(10)]
    items = [{"item_id": f"i{i}", "expected_value": 1.0} for i in range(200)]
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        r = c.post("/v1/allocation", json={"reps": reps, "items": items})
    assert r.status_code == 422 and _paths(r) == ["items"]
    assert "FUNNELCAST_MAX_ALLOCATION_CELLS" in r.json()["detail"] and "10,000" in r.json()["detail"]


def test_expensive_analytics_beyond_the_concurrency_limit_are_503_with_retry_after(client):
    guard = client.app.state.analytics
    for _ in range(guard.limit):
        guard.acquire()
    try:
        # answers computed live on the export (parameters no snapshot holds) wait for a slot ...
        for route, params in (("/v1/funnel", {"period_days": 60}), ("/v1/forecast", {"horizon_days": 30})):
            r = client.get(route, params=params)
            assert r.status_code == 503 and r.headers["Retry-After"] == "5", (route, r.text)
            assert "busy" in r.json()["detail"]
        # ... those read from the latest scored snapshot cost milliseconds and take none
        for route in ("/v1/funnel", "/v1/forecast", "/v1/worklist"):
            assert client.get(route).status_code == 200, route
        assert client.post("/v1/leads/score", json={"leads": [{"lead": {"lead_id": "l", "created_at": "2027-01-01"}}],
                                                    "as_of": "2027-02-01T00:00:00Z"}).status_code == 200
    finally:
        for _ in range(guard.limit):
            guard.release()
    assert client.get("/v1/funnel").status_code == 200


def test_a_slot_is_given_back_when_the_analytics_fail(client):
    for _ in range(client.app.state.analytics.limit + 1):
        assert client.get("/v1/funnel", params={"as_of": "1950-01-01T00:00:00Z"}).status_code == 422
    assert client.get("/v1/funnel").status_code == 200


def test_failed_keys_are_throttled_per_client_address(tmp_path_factory, sample_dir, models):
    app = _app(tmp_path_factory, sample_dir, models, failed_keys_per_minute=5)
    with TestClient(app) as c:
        codes = [c.get("/v1/traits", headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(8)]
        throttled = c.get("/v1/traits", headers={"X-API-Key": KEY})
        with TestClient(app, client=("10.0.0.9", 5000)) as other:
            elsewhere = other.get("/v1/traits", headers={"X-API-Key": KEY})
    assert codes == [401] * 5 + [429] * 3
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) >= 1
    assert elsewhere.status_code == 200  # another address is not affected


def test_a_good_key_never_uses_up_the_failure_budget(tmp_path_factory, sample_dir, models):
    app = _app(tmp_path_factory, sample_dir, models, failed_keys_per_minute=2)
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        assert all(c.get("/v1/traits").status_code == 200 for _ in range(10))


# ------------------------------------------------------------------ readiness that tells the truth
def test_a_model_that_failed_to_load_makes_readyz_not_ready_naming_the_task_and_reason(mlflow_store, monkeypatch):
    import serving.app
    from models.registry import load_scorer

    def flaky(client, name, alias="champion"):
        if name == "stage_conversion":
            raise RuntimeError()  # an exception whose message is empty
        return load_scorer(client, name, alias)

    monkeypatch.setattr(serving.app, "load_scorer", flaky)
    settings = Settings(home=mlflow_store["home"], api_keys=[KEY], tracking_uri=mlflow_store["uri"],
                        reload_poll_seconds=0)
    with TestClient(create_app(settings), headers={"X-API-Key": KEY}) as c:
        r = c.get("/readyz")
        deal = c.post("/v1/opportunities/score", json={"opportunities": [_deal(1)]})
    body = r.json()
    assert r.status_code == 503 and body["ready"] is False
    assert body["tasks"]["lead_quality"]["state"] == "loaded"
    assert body["tasks"]["stage_conversion"] == {"state": "failed", "version": None,
                                                 "reason": "loading failed: RuntimeError"}
    assert body["tasks"]["high_value"]["state"] == "not_registered"
    assert body["reason"] == "stage_conversion: loading failed: RuntimeError"
    assert deal.status_code == 503 and deal.json()["detail"].endswith("loading failed: RuntimeError")


def test_readyz_reports_the_export_and_a_broken_server_export_is_a_503_without_paths(tmp_path_factory, models):
    missing = tmp_path_factory.mktemp("gone") / "no-such-export"
    home = tmp_path_factory.mktemp("hostile")
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=f"sqlite:///{home / 'x.db'}", data=str(missing))
    with TestClient(create_app(settings, preloaded=models), headers={"X-API-Key": KEY}) as c:
        assert c.get("/readyz").json()["data"]["state"] == "not_read_yet"
        r = c.get("/v1/funnel")
        ready = c.get("/readyz").json()
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert "export cannot be read" in r.json()["detail"] and str(missing) not in r.text and str(home) not in r.text
    assert ready["data"]["state"] == "unreadable" and str(missing) not in ready["data"]["reason"]


def test_readyz_counts_the_rows_of_the_export_served(client, sample_export):
    assert client.get("/v1/funnel").status_code == 200
    data = client.get("/readyz").json()["data"]
    assert data["state"] == "readable"
    assert data["rows"]["opportunities"] == len(sample_export.opportunities)
    assert data["rows"]["leads"] == len(sample_export.leads)


# ------------------------------------------------------------------ interrupted training
def test_an_interrupted_training_ends_its_run_killed_and_its_version_is_not_listed(trained, train_config, tmp_path,
                                                                                  monkeypatch):
    import training.pipeline
    from models.registry import configure, describe_versions
    from training.pipeline import log_and_register

    client = configure(f"sqlite:///{tmp_path / 'mlflow.db'}")
    kwargs = dict(experiment="interrupted", artifact_location=(tmp_path / "a").as_uri(), cfg=train_config,
                  data_source="sample")
    first = log_and_register(trained, client, **kwargs)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.pipeline, "_register", interrupted)
    with pytest.raises(KeyboardInterrupt):
        log_and_register(trained, client, **kwargs)
    versions = client.search_model_versions("name = 'lead_quality'")
    assert len(versions) == 2
    broken = next(v for v in versions if v.version != first.version)
    assert broken.tags.get("incomplete") == "true" and not broken.aliases
    assert client.get_run(broken.run_id).info.status == "KILLED"
    assert [v["version"] for v in describe_versions(client, "lead_quality")] == [first.version]


@pytest.mark.parametrize("occurred_at", [1767225600, "1767225600", True, "9999-01-01T00:00:00Z", "1800-01-01"])
def test_an_outcome_time_is_a_strict_request_timestamp(client, occurred_at):
    r = client.post("/v1/outcomes", json={"outcomes": [{"record_id": "L-1", "outcome": "converted",
                                                        "occurred_at": occurred_at}]})
    assert r.status_code == 422 and _paths(r) == ["outcomes[0].occurred_at"], r.text
