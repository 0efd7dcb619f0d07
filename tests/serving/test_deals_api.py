"""Deals API: a deal sent inline scores exactly as in batch; errors (401, 422, 503); the funnel
and the forecast over the configured export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from features.settings import Settings
from models.deals import score_open_deals
from models.registry import LoadedModel
from serving.app import create_app

KEY = "test-key"


@pytest.fixture(scope="module")
def deal_scorer(sample_export):
    from training.deals import DealTrainConfig, build_deal_model

    return build_deal_model(sample_export, DealTrainConfig(snapshot_every_days=28, seed=7),
                            sample_export.exported_at).scorer


def _app(lead_scorer, sample_dir, tmp_path_factory, deal_scorer=None):
    home = tmp_path_factory.mktemp("deals_api")
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=f"sqlite:///{home / 'x.db'}",
                        data=str(sample_dir / "export"))
    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer)}
    if deal_scorer is not None:
        models["stage_conversion"] = LoadedModel("stage_conversion", "4", "champion", None, deal_scorer)
    return create_app(settings, preloaded=models)


@pytest.fixture(scope="module")
def client(lead_scorer, deal_scorer, sample_dir, tmp_path_factory):
    with TestClient(_app(lead_scorer, sample_dir, tmp_path_factory, deal_scorer), headers={"X-API-Key": KEY}) as c:
        yield c


def _iso(v) -> str | None:
    return None if pd.isna(v) else pd.Timestamp(v).isoformat()


def _num(v) -> float | None:
    return None if pd.isna(v) else float(v)


def _item(export, opp_id: str, as_of: pd.Timestamp) -> dict:
    """A deal as a CRM would send it, from the export (rows before as_of)."""
    o = export.opportunities.set_index("opportunity_id").loc[opp_id]
    h = export.stage_history
    h = h[(h["opportunity_id"] == opp_id) & (h["entered_at"] < as_of)]
    a = export.activities
    a = a[(a["opportunity_id"] == opp_id) & (a["occurred_at"] < as_of)]
    item = {
        "opportunity": {"opportunity_id": opp_id, "account_id": o["account_id"], "created_at": _iso(o["created_at"]),
                        "lead_id": None if pd.isna(o["lead_id"]) else o["lead_id"],
                        "owner_id": None if pd.isna(o["owner_id"]) else o["owner_id"],
                        "type": None if pd.isna(o["type"]) else o["type"],
                        "product": None if pd.isna(o["product"]) else o["product"],
                        "amount": _num(o["amount"]), "stage": o["stage"], "outcome": "open"},
        "stage_history": [{"stage": r.stage, "entered_at": _iso(r.entered_at), "amount": _num(r.amount),
                           "expected_close_date": _iso(r.expected_close_date)} for r in h.itertuples()],
        "activities": [{"activity_id": r.activity_id, "occurred_at": _iso(r.occurred_at), "type": r.type,
                        "direction": None if pd.isna(r.direction) else r.direction} for r in a.itertuples()],
    }
    if not pd.isna(o["lead_id"]):
        lead = export.leads.set_index("lead_id").loc[o["lead_id"]]
        item["lead"] = {"lead_id": o["lead_id"], "created_at": _iso(lead["created_at"]),
                        **{c: (None if pd.isna(lead[c]) else (float(lead[c]) if c == "budget_k" else lead[c]))
                           for c in ("source", "seniority", "campaign", "budget_k")}}
    acc = export.accounts.set_index("account_id").loc[o["account_id"]]
    item["account"] = {"account_id": o["account_id"], "created_at": _iso(acc["created_at"]),
                       **{c: (None if pd.isna(acc[c]) else acc[c]) for c in ("industry", "country", "tech_stack")},
                       **{c: _num(acc[c]) for c in ("employees", "annual_revenue")}}
    return item


def test_inline_deal_scores_like_the_batch(client, deal_scorer, sample_export):
    as_of = sample_export.exported_at
    batch, _ = score_open_deals(sample_export, deal_scorer, as_of)
    ids = batch["opportunity_id"].head(5).tolist()
    r = client.post("/v1/opportunities/score",
                    json={"as_of": as_of.isoformat(), "opportunities": [_item(sample_export, i, as_of) for i in ids]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Model-Version"] == "stage_conversion/4"
    got = {s["opportunity_id"]: s for s in body["scores"]}
    for row in batch.head(5).itertuples():
        s = got[row.opportunity_id]
        assert s["p_win"] == pytest.approx(row.p_win, abs=1e-9)
        assert s["p_win_within_horizon"] == pytest.approx(row.p_win_within_horizon, abs=1e-9)
        assert s["p_next_stage"] == pytest.approx(row.p_next_stage, abs=1e-9)
        assert s["expected_value"] == pytest.approx(row.expected_value, rel=1e-9)
        assert len(s["reasons"]) == 5 and s["reasons"][0]["text"]


def test_errors_name_the_field(client, sample_export, lead_scorer, sample_dir, tmp_path_factory):
    as_of = sample_export.exported_at
    opp = sample_export.opportunities
    open_id = opp[opp["outcome"] == "open"]["opportunity_id"].iloc[0]
    item = _item(sample_export, open_id, as_of)
    closed = {**item, "opportunity": {**item["opportunity"], "outcome": "won"}}
    r = client.post("/v1/opportunities/score", json={"as_of": as_of.isoformat(), "opportunities": [closed]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"].startswith("opportunities[0].opportunity.")
    bad = {**item, "stage_history": [{"stage": "negotiation??", "entered_at": item["opportunity"]["created_at"]}]}
    r = client.post("/v1/opportunities/score", json={"as_of": as_of.isoformat(), "opportunities": [bad]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"].startswith("opportunities[0].stage_history[0]")
    r = client.post("/v1/opportunities/score", json={"as_of": as_of.isoformat(), "opportunities": [item, item]})
    assert r.status_code == 422 and "duplicate" in r.json()["detail"]
    early = (as_of - pd.Timedelta(days=400)).isoformat()
    r = client.post("/v1/opportunities/score", json={"as_of": early, "opportunities": [item]})
    assert r.status_code == 422
    r = client.post("/v1/opportunities/score", json={"opportunities": [item]}, headers={"X-API-Key": "nope"})
    assert r.status_code == 401
    with TestClient(_app(lead_scorer, sample_dir, tmp_path_factory), headers={"X-API-Key": KEY}) as bare:
        r = bare.post("/v1/opportunities/score", json={"opportunities": [item]})
        assert r.status_code == 503 and "stage_conversion" in r.json()["detail"]
        assert bare.get("/v1/forecast").status_code == 503


def test_funnel_and_forecast(client, sample_export):
    r = client.get("/v1/funnel", params={"by": "team"})
    assert r.status_code == 200, r.text
    f = r.json()
    assert f["bottleneck"] in sample_export.open_stages
    assert [s["stage"] for s in f["overall"]] == list(sample_export.open_stages)
    assert {s["group"] for s in f["stages"]} <= set(sample_export.reps["team"]) | {"(none)", "unassigned"}
    assert client.get("/v1/funnel", params={"by": "colour"}).status_code == 422
    r = client.get("/v1/forecast", params={"by": "owner_id", "sims": 500})
    assert r.status_code == 200, r.text
    groups = r.json()["groups"]
    assert groups and all(g["p10"] <= g["p50"] <= g["p90"] for g in groups)
    total = client.get("/v1/forecast", params={"by": "none", "sims": 500}).json()["groups"]
    assert len(total) == 1
    assert total[0]["weighted_pipeline"] == pytest.approx(sum(g["weighted_pipeline"] for g in groups))
    assert np.isfinite(total[0]["expected_bookings"])


def test_a_deal_links_to_the_account_and_lead_sent_with_it(client, sample_export):
    """One request path for every task: a child record without its parent's id gets it; one
    naming another parent, or two different copies of one account, is a 422 naming the path."""
    as_of = sample_export.exported_at
    opp = sample_export.opportunities
    ids = opp[opp["outcome"] == "open"]["opportunity_id"].head(2).tolist()
    items = [_item(sample_export, i, as_of) for i in ids]
    sent = client.post("/v1/opportunities/score", json={"as_of": as_of.isoformat(), "opportunities": items})
    assert sent.status_code == 200, sent.text
    linked = [{**it, "opportunity": {k: v for k, v in it["opportunity"].items() if k not in ("account_id", "lead_id")}}
              for it in items]
    r = client.post("/v1/opportunities/score", json={"as_of": as_of.isoformat(), "opportunities": linked})
    assert r.status_code == 200, r.text
    assert [s["p_win"] for s in r.json()["scores"]] == [s["p_win"] for s in sent.json()["scores"]]
    other = [{**items[0], "opportunity": {**items[0]["opportunity"], "account_id": "someone-else"}}]
    r = client.post("/v1/opportunities/score", json={"as_of": as_of.isoformat(), "opportunities": other})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "opportunities[0].opportunity.account_id"
    twin = {**items[1], "account": {**items[0]["account"], "industry": "not the same"}}
    r = client.post("/v1/opportunities/score", json={"as_of": as_of.isoformat(), "opportunities": [items[0], twin]})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "opportunities[1].account"
