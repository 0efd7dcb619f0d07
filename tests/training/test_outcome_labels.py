"""Stored outcomes (POST /v1/outcomes) join the next training, point in time."""

from __future__ import annotations

import pandas as pd

from serving.store import OperationsStore
from training.outcomes import apply_outcomes, stored_outcomes
from training.train import build_lead_model

DAY = pd.Timedelta(days=1)


def _naive(snaps: pd.DataFrame, outcomes: pd.DataFrame, h: int) -> list[int]:
    """The rule, one row at a time: an outcome before as_of + h decides the label."""
    by_id = {r.record_id: r for r in outcomes.itertuples()}
    out = []
    for row in snaps.itertuples():
        o = by_id.get(str(row.lead_id))
        if o is None or o.occurred_at >= row.as_of + pd.Timedelta(days=h):
            out.append(int(row.label))
        else:
            out.append(int(o.outcome == "converted" and o.occurred_at >= row.as_of))
    return out


def _pick_outcomes(snaps: pd.DataFrame, cutoff: pd.Timestamp, h: int) -> tuple[pd.DataFrame, dict]:
    last = snaps["as_of"].max()
    latest = snaps[snaps["as_of"] == last]
    neg = latest[latest["label"] == 0]["lead_id"].astype(str).tolist()
    pos = latest[latest["label"] == 1]["lead_id"].astype(str).tolist()
    picks = {
        "converted_in_window": (neg[0], "converted", last + 10 * DAY),  # export says no: now 1 at `last`
        "disqualified_in_window": (pos[0], "disqualified", last + 5 * DAY),  # export says yes: now 0
        "after_horizon": (neg[1], "converted", last + (h + 1) * DAY),  # after every label window: no change
        "after_cutoff": (neg[2], "converted", cutoff + DAY),  # not known at training time
    }
    frame = pd.DataFrame([{"record_id": r, "outcome": o, "occurred_at": t} for r, o, t in picks.values()])
    return frame, {k: v[0] for k, v in picks.items()}


def test_outcomes_decide_labels_inside_their_window_only(trained, train_config):
    snaps, h = trained.snapshots, train_config.horizon_days
    outcomes, ids = _pick_outcomes(snaps, pd.Timestamp("2100-01-01", tz="UTC"), h)
    new, stats = apply_outcomes(snaps, outcomes, "lead_id", h)
    assert new["label"].tolist() == _naive(snaps, outcomes, h)
    last = snaps["as_of"].max()
    at_last = new[new["as_of"] == last].set_index(new[new["as_of"] == last]["lead_id"].astype(str))["label"]
    assert at_last[ids["converted_in_window"]] == 1
    assert at_last[ids["disqualified_in_window"]] == 0
    for k in ("after_horizon", "after_cutoff"):  # outcome after every label window of the record: untouched
        rows = snaps["lead_id"].astype(str) == ids[k]
        assert new.loc[rows, "label"].tolist() == snaps.loc[rows, "label"].tolist()
    assert stats.labels_changed >= 2
    assert stats.labels_changed == int((new["label"] != snaps["label"]).sum())
    assert new.drop(columns="label").equals(snaps.drop(columns="label"))  # features untouched


def test_train_reads_the_store_and_ignores_outcomes_after_the_cutoff(tmp_path, sample_export, trained, train_config):
    cutoff = sample_export.exported_at
    h = train_config.horizon_days
    outcomes, ids = _pick_outcomes(trained.snapshots, cutoff, h)
    url = f"sqlite:///{tmp_path / 'operations.db'}"
    assert stored_outcomes(url, "lead_quality").empty  # no database yet
    store = OperationsStore(url)
    store.upsert_outcomes([{"task": "lead_quality", **r} for r in outcomes.to_dict("records")])
    store.upsert_outcomes([{"task": "deal_win", "record_id": ids["converted_in_window"], "outcome": "won",
                            "occurred_at": cutoff - DAY}])  # another task's outcome: not for this model
    read = stored_outcomes(url, "lead_quality", cutoff)
    assert sorted(read["record_id"]) == sorted(v for k, v in ids.items() if k != "after_cutoff")
    assert str(read["occurred_at"].dt.tz) == "UTC"

    # the unfiltered store passed straight in: build_lead_model drops what is after its cutoff itself
    everything = stored_outcomes(url, "lead_quality")
    assert len(everything) == 4
    result = build_lead_model(sample_export, train_config, cutoff, outcomes=everything)
    expected, stats = apply_outcomes(trained.snapshots, read, "lead_id", h)
    assert result.snapshots["label"].tolist() == expected["label"].tolist()
    assert result.outcome_labels == stats
    assert result.outcome_labels.outcomes == 3 and result.outcome_labels.labels_changed >= 2
    assert result.scorer.metadata["outcome_labels"]["labels_changed"] == stats.labels_changed


# --- deals: won / lost outcomes join `train` ---------------------------------------------------------

def _naive_deals(snaps: pd.DataFrame, outcomes: pd.DataFrame, last_stage: str) -> pd.DataFrame:
    """The deal rule, one row at a time (see training.outcomes.apply_deal_outcomes)."""
    by_id = {r.record_id: r for r in outcomes.itertuples()}
    rows = []
    for row in snaps.to_dict("records"):
        o = by_id.get(str(row["opportunity_id"]))
        if o is not None:
            if row["as_of"] >= o.occurred_at:
                continue  # closed before this snapshot: not open then
            won = o.outcome == "won"
            row["closed_at"] = o.occurred_at
            row["won"] = 1.0 if won else 0.0
            amount = row["won_amount"] if pd.notna(row["won_amount"]) else row["amount_filled"]
            row["won_amount"] = amount if won else float("nan")
            nxt = row["next_stage_at"]
            if won and row["stage"] == last_stage and not (pd.notna(nxt) and nxt < o.occurred_at):
                row["next_stage_at"] = o.occurred_at
            if not won and pd.notna(nxt) and nxt >= o.occurred_at:
                row["next_stage_at"] = pd.NaT
        rows.append(row)
    return pd.DataFrame(rows, columns=snaps.columns)


def _deal_picks(snaps: pd.DataFrame, cutoff: pd.Timestamp) -> tuple[pd.DataFrame, dict]:
    """Outcomes that contradict the export on deals open at a mid-history snapshot."""
    times = sorted(snaps["as_of"].unique())
    t = pd.Timestamp(times[len(times) // 2])
    at = snaps[snaps["as_of"] == t]
    lost = at[at["won"] == 0]["opportunity_id"].astype(str).tolist()
    won = at[at["won"] == 1]["opportunity_id"].astype(str).tolist()
    picks = {
        "won_instead_of_lost": (lost[0], "won", t + 10 * DAY),
        "lost_instead_of_won": (won[0], "lost", t + 5 * DAY),
        "after_cutoff": (lost[1], "won", cutoff + DAY),
    }
    frame = pd.DataFrame([{"record_id": r, "outcome": o, "occurred_at": ts} for r, o, ts in picks.values()])
    return frame, {k: v[0] for k, v in picks.items()}


def test_deal_outcomes_replace_what_the_export_says_happened(deal_snapshot_frame, sample_export):
    from training.outcomes import apply_deal_outcomes

    spec, snaps = deal_snapshot_frame
    last_stage = spec.open_stages[-1]
    outcomes, ids = _deal_picks(snaps, pd.Timestamp("2100-01-01", tz="UTC"))
    new, stats = apply_deal_outcomes(snaps, outcomes, last_stage)
    expected = _naive_deals(snaps, outcomes, last_stage)
    pd.testing.assert_frame_equal(new.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
    rows = new.set_index(new["opportunity_id"].astype(str))
    assert (rows.loc[[ids["won_instead_of_lost"]], "won"] == 1).all()
    assert (rows.loc[[ids["lost_instead_of_won"]], "won"] == 0).all()
    assert rows.loc[[ids["lost_instead_of_won"]], "won_amount"].isna().all()
    assert stats.rows_dropped > 0  # snapshots after a reported close are not open deals any more
    assert stats.rows_dropped == len(snaps) - len(new)
    assert stats.labels_changed >= 2 and stats.outcomes == 3
    features = [c for c in spec.feature_names if c in new.columns]
    kept = snaps.merge(new[["opportunity_id", "as_of"]], on=["opportunity_id", "as_of"])
    pd.testing.assert_frame_equal(kept[features].reset_index(drop=True), new[features].reset_index(drop=True))


def test_train_deals_joins_stored_outcomes_and_tuned_params(tmp_path, sample_dir, sample_export, deal_snapshot_frame,
                                                            monkeypatch, capsys):
    """`funnelcast train --task stage_conversion`: stored deal outcomes before the cutoff decide labels (one after it
    is ignored), `--no-outcomes` turns them off, and the parameters of `tune --task stage_conversion`
    are used; all of it logged to MLflow."""
    import json

    from features.settings import get_settings
    from models.registry import configure
    from training.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("FUNNELCAST_HOME", str(home))
    get_settings.cache_clear()
    try:
        settings = get_settings()
        home.mkdir()
        cutoff = sample_export.exported_at
        outcomes, ids = _deal_picks(deal_snapshot_frame[1], cutoff)  # the snapshots `train` builds below
        store = OperationsStore(settings.resolved_store_url())
        store.upsert_outcomes([{"task": "stage_conversion", **r} for r in outcomes.to_dict("records")])
        store.upsert_outcomes([{"task": "lead_quality", "record_id": ids["after_cutoff"], "outcome": "converted",
                                "occurred_at": cutoff - DAY}])  # another task: not for the deal models
        read = stored_outcomes(settings.resolved_store_url(), "stage_conversion", cutoff)
        assert sorted(read["record_id"]) == sorted([ids["won_instead_of_lost"], ids["lost_instead_of_won"]])
        tuned = {"learning_rate": 0.07, "num_leaves": 5, "min_child_samples": 40, "feature_fraction": 0.9,
                 "bagging_fraction": 0.9, "lambda_l2": 2.0, "cat_smooth": 12.0}
        (home / "tuned").mkdir()
        (home / "tuned" / "stage_conversion.json").write_text(json.dumps({"params": tuned, "study": "s", "trial": 4}))

        data = str(sample_dir / "export")
        assert main(["train", "--task", "stage_conversion", "--data", data, "--snapshot-every", "28d", "--seed", "7"]) == 0
        out = capsys.readouterr().out
        assert "stage_conversion: using 2 stored outcome(s)" in out and "tuned parameters of study 's' trial 4" in out
        assert main(["train", "--task", "stage_conversion", "--data", data, "--snapshot-every", "28d", "--seed", "7",
                     "--no-outcomes", "--default-params"]) == 0
        client = configure(settings.resolved_tracking_uri())
        runs = {str(v.version): client.get_run(v.run_id).data for v in client.search_model_versions("name='stage_conversion'")}
        used, off = runs["1"], runs["2"]
        assert used.params["stored_outcomes"] == "used" and off.params["stored_outcomes"] == "off"
        assert used.metrics["outcomes_outcomes"] == 2 and used.metrics["outcomes_labels_changed"] >= 2
        assert used.metrics["outcomes_rows_dropped"] > 0
        assert "outcomes_outcomes" not in off.metrics
        assert float(used.params["lgbm_learning_rate"]) == 0.07 and used.params["params_source"] == "tuned:s#4"
        assert float(off.params["lgbm_learning_rate"]) == 0.05 and off.params["params_source"] == "default"
        assert used.metrics["eval_win_h_roc_auc"] != off.metrics["eval_win_h_roc_auc"]
    finally:
        get_settings.cache_clear()
