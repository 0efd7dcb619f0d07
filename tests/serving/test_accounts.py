"""Accounts API: scoring with reasons, traits, allocation and its 422s, the worklist, and the
managers' page in a real headless browser (Debian's chromium; skipped when absent)."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient

from features.settings import Settings
from models.registry import LoadedModel
from serving.app import create_app

KEY = "test-key"


@pytest.fixture(scope="module")
def account_result(account_sample):
    """The high_value model needs a few hundred customers: the session's scale-0.3 sample (tests/conftest.py)."""
    return account_sample[3]


@pytest.fixture(scope="module")
def deal_scorer(sample_export):
    from training.deals import DealTrainConfig, build_deal_model

    return build_deal_model(sample_export, DealTrainConfig(snapshot_every_days=28, seed=7),
                            sample_export.exported_at).scorer


def _make_app(tmp_path_factory, sample_dir, models):
    home = tmp_path_factory.mktemp("acc")
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=f"sqlite:///{home / 'x.db'}",
                        data=str(sample_dir / "export"))
    return create_app(settings, preloaded=models)


@pytest.fixture(scope="module")
def app(lead_scorer, account_result, deal_scorer, sample_dir, tmp_path_factory):
    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer),
              "high_value": LoadedModel("high_value", "1", "champion", None, account_result.scorer),
              "stage_conversion": LoadedModel("stage_conversion", "1", "champion", None, deal_scorer)}
    return _make_app(tmp_path_factory, sample_dir, models)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        yield c


def test_account_scores_have_probability_value_and_reasons(client, sample_export):
    acc = sample_export.accounts.iloc[0]
    body = {"as_of": sample_export.exported_at.isoformat(), "accounts": [
        {"account": {"account_id": acc["account_id"], "created_at": acc["created_at"].isoformat(),
                     "industry": "software", "employees": 900, "tech_stack": "aws"},
         "opportunities": [{"opportunity_id": "o1", "created_at": "2026-01-01", "amount": 50000, "stage": "won",
                            "outcome": "won", "closed_at": "2026-02-01", "product": "platform"}]},
        {"account": {"account_id": "new-prospect", "created_at": "2026-05-01"}}]}
    r = client.post("/v1/accounts/score", json=body)
    assert r.status_code == 200, r.text
    s = r.json()["scores"]
    assert [x["account_id"] for x in s] == [acc["account_id"], "new-prospect"]
    assert 0 <= s[0]["probability"] <= 1 and s[0]["expected_value"] >= 0 and s[0]["is_customer"]
    assert not s[1]["is_customer"] and len(s[0]["reasons"]) == 5 and "probability" in s[0]["reasons"][0]["text"]


def test_account_records_of_another_account_or_bad_values_are_422_naming_the_path(client):
    account = {"account_id": "acc-1", "created_at": "2025-01-01"}
    deal = {"opportunity_id": "o1", "created_at": "2026-01-01", "stage": "won", "outcome": "won"}
    r = client.post("/v1/accounts/score", json={"accounts": [
        {"account": account, "opportunities": [{**deal, "account_id": "acc-2"}]}]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "accounts[0].opportunities[0].account_id"
    r = client.post("/v1/accounts/score", json={"accounts": [
        {"account": account, "opportunities": [{**deal, "amount": -5}]}]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "accounts[0].opportunities[0].amount"
    r = client.post("/v1/accounts/score", json={"accounts": [
        {"account": account, "opportunities": [{**deal, "outcome": "maybe"}]}]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "accounts[0].opportunities[0].outcome"
    r = client.post("/v1/accounts/score", json={"accounts": [{"account": account}, {"account": account}]})
    assert r.status_code == 422 and [e["path"] for e in r.json()["errors"]] == [
        "accounts[0].account.account_id", "accounts[1].account.account_id"]


def test_the_configured_export_is_loaded_once_for_funnel_forecast_and_worklist(lead_scorer, account_result,
                                                                              deal_scorer, sample_dir, tmp_path_factory):
    from unittest.mock import patch

    from features.io import load_export

    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer),
              "high_value": LoadedModel("high_value", "1", "champion", None, account_result.scorer),
              "stage_conversion": LoadedModel("stage_conversion", "1", "champion", None, deal_scorer)}
    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return load_export(*args, **kwargs)

    # one refresh reads it (serving/refresh.py); answers it did not store are computed on that same copy
    with patch("serving.refresh.load_export", counted), patch("serving.deps.load_export", counted), \
            TestClient(_make_app(tmp_path_factory, sample_dir, models), headers={"X-API-Key": KEY}) as c:
        assert c.get("/v1/funnel").status_code == 200
        assert c.get("/v1/forecast", params={"sims": 100}).status_code == 200
        assert c.get("/v1/worklist").status_code == 200
    assert len(calls) == 1


def test_traits_route(client, account_result):
    r = client.get("/v1/traits").json()
    assert r["traits"] and len(r["traits"]) == len(account_result.scorer.traits)
    assert r["importance"][0]["importance"] >= r["importance"][-1]["importance"]


def test_allocation_and_its_422s(client):
    reps = [{"owner_id": "a", "capacity": 1}, {"owner_id": "b", "capacity": 2, "region": "emea"}]
    items = [{"item_id": "x", "expected_value": 5}, {"item_id": "y", "expected_value": 9, "region": "emea"},
             {"item_id": "z", "expected_value": 1}, {"item_id": "w", "expected_value": 3}]
    r = client.post("/v1/allocation", json={"reps": reps, "items": items})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["total_value"] == 17 and out["unassigned"] == ["z"]
    for wl in out["worklists"]:
        assert [i["rank"] for i in wl["items"]] == list(range(1, len(wl["items"]) + 1))
        assert [i["value"] for i in wl["items"]] == sorted((i["value"] for i in wl["items"]), reverse=True)
        assert len(wl["items"]) <= wl["capacity"]
    bad = client.post("/v1/allocation", json={"reps": [{"owner_id": "a", "capacity": -2}], "items": items})
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "reps[0].capacity"
    bad = client.post("/v1/allocation", json={"reps": reps, "items": [{"item_id": "x", "expected_value": 1, "owner_id": "ghost"}]})
    assert bad.status_code == 422 and "ghost" in bad.json()["detail"] and bad.json()["errors"][0]["path"] == "items[0].owner_id"


def test_worklist_ranks_by_value_per_effort_and_filters(client):
    w = client.get("/v1/worklist", params={"limit": 1000}).json()
    v = [i["value_per_effort"] for i in w["items"]]
    assert v == sorted(v, reverse=True) and {i["kind"] for i in w["items"]} == {"lead", "deal", "account"}
    assert w["missing"] == []
    for i in w["items"]:
        assert i["value_per_effort"] == pytest.approx(i["expected_value"] / i["effort"]) and i["reasons"]
    owner = w["owners"][0]
    mine = client.get("/v1/worklist", params={"owner": owner}).json()["items"]
    assert mine and all(i["owner_id"] == owner for i in mine)
    assert client.get("/v1/worklist", params={"owner": "nobody"}).status_code == 422
    assert TestClient(client.app).get("/v1/worklist").status_code == 401


def test_worklist_deals_are_p_won_times_amount_of_the_open_deals(client, deal_scorer, sample_export):
    from models.deals import score_open_deals

    scored, opps = score_open_deals(sample_export, deal_scorer, sample_export.exported_at)
    w = client.get("/v1/worklist", params={"limit": 1000, "effort_lead": 1000, "effort_account": 1000}).json()
    deals = {i["id"]: i for i in w["items"] if i["kind"] == "deal"}
    assert deals and set(deals) <= set(opps["opportunity_id"])
    ev = dict(zip(scored["opportunity_id"], scored["p_win"] * scored["amount"]))
    p_win = dict(zip(scored["opportunity_id"], scored["p_win"]))
    owners = dict(zip(opps["opportunity_id"], opps["owner_id"]))
    stage_effort = {e["stage"]: e["effort"] for e in w["efforts"] if e["kind"] == "deal"}  # measured per stage
    stages = dict(zip(scored["opportunity_id"], scored["stage"]))
    assert w["effort_unit"] == "rep touches" and set(stage_effort) == set(sample_export.open_stages)
    for oid, item in deals.items():
        assert item["expected_value"] == pytest.approx(ev[oid]) and item["score"] == pytest.approx(p_win[oid])
        assert item["effort"] == stage_effort[stages[oid]] and item["owner_id"] == owners[oid]
        assert item["reasons"][1].startswith(f"In {stages[oid]}") and "P(won)" in item["reasons"][1]
    # with leads and accounts made expensive, the top of the list is deals
    assert w["items"][0]["kind"] == "deal"
    cheap = client.get("/v1/worklist", params={"limit": 1000, "effort_deal": 0.5}).json()["items"]
    d = next(i for i in cheap if i["kind"] == "deal")
    assert d["effort"] == 0.5 and d["value_per_effort"] == pytest.approx(2 * d["expected_value"])
    assert client.get("/v1/worklist", params={"effort_deal": 0.5}).json()["efforts"][1] == {
        "kind": "deal", "stage": None, "effort": 0.5, "source": "request", "examples": 0, "rule": "set by the request"}
    assert client.get("/v1/worklist", params={"effort_deal": 0}).status_code == 422
    team = next(t for t in w["teams"])
    mine = client.get("/v1/worklist", params={"team": team, "limit": 1000}).json()["items"]
    assert mine and all(i["team"] == team for i in mine) and any(i["kind"] == "deal" for i in mine)


def test_worklist_efforts_a_setting_then_a_request_overrides(client):
    measured = client.get("/v1/worklist", params={"limit": 1000}).json()
    assert {e["source"] for e in measured["efforts"]} == {"data"} and all(e["examples"] >= 20 for e in measured["efforts"])
    state = client.app.state
    settings = state.settings
    state.settings = settings.model_copy(update={"effort_lead": 7.0, "effort_account": 9.0})
    try:
        w = client.get("/v1/worklist", params={"limit": 1000, "effort_account": 4.0}).json()
    finally:
        state.settings = settings
    by_kind = {e["kind"]: e for e in w["efforts"] if e["kind"] != "deal"}
    assert (by_kind["lead"]["effort"], by_kind["lead"]["source"]) == (7.0, "setting")
    assert (by_kind["account"]["effort"], by_kind["account"]["source"]) == (4.0, "request")
    assert [e for e in w["efforts"] if e["kind"] == "deal"] == [e for e in measured["efforts"] if e["kind"] == "deal"]
    assert {i["effort"] for i in w["items"] if i["kind"] == "lead"} == {7.0}
    assert {i["effort"] for i in w["items"] if i["kind"] == "account"} == {4.0}


def test_worklist_without_a_deal_model_says_deals_are_unavailable(lead_scorer, account_result, sample_dir,
                                                                   tmp_path_factory):
    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer),
              "high_value": LoadedModel("high_value", "1", "champion", None, account_result.scorer)}
    with TestClient(_make_app(tmp_path_factory, sample_dir, models), headers={"X-API-Key": KEY}) as c:
        r = c.get("/v1/worklist", params={"limit": 1000})
        assert r.status_code == 200, r.text
        w = r.json()
        assert {i["kind"] for i in w["items"]} == {"lead", "account"}
        assert any(m.startswith("deals:") and "stage_conversion" in m for m in w["missing"])


def test_page_is_served_without_network_references(client):
    html = TestClient(client.app).get("/").text
    assert "Prioritised list" in html and "http" not in html.replace("http-equiv", "")
    js = TestClient(client.app).get("/static/page.js").text
    assert "https://" not in js and "http://" not in js


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page_app(lead_scorer, account_result, deal_scorer, sample_dir, tmp_path_factory, mlflow_store):
    """The app of the page test, on the session's MLflow store (lead_quality registered there), so
    the model-accuracy section has a registered model with its evaluation metrics."""
    home = tmp_path_factory.mktemp("page")
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=mlflow_store["uri"], data=str(sample_dir / "export"))
    models = {"lead_quality": LoadedModel("lead_quality", str(mlflow_store["version"]), "champion", None, lead_scorer),
              "high_value": LoadedModel("high_value", "1", "champion", None, account_result.scorer),
              "stage_conversion": LoadedModel("stage_conversion", "1", "champion", None, deal_scorer)}
    return create_app(settings, preloaded=models)


@contextlib.contextmanager
def _served(app):
    """``app`` served on a free local port in a thread (yields the port), stopped on the way out."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _first_refresh_answer(route, retry_after: int) -> None:
    """The API's answer while its first scored snapshot is being built: a 503 with Retry-After."""
    route.fulfill(status=503, headers={"Retry-After": str(retry_after), "Content-Type": "application/json"},
                  body='{"detail": "no scored snapshot yet: a refresh is running; retry in a minute"}')


def _open(sync_api, p, port):
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"])
    page = browser.new_page(viewport={"width": 1240, "height": 900})
    for _ in range(200):  # the server thread needs a moment to bind; no sleeping: poll the page load
        try:
            page.goto(f"http://127.0.0.1:{port}/", timeout=2000)
            break
        except sync_api.Error:
            continue
    return browser, page


def _check_worklist_and_drill_down(page, client):
    rows = page.locator("#worklist tbody tr")
    # the first refresh runs inside the page's first worklist request here (the start refresh is off in these
    # tests): about 20 s alone, over 60 s on a CI machine running four test workers on two cores
    rows.first.wait_for(timeout=180000)
    assert rows.count() == 50
    kinds = set(page.locator("#worklist tbody tr .kind").all_inner_texts())
    assert "deal" in kinds and kinds <= {"lead", "deal", "account"}
    w = client.get("/v1/worklist").json()
    fresh = page.inner_text("#freshness")  # freshness: the snapshot's refresh time when there is one, else as_of
    shown = (w.get("refreshed_at") or w["as_of"])[:16].replace("T", " ") + " UTC"  # to the minute, as people read it
    assert shown in fresh and ("ago" in fresh or "old" in fresh) and "+00:00" not in fresh
    # the efforts the ranking used, and where they came from
    efforts = page.inner_text("#efforts")
    assert efforts.startswith(f"Effort per item, in {w['effort_unit']}: lead ")
    for e in w["efforts"]:
        assert (f"{e['stage']} {e['effort']:,.0f}" if e["stage"] else f"{e['kind']} {e['effort']:,.0f}") in efforts
    assert page.inner_text("#per-effort") == "value per rep touch"
    # the two reasons a rep acts on first in the row, every reason on hover; an account shows no probability
    first = page.locator("#worklist tbody tr").first
    assert first.locator("td.why div").all_inner_texts() == w["items"][0]["reasons"][:2]
    assert first.locator("td.why").get_attribute("title") == "\n".join(w["items"][0]["reasons"])
    for row, it in zip(page.locator("#worklist tbody tr").all()[:50], w["items"], strict=False):
        if it["kind"] == "account":
            assert row.locator("td.num").first.inner_text() == "–"
    if any("trend" in i for i in w["items"]):  # w16-live's snapshots add trends: one arrow per item
        assert page.locator("#worklist tbody td.trend").count() == rows.count()
    # the drill-down: click a rep, see the deals and leads behind their number
    rep = page.locator("#worklist tbody .rep-link").first
    owner = rep.get_attribute("data-rep")
    rep.click()
    page.wait_for_function("() => document.querySelectorAll('#drill-items tbody tr').length > 0", timeout=60000)
    mine = client.get("/v1/worklist", params={"owner": owner, "limit": 200}).json()["items"]
    assert page.locator("#drill-items tbody tr").count() == len(mine)
    assert owner in page.inner_text("#drill-title")
    summary = page.inner_text("#drill-summary")
    assert f"{sum(i['kind'] == 'deal' for i in mine)} deals, {sum(i['kind'] == 'lead' for i in mine)} leads" in summary


def _check_download(page, client, tmp_path):
    """The list a manager downloads: every item of the filtered list, rounded, reasons in one column."""
    with page.expect_download(timeout=60000) as got:
        page.click("#download")
    path = tmp_path / got.value.suggested_filename
    got.value.save_as(path)
    w = client.get("/v1/worklist", params={"limit": 1000}).json()
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert path.name == f"worklist-{w['as_of'][:10]}.csv" and len(rows) == len(w["items"])
    for row, it in zip(rows[:100], w["items"], strict=False):
        assert (row["kind"], row["id"], row["reasons"]) == (it["kind"], it["id"], " | ".join(it["reasons"]))
        assert row["expected value"] == str(round(it["expected_value"])) and "." not in row["value per rep touch"]
        assert row["score"] == ("" if it["kind"] == "account" else str(round(it["score"] * 100)))
        assert row["owner"] == (it["owner_id"] or "unassigned")


def _check_funnel(page, client):
    funnel = client.get("/v1/funnel").json()
    page.wait_for_function("() => document.querySelectorAll('#funnel-svg .stage-bar').length > 0", timeout=60000)
    assert page.inner_text("#bottleneck").startswith(f"Bottleneck: {funnel['bottleneck']}.")
    assert page.locator("#funnel-svg .stage-bar").count() == len(funnel["overall"])
    assert page.inner_text("#funnel tbody tr.bottleneck td >> nth=0") == funnel["bottleneck"]
    labels = page.locator("#funnel-svg .stage-label").evaluate_all("ts => ts.map(t => t.textContent)")
    for st, label in zip(funnel["overall"], labels, strict=True):  # the label's numbers are the counts beside it
        assert label.startswith(f"{st['entered']:,} entered: {st['moved_on']:,} on, {st['lost']:,} lost, "
                                f"{st['still_open']:,} open")
        if st["conversion"] is not None:
            assert f"{round(st['conversion'] * 100)}% of {st['moved_on'] + st['lost']:,} decided" in label
    assert "censored" in page.inner_text("body")


def _check_forecast(page, client):
    forecast = client.get("/v1/forecast", params={"period": "quarter", "by": "owner_id", "sims": 2000}).json()
    page.wait_for_function("() => document.querySelectorAll('#forecast-svg .interval').length > 0", timeout=60000)
    reps = page.locator("#forecast-svg g.rep").evaluate_all("gs => gs.map(g => g.dataset.rep)")
    assert reps == [g["group"] for g in forecast["groups"] if g["is_rep"]] and len(reps) >= 2
    assert "unassigned" not in reps
    n = len(forecast["groups"])
    assert page.locator("#forecast-svg .interval").count() == n == page.locator("#forecast-svg .p50").count()
    widths = page.locator("#forecast-svg .interval").evaluate_all("rs => rs.map(r => +r.getAttribute('width'))")
    spread = [g["p90"] - g["p10"] for g in forecast["groups"]]
    assert widths[max(range(n), key=spread.__getitem__)] == max(widths)
    note = page.inner_text("#forecast-note")
    assert note.startswith("Bookings expected, quarter") and f"{round(forecast['total']['expected_total']):,}" in note
    teams = page.locator("#forecast-teams tr[data-team]").evaluate_all("rs => rs.map(r => r.dataset.team)")
    assert teams == [t["group"] for t in forecast["teams"]] + ["company"]
    page.select_option("#period", "rolling")
    page.wait_for_function("() => document.querySelector('#forecast-note').textContent.includes('next 91 days')",
                           timeout=60000)


def _check_accuracy(page, client):
    page.wait_for_function("() => document.querySelector('#accuracy .model') !== null", timeout=60000)
    models = client.get("/v1/models").json()["models"]
    lead = next(m for m in models if m["name"] == "lead_quality" and m["loaded"])
    block = page.inner_text("#accuracy .model[data-task='lead_quality']")
    assert f"v{lead['version']}" in block and f"AUC {lead['metrics']['eval_roc_auc']:.3f}" in block
    perf = client.get("/v1/models/lead_quality/performance").json()
    assert ("no reported outcomes yet" in block) == (not any(v["n"] for v in perf["versions"]))


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_managers_page_in_a_headless_browser(page_app, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with _served(page_app) as port:
        with TestClient(page_app, headers={"X-API-Key": KEY}) as client, sync_api.sync_playwright() as p:
            browser, page = _open(sync_api, p, port)
            page.fill("#key", KEY)
            page.click("#connect")
            # nothing blocks: every section says "loading" until its own answer arrives
            assert page.locator(".loading").count() >= 1 or page.locator("#worklist tbody tr").count() == 50
            _check_worklist_and_drill_down(page, client)
            _check_download(page, client, tmp_path)
            _check_funnel(page, client)
            _check_forecast(page, client)
            _check_accuracy(page, client)
            traits = client.get("/v1/traits").json()["traits"]
            page.wait_for_function("() => document.querySelector('#traits-svg') !== null", timeout=30000)
            assert traits and page.locator("#traits tbody tr").count() == len(traits)
            assert page.inner_text("#traits tbody tr >> nth=0").lower().startswith(traits[0]["label"].lower())  # plain words
            assert "_" not in traits[0]["label"] and traits[0]["label"]
            page.select_option("#period", "quarter")
            page.wait_for_function("() => document.querySelector('#forecast-note').textContent.includes('quarter')",
                                   timeout=60000)
            # the docs' screenshot: MANAGERS_PAGE_PNG=docs/img/managers-page.png pytest -k headless_browser
            page.screenshot(path=os.environ.get("MANAGERS_PAGE_PNG") or str(tmp_path / "managers-page.png"), full_page=True)
            owner = page.locator("#owner option").nth(1).get_attribute("value")
            page.select_option("#owner", owner)
            page.wait_for_function(
                "o => [...document.querySelectorAll('#worklist tbody tr')].every(r => r.dataset.owner === o)", arg=owner,
                timeout=30000)
            browser.close()


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_the_page_waits_out_a_first_refresh_longer_than_a_few_retries(page_app):
    """While the first scored snapshot is built the API answers 503 with Retry-After; the page keeps asking
    (here 12 times, each after 1 s: past the eight tries it used to give up after) and then draws the funnel,
    instead of leaving the manager a red "retry in a minute"."""
    sync_api = pytest.importorskip("playwright.sync_api")
    busy = {"left": 12}

    def first_refresh(route):
        if busy["left"] > 0:
            busy["left"] -= 1
            _first_refresh_answer(route, retry_after=1)
        else:
            route.continue_()

    with _served(page_app) as port:
        with TestClient(page_app, headers={"X-API-Key": KEY}) as client, sync_api.sync_playwright() as p:
            browser, page = _open(sync_api, p, port)
            page.route("**/v1/funnel", first_refresh)
            page.fill("#key", KEY)
            page.click("#connect")
            for _ in range(240):  # the server's own first refresh (the routed 503s come on top of it)
                if client.get("/v1/funnel").status_code == 200:
                    break
                time.sleep(0.5)
            _check_funnel(page, client)
            assert busy["left"] == 0 and "not available" not in page.inner_text("#bottleneck")
            browser.close()


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_the_page_says_a_refused_key_once_and_shows_the_first_refresh_until_the_list_arrives(page_app):
    """A refused key is said once under the key field (each section: "not loaded"). While the server computes its
    first scores (/readyz: refreshing, since when; the worklist a 503 with Retry-After) the page says it is connected
    and waiting, since when the server's refresh started, with the list's table hidden; when /readyz shows the
    snapshot the list is asked again at once (before its Retry-After of 10 s runs out) and drawn, without a reload."""
    import json
    from datetime import UTC, datetime, timedelta

    sync_api = pytest.importorskip("playwright.sync_api")
    busy, asked = {"on": True}, []
    began = datetime.now(UTC) - timedelta(minutes=3)  # the server's first refresh, started before the page opened

    def readyz(route):  # the real readiness, with the first refresh still running while "busy"
        answer = route.fetch()
        body = answer.json()
        if busy["on"]:
            body["snapshot"] = {"snapshot_id": None, "status": "refreshing", "error": None,
                                "refresh_started_at": began.isoformat()}
        route.fulfill(response=answer, body=json.dumps(body))

    def worklist(route):
        asked.append((time.monotonic(), busy["on"]))
        if busy["on"]:
            _first_refresh_answer(route, retry_after=10)
        else:
            route.continue_()

    with _served(page_app) as port:
        with TestClient(page_app, headers={"X-API-Key": KEY}) as client, sync_api.sync_playwright() as p:
            assert client.get("/v1/worklist").status_code == 200  # the real snapshot, there when "busy" ends
            browser, page = _open(sync_api, p, port)
            page.fill("#key", "not-the-key")
            page.click("#connect")
            page.wait_for_function("() => document.querySelector('#freshness').textContent.includes('did not accept')",
                                   timeout=30000)
            page.wait_for_function("() => document.querySelectorAll('.loading').length === 0", timeout=30000)
            assert page.get_attribute("#freshness", "class") == "error"
            for id_ in ("worklist-state", "forecast-note", "bottleneck", "accuracy", "traits-chart"):
                assert page.inner_text(f"#{id_}") == "Not loaded: the API key was not accepted (see above)."
            assert not page.is_visible("#worklist")

            page.route("**/readyz", readyz)
            page.route("**/v1/worklist?*", worklist)
            page.fill("#key", KEY)
            page.click("#connect")
            page.wait_for_function("() => document.querySelector('#freshness').textContent"
                                   ".includes('first scores are being computed')", timeout=30000)
            page.wait_for_function("() => /server's first scores/.test(document.querySelector('#worklist-state')"
                                   ".textContent)", timeout=30000)
            fresh = page.inner_text("#freshness")
            assert fresh.startswith("Connected.") and f"(started {began:%H:%M} UTC, " in fresh and " so far)" in fresh
            assert "waiting since" not in fresh  # the refresh's own start, not when this page began to wait
            assert not page.is_visible("#worklist") and page.is_disabled("#download")
            assert asked and all(on for _, on in asked)

            busy["on"] = False
            released = time.monotonic()
            page.locator("#worklist tbody tr").first.wait_for(timeout=30000)
            assert page.is_visible("#worklist") and page.locator("#worklist tbody tr").count() == 50
            assert page.inner_text("#freshness").startswith("Scores computed by a refresh started ")
            after = [t for t, on in asked if not on]
            assert after and after[0] - released < 9  # woken by /readyz, not by the 10 s Retry-After
            browser.close()


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")
def test_the_freshness_line_keeps_counting_and_trait_labels_stay_clear_of_their_bars(page_app):
    """The line under the key says when the scores' refresh started (the snapshot's refreshed_at is its start),
    and its "ago" goes on counting while the page stays open: seconds, then minutes, then hours. The traits
    chart wraps a long label (a longer one ends in "…", the full text its tooltip) so that no label runs into
    a bar, at the default width and in a narrow window."""
    import json
    from datetime import UTC, datetime, timedelta

    sync_api = pytest.importorskip("playwright.sync_api")
    started = datetime.now(UTC) - timedelta(seconds=20)
    long_label = ("Industry is software and company size (employees) at least 200 and budget (thousands) at least "
                  "100 and tech stack is aws and lead source is paid_search and company revenue at least 200,000,000")

    def worklist(route):  # the real list, from a snapshot whose refresh started 20 s ago
        body = route.fetch().json()
        body.update(refreshed_at=started.isoformat(), age_seconds=20.0)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    def traits(route):  # the real traits, the first with a label longer than three lines of the chart
        body = route.fetch().json()
        body["traits"][0]["label"] = long_label
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    def overlaps():  # label boxes that reach past the left edge of the bars
        return page.evaluate("""() => {
          const left = Math.min(...[...document.querySelectorAll('#traits-svg .trait-bar')].map(
            (r) => r.getBoundingClientRect().left));
          return [...document.querySelectorAll('#traits-svg .trait-label')]
            .filter((t) => t.getBoundingClientRect().right > left - 2).map((t) => t.textContent);
        }""")

    with _served(page_app) as port:
        with TestClient(page_app, headers={"X-API-Key": KEY}) as client, sync_api.sync_playwright() as p:
            assert client.get("/v1/worklist").status_code == 200 and client.get("/v1/traits").json()["traits"]
            browser, page = _open(sync_api, p, port)
            page.clock.install()  # the page's clock (Date, timers), moved on below; it runs as usual meanwhile
            page.reload()  # the page's timers set on the installed clock
            page.route("**/v1/worklist?*", worklist)
            page.route("**/v1/traits", traits)
            page.fill("#key", KEY)
            page.click("#connect")
            page.locator("#worklist tbody tr").first.wait_for(timeout=60000)
            fresh = page.inner_text("#freshness")
            assert fresh.startswith(f"Scores computed by a refresh started {started:%Y-%m-%d %H:%M} UTC (")
            assert " s ago) from data as of " in fresh and "refreshed" not in fresh
            page.clock.fast_forward("01:40")  # 20 s + 100 s: two minutes, without a reload or a new request
            page.wait_for_function("() => document.querySelector('#freshness').textContent.includes('(2 min ago)')",
                                   timeout=10000)
            page.clock.fast_forward("03:00:00")
            page.wait_for_function("() => document.querySelector('#freshness').textContent.includes('(3 h ago)')",
                                   timeout=10000)
            assert int(page.get_attribute("#freshness", "data-age")) > 3 * 3600

            page.wait_for_function("() => document.querySelector('#traits-svg') !== null", timeout=60000)
            first = page.locator("#traits-svg .trait-label").first
            assert first.locator("title").text_content() == long_label  # the full text on hover
            assert first.locator("tspan").count() == 3 and first.locator("tspan").last.text_content().endswith("…")
            assert overlaps() == []
            page.set_viewport_size({"width": 800, "height": 900})
            assert overlaps() == []
            svg = page.locator("#traits-svg").bounding_box()
            assert svg["x"] + svg["width"] <= 800  # scaled down to the window, not cut off
            browser.close()
