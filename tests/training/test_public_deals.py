"""The Maven CRM deal path on a small slice of ../shared/data (skipped when it is absent):
stage history honestly derived from engage/close dates, the synthetic expected close date
stated, close_value kept out of the deal features, and the deal-win comparison running."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.adapters import import_export

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "maven_crm"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (public datasets) not present")


def _bench():
    spec = importlib.util.spec_from_file_location("public_deals", REPO / "benchmarks" / "public_deals.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def maven_slice(tmp_path_factory) -> Path:
    """Every 6th deal (about 1,470 over the whole 2016-10..2017-12 history) and the lookup files."""
    d = tmp_path_factory.mktemp("maven")
    for name in ("accounts.csv", "products.csv", "sales_teams.csv"):
        pd.read_csv(DATA / name, dtype=str, keep_default_na=False).to_csv(d / name, index=False)
    pipe = pd.read_csv(DATA / "sales_pipeline.csv", dtype=str, keep_default_na=False)
    pipe.iloc[::6].to_csv(d / "sales_pipeline.csv", index=False)
    return d


def test_stage_history_is_derived_from_the_real_dates(maven_slice: Path):
    r = import_export("maven_crm", maven_slice, skip_bad_rows=True)
    assert r.synthetic == ["stage_history.expected_close_date"]  # stated, with its reason
    assert any("expected_close_date is SYNTHETIC" in n and "45 days" in n for n in r.notes)
    raw = pd.read_csv(maven_slice / "sales_pipeline.csv").set_index("opportunity_id")
    sh = r.export.stage_history
    opps = r.export.opportunities.set_index("opportunity_id")
    # one engage entry per imported deal, at engage_date, in the last open stage, at list price
    engaged = sh[sh["stage"] == "contract"].set_index("opportunity_id")
    assert set(engaged.index) == set(opps.index) and engaged.index.is_unique
    assert (engaged["entered_at"].dt.strftime("%Y-%m-%d") == raw.loc[engaged.index, "engage_date"]).all()
    assert ((engaged["expected_close_date"] - engaged["entered_at"]) == pd.Timedelta(days=45)).all()
    assert (engaged["amount"] == opps.loc[engaged.index, "amount"]).all()
    # a decision entry exactly for won/lost deals, at close_date; what was booked for a won deal
    dec = sh[sh["stage"].isin(["won", "lost"])].set_index("opportunity_id")
    closed = raw.loc[list(opps.index)]
    closed = closed[closed["deal_stage"].isin(["Won", "Lost"])]
    assert set(dec.index) == set(closed.index)
    assert (dec["entered_at"].dt.strftime("%Y-%m-%d") == closed.loc[dec.index, "close_date"]).all()
    won = dec[dec["stage"] == "won"]
    assert np.allclose(won["amount"], closed.loc[won.index, "close_value"].astype(float))
    lost = dec[dec["stage"] == "lost"]
    assert (lost["amount"] > 0).all()  # the list price, never the leaking 0
    # no entry before the deal's creation, no entry of a still-open deal after its engagement
    assert (sh["entered_at"] >= opps.loc[sh["opportunity_id"], "created_at"].to_numpy()).all()
    assert set(opps.loc[opps["outcome"] == "open"].index).isdisjoint(dec.index)


def test_deal_win_comparison_runs_point_in_time_without_close_value(maven_slice: Path):
    bench = _bench()
    export, info = bench.load_maven(maven_slice)
    assert info["synthetic"] == ["stage_history.expected_close_date"]
    cfg = bench.deal_config()
    origins = [pd.Timestamp("2017-09-01", tz="UTC")]
    cmp = bench.deal_win(export, origins, cfg, progress=False)
    opps = export.opportunities.set_index("opportunity_id")
    # exactly the deals open at the origin: created before it, not closed before it
    o = opps.loc[cmp["opportunity_id"]]
    assert (o["created_at"] < origins[0]).all()
    assert not (o["closed_at"] < origins[0]).any()
    for col in ("funnelcast", "funnelcast_h", "stage_win_rate", "logistic_regression"):
        assert cmp[col].between(0, 1).all(), col
    # won within the horizon implies won eventually, and matches the close dates
    h = cmp[cmp["won_within_horizon"] == 1]
    assert (h["won"] == 1).all()
    assert (opps.loc[h["opportunity_id"], "closed_at"] < origins[0] + pd.Timedelta(days=30)).all()
    table = bench.deal_win_table(cmp)
    assert set(table["model"]) == {"funnelcast", "stage win rate (CRM)", "logistic regression"}
    from features.deals import DealFeatureSpec

    spec = DealFeatureSpec.from_export(export, horizon_days=cfg.horizon_days, exclude=cfg.exclude, as_of=origins[0])
    assert "close_value" not in spec.feature_names and "lead_close_value" not in spec.feature_names
