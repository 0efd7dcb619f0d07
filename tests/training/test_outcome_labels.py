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
