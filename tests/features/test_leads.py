"""Point-in-time tests of the lead features: the future never changes a feature, and the
vectorised frame equals a deliberately naive per-lead loop."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pandas as pd
import pytest

from features.contract import Export
from features.leads import (
    LeadFeatureSpec,
    converted_within_horizon,
    lead_context,
    lead_features,
    lead_snapshots,
)
from features.pit import open_leads


def _features(export: Export, as_of: pd.Timestamp, spec: LeadFeatureSpec) -> pd.DataFrame:
    leads = open_leads(export.leads, as_of)
    ctx = lead_context(export, as_of, spec.horizon_days)
    return lead_features(leads, export.accounts, export.activities, as_of, ctx, spec)


def _as_of(export: Export, frac: float) -> pd.Timestamp:
    lo, hi = export.leads["created_at"].min(), export.exported_at
    return (lo + (hi - lo) * frac).floor("D")


def _with_future_rewritten(export: Export, as_of: pd.Timestamp, rng: np.random.Generator) -> Export:
    """The same export with everything at or after ``as_of`` scrambled or added to."""
    leads = export.leads.copy()
    future = leads["converted_at"] >= as_of
    leads.loc[future, "converted_at"] = as_of + pd.Timedelta(hours=1)
    disq = leads["disqualified_at"] >= as_of
    leads.loc[disq, "disqualified_at"] = pd.NaT
    # leads created later get other fields
    later = leads["created_at"] >= as_of
    leads.loc[later, "source"] = "referral"

    acts = export.activities
    lead_ids = open_leads(export.leads, as_of)["lead_id"].to_numpy()
    n = 500
    junk = pd.DataFrame(
        {
            "activity_id": [f"FUTURE{i}" for i in range(n)],
            "occurred_at": as_of + pd.to_timedelta(rng.uniform(0, 200, n), unit="D"),
            "type": rng.choice(["email", "web_visit", "meeting", "event"], n),
            "lead_id": rng.choice(lead_ids, n),
            "opportunity_id": pd.Series([np.nan] * n, dtype="str"),
            "account_id": pd.Series([np.nan] * n, dtype="str"),
            "direction": rng.choice(["inbound", "outbound"], n),
            "score": np.nan,
        }
    )
    # and rows exactly at as_of are invisible too
    junk.loc[0, "occurred_at"] = as_of
    acts = pd.concat([acts.drop(index=acts.index[acts["occurred_at"] >= as_of]), junk[acts.columns]], ignore_index=True)

    opps = export.opportunities.copy()
    closed_later = opps["closed_at"] >= as_of
    opps.loc[closed_later, "outcome"] = "won"
    opps.loc[closed_later, "amount"] = 1e9
    accounts = export.accounts.copy()
    new_acc = accounts["created_at"] >= as_of
    accounts.loc[new_acc, "industry"] = "changed"
    return dataclasses.replace(export, accounts=accounts, leads=leads, opportunities=opps, activities=acts)


@pytest.mark.parametrize("frac", [0.4, 0.7, 0.95])
@pytest.mark.parametrize("seed", [0, 1])
def test_rows_after_as_of_never_change_a_feature(sample_export, frac, seed, assert_future_is_invisible):
    as_of = _as_of(sample_export, frac)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=as_of)
    changed = _with_future_rewritten(sample_export, as_of, np.random.default_rng(seed))
    assert_future_is_invisible(lambda export: _features(export, as_of, spec), sample_export, changed)


def test_context_only_reads_the_past(sample_export):
    as_of = _as_of(sample_export, 0.6)
    a = lead_context(sample_export, as_of)
    b = lead_context(_with_future_rewritten(sample_export, as_of, np.random.default_rng(3)), as_of)
    assert a.source_rate == b.source_rate and a.owner_rate == b.owner_rate
    assert a.owner_open_leads == b.owner_open_leads
    pd.testing.assert_frame_equal(a.account_history, b.account_history)


def test_context_newer_than_as_of_is_refused(sample_export):
    as_of = _as_of(sample_export, 0.5)
    spec = LeadFeatureSpec.from_export(sample_export)
    ctx = lead_context(sample_export, as_of + pd.Timedelta(days=1))
    leads = open_leads(sample_export.leads, as_of)
    with pytest.raises(ValueError, match="would leak"):
        lead_features(leads, sample_export.accounts, sample_export.activities, as_of, ctx, spec)


def _naive_features(
    lead: pd.Series, accounts: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp, ctx, spec: LeadFeatureSpec
) -> dict:
    """One lead at a time, plain Python: the reference for the vectorised frame."""
    day = 86400.0
    row: dict[str, object] = {}
    for c in spec.lead_categoricals:
        v = lead.get(c)
        row[c] = None if pd.isna(v) else str(v)
    for c in spec.lead_numerics:
        v = lead.get(c)
        row[c] = math.nan if pd.isna(v) else float(v)
    account = None
    for _, a in accounts.iterrows():
        if a["account_id"] == lead["account_id"] and a["created_at"] < as_of:
            account = a
            break
    for c in spec.account_categoricals:
        v = None if account is None else account.get(c)
        row[f"account_{c}"] = None if v is None or pd.isna(v) else str(v)
    for c in spec.account_numerics:
        v = None if account is None else account.get(c)
        row[f"account_{c}"] = math.nan if v is None or pd.isna(v) else float(v)
    row["lead_age_days"] = (as_of - lead["created_at"]).total_seconds() / day
    row["account_age_days"] = math.nan if account is None else (as_of - account["created_at"]).total_seconds() / day
    mine = [a for a in activities.itertuples() if a.lead_id == lead["lead_id"] and a.occurred_at < as_of]
    ages = {}
    for t in spec.activity_types:
        ages[t] = [
            (as_of - a.occurred_at).total_seconds() / day
            for a in mine
            if (a.type if pd.isna(a.direction) else f"{a.type}_{a.direction}") == t
        ]
        for w in spec.windows:
            row[f"{t}_{w}d"] = float(sum(1 for x in ages[t] if x < w))
        row[f"{t}_total"] = float(len(ages[t]))
        row[f"{t}_per_week"] = len(ages[t]) * 7.0 / max(row["lead_age_days"], 1.0)
        row[f"days_since_{t}"] = min(ages[t]) if ages[t] else math.nan
    inbound = [(as_of - a.occurred_at).total_seconds() / day for a in mine if a.direction == "inbound"]
    for w in spec.windows:
        row[f"inbound_{w}d"] = float(sum(1 for x in inbound if x < w))
    all_ages = [(as_of - a.occurred_at).total_seconds() / day for a in mine]
    row["activities_total"] = float(len(all_ages))
    row["days_since_activity"] = min(all_ages) if all_ages else math.nan
    src, owner = lead["source"], lead["owner_id"]
    row["source_conversion_rate"] = ctx.source_rate.get(src, ctx.global_rate) if isinstance(src, str) else ctx.global_rate
    row["owner_conversion_rate"] = ctx.owner_rate.get(owner, ctx.global_rate) if isinstance(owner, str) else ctx.global_rate
    row["owner_open_leads"] = float(ctx.owner_open_leads.get(owner, 0)) if isinstance(owner, str) else 0.0
    hist = ctx.account_history
    for c in ("won_deals", "won_amount", "lost_deals", "open_opportunities"):
        acc_id = lead["account_id"]
        row[f"account_{c}"] = float(hist.loc[acc_id, c]) if isinstance(acc_id, str) and acc_id in hist.index else 0.0
    return row


def _assert_equals_naive_loop(
    frame: pd.DataFrame, leads: pd.DataFrame, accounts: pd.DataFrame, activities: pd.DataFrame,
    as_of: pd.Timestamp, ctx, spec: LeadFeatureSpec,
) -> None:
    assert list(frame.index) == list(leads["lead_id"]) and list(frame.columns) == spec.feature_names
    for _, lead in leads.iterrows():
        expected = _naive_features(lead, accounts, activities, as_of, ctx, spec)
        got = frame.loc[lead["lead_id"]]
        for col in spec.feature_names:
            e, g = expected[col], got[col]
            if e is None or (isinstance(e, float) and math.isnan(e)):
                assert pd.isna(g), (lead["lead_id"], col, g)
            elif isinstance(e, str):
                assert g == e, (lead["lead_id"], col, g, e)
            else:
                assert g == pytest.approx(e, rel=1e-9, abs=1e-9), (lead["lead_id"], col, g, e)


@pytest.mark.parametrize("frac", [0.5, 0.9])
def test_vectorised_frame_equals_naive_loop(sample_export, frac):
    as_of = _as_of(sample_export, frac)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=as_of)
    ctx = lead_context(sample_export, as_of)
    leads = open_leads(sample_export.leads, as_of)
    frame = lead_features(leads, sample_export.accounts, sample_export.activities, as_of, ctx, spec)
    sample = leads.sample(n=min(40, len(leads)), random_state=0)
    _assert_equals_naive_loop(frame.loc[sample["lead_id"]], sample, sample_export.accounts, sample_export.activities,
                              as_of, ctx, spec)


def test_one_lead_scores_like_in_a_batch(sample_export):
    """Features of a lead computed alone (as the API does) equal its row in the batch frame."""
    as_of = _as_of(sample_export, 0.8)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=as_of)
    frame = _features(sample_export, as_of, spec)
    ctx = lead_context(sample_export, as_of)
    lead = open_leads(sample_export.leads, as_of).iloc[[3]]
    acts = sample_export.activities[sample_export.activities["lead_id"] == lead["lead_id"].iloc[0]]
    acc = sample_export.accounts[sample_export.accounts["account_id"].isin(lead["account_id"])]
    alone = lead_features(lead, acc, acts, as_of, ctx, spec)
    pd.testing.assert_frame_equal(alone, frame.loc[alone.index], check_dtype=False)


def test_label_is_conversion_within_horizon():
    leads = pd.DataFrame(
        {
            "lead_id": ["a", "b", "c", "d"],
            "converted_at": pd.to_datetime(
                ["2025-01-10", "2025-05-01", None, "2024-12-31"], utc=True
            ),
        }
    )
    as_of = pd.Timestamp("2025-01-01", tz="UTC")
    y = converted_within_horizon(leads, as_of, 91)
    assert y.to_dict() == {"a": 1, "b": 0, "c": 0, "d": 0}


def test_snapshots_hold_only_open_leads_with_labels(sample_export):
    as_of = _as_of(sample_export, 0.5)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=as_of)
    snaps = lead_snapshots(sample_export, [as_of], spec)
    open_ids = set(open_leads(sample_export.leads, as_of)["lead_id"])
    assert set(snaps["lead_id"]) == open_ids
    assert snaps["label"].isin([0, 1]).all() and 0 < snaps["label"].mean() < 1


def _request_frames(export: Export, lead_ids, as_of: pd.Timestamp, rng: np.random.Generator):
    """What an API request carries for ``lead_ids``, made messy: accounts dropped, sent twice or
    created after ``as_of``, activities after ``as_of`` or of other leads, fields missing."""
    leads = export.leads[export.leads["lead_id"].isin(lead_ids)].copy()
    accounts = export.accounts[export.accounts["account_id"].isin(leads["account_id"])].copy()
    acts = export.activities[export.activities["lead_id"].isin(leads["lead_id"])].copy()
    if len(accounts) and rng.random() < 0.5:  # an account the request does not send
        accounts = accounts.drop(index=accounts.index[rng.integers(len(accounts))])
    if len(accounts) and rng.random() < 0.5:  # a later copy of an account: the first row wins
        dup = accounts.iloc[[0]].assign(industry="duplicate", employees=1.0)
        accounts = pd.concat([accounts, dup], ignore_index=True)
    if len(accounts) and rng.random() < 0.3:  # an account created at or after as_of is invisible
        accounts.loc[accounts.index[-1], "created_at"] = as_of + pd.Timedelta(hours=int(rng.integers(0, 5)))
    for col, frame in (("source", leads), ("owner_id", leads), ("seniority", leads), ("industry", accounts)):
        if len(frame) and rng.random() < 0.4:
            frame.loc[frame.index[rng.integers(len(frame))], col] = np.nan
    if len(leads) and rng.random() < 0.3:
        leads.loc[leads.index[0], "account_id"] = np.nan
    if len(acts):
        future = acts.sample(n=min(5, len(acts)), random_state=int(rng.integers(1 << 30))).copy()
        future["occurred_at"] = as_of + pd.to_timedelta(rng.uniform(0, 30, len(future)), unit="D")
        future.iloc[0, future.columns.get_loc("occurred_at")] = as_of  # exactly at as_of: invisible
        other = acts.sample(n=min(3, len(acts)), random_state=1).assign(lead_id="not-in-request")
        unknown = acts.sample(n=min(3, len(acts)), random_state=2).assign(type="carrier_pigeon")
        undirected = acts.sample(n=min(3, len(acts)), random_state=3)
        undirected["direction"] = pd.Series(np.nan, index=undirected.index, dtype="str")
        acts = pd.concat([acts, future, other, unknown, undirected], ignore_index=True)
        acts = acts.sample(frac=1.0, random_state=int(rng.integers(1 << 30)))
    return leads, accounts, acts


@pytest.mark.parametrize("seed", range(6))
def test_messy_requests_equal_the_naive_loop(sample_export, seed):
    """What the API sends (1 to 12 leads with their records, made messy) gives the naive loop's
    features, as a batch and each lead alone."""
    rng = np.random.default_rng(seed)
    as_of = _as_of(sample_export, rng.uniform(0.5, 0.95))
    spec = LeadFeatureSpec.from_export(sample_export, as_of=as_of)
    ctx = lead_context(sample_export, as_of)
    open_ids = open_leads(sample_export.leads, as_of)["lead_id"].to_numpy()
    for _ in range(8):
        ids = rng.choice(open_ids, size=int(rng.integers(1, 12)), replace=False)
        leads, accounts, acts = _request_frames(sample_export, ids, as_of, rng)
        if rng.random() < 0.2:  # a custom field the request leaves out
            leads = leads.drop(columns=[c for c in spec.lead_numerics if c in leads])
        frame = lead_features(leads, accounts, acts, as_of, ctx, spec)
        _assert_equals_naive_loop(frame, leads, accounts, acts, as_of, ctx, spec)
        alone = lead_features(leads.iloc[[-1]], accounts, acts, as_of, ctx, spec)
        pd.testing.assert_frame_equal(alone, frame.iloc[[-1]], check_dtype=False)


def test_each_lead_alone_equals_its_row_in_the_snapshot(sample_export):
    """A lead alone (as the API sends it) against its row among all open leads (the batch job)."""
    as_of = _as_of(sample_export, 0.9)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=as_of)
    frame = _features(sample_export, as_of, spec)
    ctx = lead_context(sample_export, as_of)
    open_now = open_leads(sample_export.leads, as_of)
    for i in range(0, len(open_now), max(1, len(open_now) // 60)):
        lead = open_now.iloc[[i]]
        acts = sample_export.activities[sample_export.activities["lead_id"] == lead["lead_id"].iloc[0]]
        acc = sample_export.accounts[sample_export.accounts["account_id"].isin(lead["account_id"])]
        alone = lead_features(lead, acc, acts, as_of, ctx, spec)
        # a column missing for one lead alone is all-NaN object, in the batch a string column
        pd.testing.assert_frame_equal(
            alone, frame.loc[alone.index], check_dtype=False, check_exact=False, rtol=1e-12, atol=0
        )


def test_context_survives_pickling(sample_export):
    """A trained model carries its context: the account lookups are rebuilt from the history on load."""
    ctx = lead_context(sample_export, _as_of(sample_export, 0.7))
    loaded = pickle.loads(pickle.dumps(ctx))
    assert loaded.account_row == ctx.account_row and len(ctx.account_row) > 0
    np.testing.assert_array_equal(loaded.account_totals, ctx.account_totals)
    assert "account_row" not in ctx.__getstate__()


def test_a_lead_given_twice_is_refused_by_name(sample_export):
    as_of = _as_of(sample_export, 0.7)
    spec = LeadFeatureSpec.from_export(sample_export, as_of=as_of)
    ctx = lead_context(sample_export, as_of)
    lead = open_leads(sample_export.leads, as_of).iloc[[0, 0]]
    with pytest.raises(ValueError, match=f"lead_id '{lead['lead_id'].iloc[0]}' appears more than once"):
        lead_features(lead, sample_export.accounts, sample_export.activities, as_of, ctx, spec)
