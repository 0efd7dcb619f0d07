"""GET /v1/forecast?period=month|quarter: the same numbers as models.forecast.period_forecast, the
team roll-up, 'unassigned' never a rep, and 422s naming the parameter."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from features.settings import Settings
from models.forecast import UNASSIGNED, period_forecast
from models.registry import LoadedModel
from serving.app import create_app

KEY = "test-key"


@pytest.fixture(scope="module")
def deal_scorer(sample_export):
    from training.deals import DealTrainConfig, build_deal_model

    return build_deal_model(sample_export, DealTrainConfig(snapshot_every_days=28, seed=7),
                            sample_export.exported_at).scorer


@pytest.fixture(scope="module")
def client(lead_scorer, deal_scorer, sample_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("forecast_api")
    settings = Settings(home=home, api_keys=[KEY], tracking_uri=f"sqlite:///{home / 'x.db'}",
                        data=str(sample_dir / "export"))
    models = {"lead_quality": LoadedModel("lead_quality", "1", "champion", None, lead_scorer),
              "stage_conversion": LoadedModel("stage_conversion", "4", "champion", None, deal_scorer)}
    with TestClient(create_app(settings, preloaded=models), headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.mark.parametrize("period", ["month", "quarter"])
def test_period_forecast_matches_the_model(client, sample_export, deal_scorer, period):
    r = client.get("/v1/forecast", params={"period": period, "by": "owner_id", "sims": 400, "seed": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    fc = period_forecast(sample_export, deal_scorer, sample_export.exported_at, period=period, by="owner_id",
                         n_sims=400, seed=2)
    assert body["period"] == period and body["start"].startswith(str(fc.start.date()))
    assert body["model"] == {"name": "stage_conversion", "version": "4"}
    assert body["has_crm_categories"] is True and body["total"]["crm_commit"] is not None
    groups = {g["group"]: g for g in body["groups"]}
    for row in fc.groups.to_dict("records"):
        g = groups[row["group"]]
        for col in ("won_so_far", "expected_open_pipeline", "expected_total", "p10", "p90", "weighted_pipeline"):
            assert g[col] == pytest.approx(row[col], abs=0.006), (row["group"], col)
    assert body["total"]["expected_total"] == pytest.approx(sum(g["expected_total"] for g in body["groups"]), abs=0.1)
    assert {t["group"] for t in body["teams"]} <= set(sample_export.reps["team"]) | {UNASSIGNED, "(none)"}
    assert all(g["is_rep"] == (g["group"] != UNASSIGNED) for g in body["groups"])


def test_period_forecast_errors_name_the_parameter(client):
    r = client.get("/v1/forecast", params={"period": "week"})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "period"
    r = client.get("/v1/forecast", params={"period": "month", "horizon_days": 30})
    assert r.status_code == 422 and r.json()["errors"][0]["path"] == "horizon_days"
    r = client.get("/v1/forecast", params={"period": "month", "by": "team", "sims": 200})
    assert r.status_code == 200 and r.json()["teams"] is None and not any(g["is_rep"] for g in r.json()["groups"])
