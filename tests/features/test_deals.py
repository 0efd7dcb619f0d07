"""Point-in-time tests of the deal histories: the future never changes a feature, the
vectorised frame equals a deliberately naive per-deal loop, and the labels are censored."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features.columns import activity_kind
from features.contract import Export
from features.deals import (
    DealFeatureSpec,
    deal_context,
    deal_features,
    deal_outcomes,
    deal_snapshots,
    deal_state,
    next_stage_entered_at,
    open_opportunities,
    predicted_amount,
)

DAY = pd.Timedelta(days=1)


def _as_of(export: Export, frac: float) -> pd.Timestamp:
    lo, hi = export.opportunities["created_at"].min(), export.exported_at
    return (lo + (hi - lo) * frac).floor("D")


def _features(export: Export, as_of: pd.Timestamp, spec: DealFeatureSpec) -> pd.DataFrame:
    opps = open_opportunities(export.opportunities, export.stage_history, as_of)
    ctx = deal_context(export, as_of, spec.horizon_days)
    return deal_features(opps, export.stage_history, export.activities, export.leads, export.accounts, as_of, ctx, spec)


def _future_rewritten(export: Export, as_of: pd.Timestamp, rng: np.random.Generator) -> Export:
    """The same export with everything at or after ``as_of`` rewritten, and the snapshot row
    of every opportunity (stage, amount, close date, outcome) changed: it is export-time state."""
    opps = export.opportunities.copy()
    opps["stage"] = "contract"
    opps["amount"] = 1e9
    opps["expected_close_date"] = as_of - 400 * DAY
    later = opps["closed_at"] >= as_of
    opps.loc[later, "outcome"] = "won"
    opps.loc[later, "closed_at"] = as_of + pd.Timedelta(hours=1)
    open_ids = open_opportunities(export.opportunities, export.stage_history, as_of)["opportunity_id"].to_numpy()

    hist = export.stage_history
    hist = hist[hist["entered_at"] < as_of]
    n = 300
    junk_hist = pd.DataFrame(
        {
            "opportunity_id": rng.choice(open_ids, n),
            "stage": rng.choice(["proposal", "contract", "won", "lost", "qualification"], n),
            "entered_at": as_of + pd.to_timedelta(rng.uniform(0, 100, n), unit="D"),
            "amount": rng.uniform(1, 1e6, n),
            "expected_close_date": as_of + pd.to_timedelta(rng.integers(-50, 300, n), unit="D"),
        }
    )
    junk_hist.loc[0, "entered_at"] = as_of  # exactly at as_of is invisible too
    hist = pd.concat([hist, junk_hist[hist.columns]], ignore_index=True)

    acts = export.activities
    acts = acts[acts["occurred_at"] < as_of]
    junk = pd.DataFrame(
        {
            "activity_id": [f"FUTURE{i}" for i in range(n)],
            "occurred_at": as_of + pd.to_timedelta(rng.uniform(0, 200, n), unit="D"),
            "type": rng.choice(["meeting", "call", "quote_sent", "email"], n),
            "lead_id": pd.Series([np.nan] * n, dtype="str"),
            "opportunity_id": rng.choice(open_ids, n),
            "account_id": pd.Series([np.nan] * n, dtype="str"),
            "direction": rng.choice(["inbound", "outbound"], n),
            "score": np.nan,
        }
    )
    junk.loc[0, "occurred_at"] = as_of
    acts = pd.concat([acts, junk[acts.columns]], ignore_index=True)
    leads = export.leads.copy()
    leads.loc[leads["created_at"] >= as_of, "source"] = "referral"
    accounts = export.accounts.copy()
    accounts.loc[accounts["created_at"] >= as_of, "industry"] = "changed"
    return Export(accounts=accounts, leads=leads, opportunities=opps, stage_history=hist, activities=acts,
                  reps=export.reps, open_stages=export.open_stages, exported_at=export.exported_at,
                  custom_fields=export.custom_fields)


@pytest.mark.parametrize("seed,frac", [(0, 0.5), (1, 0.8)])
def test_rows_after_as_of_change_nothing(sample_export, seed, frac, assert_future_is_invisible):
    as_of = _as_of(sample_export, frac)
    spec = DealFeatureSpec.from_export(sample_export, as_of=as_of)
    rewritten = _future_rewritten(sample_export, as_of, np.random.default_rng(seed))
    before = assert_future_is_invisible(lambda export: _features(export, as_of, spec), sample_export, rewritten)
    # and the open set is the same although every outcome after as_of was rewritten
    assert set(open_opportunities(rewritten.opportunities, rewritten.stage_history, as_of)["opportunity_id"]) == set(
        before.index
    )


def _naive_state(opp: pd.Series, hist: pd.DataFrame, as_of: pd.Timestamp, stages: tuple[str, ...]) -> dict:
    """One deal, the obvious way: walk its entries before as_of in time order."""
    order = [*stages, "won", "lost"]
    rows = hist[(hist["opportunity_id"] == opp["opportunity_id"]) & (hist["entered_at"] < as_of)]
    rows = rows.sort_values("entered_at", kind="stable")
    out = {f"days_in_{s}": 0.0 for s in stages}
    if rows.empty:
        out.update(stage=stages[0], days_in_stage=(as_of - opp["created_at"]) / DAY, advances=0.0, regressions=0.0,
                   amount=math.nan, close_date_pushes=0.0, close_date_push_days=0.0, amount_changes=0.0)
        out[f"days_in_{stages[0]}"] = (as_of - opp["created_at"]) / DAY
        return out
    adv = reg = 0
    amounts, closes = [], []
    entries = list(rows.itertuples())
    for i, r in enumerate(entries):
        end = entries[i + 1].entered_at if i + 1 < len(entries) else as_of
        if r.stage in stages:
            out[f"days_in_{r.stage}"] += (end - r.entered_at) / DAY
        if i:
            a, b = order.index(entries[i - 1].stage), order.index(r.stage)
            adv += b > a
            reg += b < a
        if not pd.isna(r.amount):
            amounts.append(r.amount)
        if not pd.isna(r.expected_close_date):
            closes.append(r.expected_close_date)
    pushes = [(b - a) / DAY for a, b in zip(closes, closes[1:], strict=False) if b > a]
    out.update(
        stage=entries[-1].stage,
        days_in_stage=(as_of - entries[-1].entered_at) / DAY,
        advances=float(adv),
        regressions=float(reg),
        amount=amounts[-1] if amounts else math.nan,
        amount_changes=float(sum(b != a for a, b in zip(amounts, amounts[1:], strict=False))),
        close_date_pushes=float(len(pushes)),
        close_date_push_days=float(sum(pushes)),
    )
    return out


def test_vectorised_equals_naive_loop(sample_export):
    as_of = _as_of(sample_export, 0.7)
    stages = tuple(sample_export.open_stages)
    opps = open_opportunities(sample_export.opportunities, sample_export.stage_history, as_of)
    state = deal_state(opps, sample_export.stage_history, as_of, stages)
    spec = DealFeatureSpec.from_export(sample_export, as_of=as_of)
    X = _features(sample_export, as_of, spec)
    acts = sample_export.activities
    acts = acts[acts["occurred_at"] < as_of].assign(kind=lambda a: activity_kind(a))
    for _, opp in opps.head(60).iterrows():
        want = _naive_state(opp, sample_export.stage_history, as_of, stages)
        got = state.loc[opp["opportunity_id"]]
        for k, v in want.items():
            if isinstance(v, str):
                assert got[k] == v, (opp["opportunity_id"], k)
            else:
                assert got[k] == pytest.approx(v, abs=1e-6, nan_ok=True), (opp["opportunity_id"], k)
        mine = acts[acts["opportunity_id"] == opp["opportunity_id"]]
        row = X.loc[opp["opportunity_id"]]
        assert row["activities_total"] == len(mine)
        meetings = mine[mine["kind"] == "meeting"]
        assert row["meeting_30d"] == ((as_of - meetings["occurred_at"]) < 30 * DAY).sum()
        last = (as_of - meetings["occurred_at"].max()) / DAY if len(meetings) else math.nan
        assert row["days_since_meeting"] == pytest.approx(last, nan_ok=True)


def test_context_is_point_in_time(sample_export):
    """Owner and account history only count deals decided before as_of."""
    as_of = _as_of(sample_export, 0.6)
    ctx = deal_context(sample_export, as_of)
    opps = sample_export.opportunities
    decided = opps[opps["closed_at"] < as_of]
    recent = decided[decided["closed_at"] >= as_of - pd.Timedelta(days=365)]
    owner = recent["owner_id"].iloc[0]
    mine = recent[recent["owner_id"] == owner]
    assert ctx.owner_history.loc[owner, "won_deals"] == (mine["outcome"] == "won").sum()
    assert ctx.owner_history.loc[owner, "lost_deals"] == (mine["outcome"] == "lost").sum()
    acc = decided["account_id"].iloc[0]
    assert ctx.account_history.loc[acc, "won_deals"] == ((decided["account_id"] == acc) & (decided["outcome"] == "won")).sum()
    assert set(ctx.stage_win_rate) == set(sample_export.open_stages)
    assert all(0 < v < 1 for v in ctx.stage_win_rate.values())


def test_missing_amount_is_predicted_from_similar_deals(sample_export):
    as_of = _as_of(sample_export, 0.8)
    ctx = deal_context(sample_export, as_of)
    opps = sample_export.opportunities.head(5).copy()
    opps["amount"] = np.nan
    pred = predicted_amount(opps, ctx)
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)


def test_snapshots_keep_open_deals_censored(sample_export):
    """Deals still open at the export are kept, their outcome missing (censored), not dropped."""
    spec = DealFeatureSpec.from_export(sample_export, as_of=sample_export.exported_at)
    t = sample_export.exported_at.floor("D")
    snaps = deal_snapshots(sample_export, [t - 28 * DAY, t], spec)
    last = snaps[snaps["as_of"] == t]
    assert last["won"].isna().all() and last["closed_at"].isna().all()
    earlier = snaps[snaps["as_of"] == t - 28 * DAY]
    assert earlier["won"].notna().any() and earlier["won"].isna().any()
    out = deal_outcomes(sample_export)
    closed = sample_export.opportunities.set_index("opportunity_id")["closed_at"]
    assert (out["closed_at"].notna() == closed.reindex(out.index).notna()).all()


def test_as_of_resolution_does_not_matter(sample_export):
    """An as_of parsed at second resolution (as from a CSV or a request) gives the same features."""
    as_of = _as_of(sample_export, 0.75)
    spec = DealFeatureSpec.from_export(sample_export, as_of=as_of)
    a = _features(sample_export, as_of.as_unit("ns"), spec)
    b = _features(sample_export, pd.Timestamp(as_of.isoformat()).as_unit("s"), spec)
    pd.testing.assert_frame_equal(a, b)
    assert (a["age_days"] > 0).all() and (a["days_in_stage"] >= 0).all()


def test_next_stage_column_stays_utc_when_no_deal_moves(sample_export):
    """After the export's last stage change no deal has reached its next stage: the all-NaT
    label column is still UTC, so censoring it at a cutoff compares like with like (an export
    whose history ends early, as Maven CRM's does, hit this)."""
    from training.deals import censored

    t = sample_export.stage_history["entered_at"].max() + DAY
    opps = open_opportunities(sample_export.opportunities, sample_export.stage_history, t)
    state = deal_state(opps, sample_export.stage_history, t, DealFeatureSpec.from_export(sample_export, as_of=t).open_stages)
    col = next_stage_entered_at(sample_export.stage_history, opps.set_index("opportunity_id").index, state["stage"], t,
                                DealFeatureSpec.from_export(sample_export, as_of=t).open_stages)
    assert len(col) == len(opps) > 0 and pd.isna(col).all()
    assert str(col.dtype) == "datetime64[ns, UTC]"
    snaps = pd.DataFrame({"as_of": t, "closed_at": pd.NaT, "won": np.nan, "won_amount": np.nan, "next_stage_at": col})
    snaps["closed_at"] = pd.to_datetime(snaps["closed_at"], utc=True)
    assert len(censored(snaps, t + DAY)) == len(opps)


@pytest.mark.parametrize("column", ["amount", "expected_close_date"])
def test_state_when_no_deal_has_an_amount_or_a_close_date(sample_export, column):
    """Unknown for every deal of the batch is a column of NaN, not an IndexError."""
    as_of = sample_export.exported_at
    stages = tuple(sample_export.open_stages)
    opps = open_opportunities(sample_export.opportunities, sample_export.stage_history, as_of).head(10)
    hist = sample_export.stage_history.copy()
    hist[column] = pd.NaT if column == "expected_close_date" else np.nan
    state = deal_state(opps, hist, as_of, stages)
    full = deal_state(opps, sample_export.stage_history, as_of, stages)
    assert len(state) == len(opps)
    unknown = {"amount": ["amount", "first_amount", "amount_change_ratio"],
               "expected_close_date": ["expected_close_date", "first_expected_close_date", "days_to_close_date"]}
    assert state[unknown[column]].isna().all().all()
    counted = {"amount": "amount_changes", "expected_close_date": "close_date_pushes"}[column]
    assert (state[counted] == 0).all()
    pd.testing.assert_series_equal(state["stage"], full["stage"])


def test_activity_rates_are_counts_per_30_days_of_age(sample_export):
    """``{kind}_per_30d``: the kind's count since creation per 30 days of the deal's age, the age
    floored at RATE_MIN_AGE_DAYS (computed here per deal from the activities, not the frame's totals)."""
    from features.deals import RATE_MIN_AGE_DAYS

    as_of = _as_of(sample_export, 0.7)
    spec = DealFeatureSpec.from_export(sample_export, as_of=as_of)
    X = _features(sample_export, as_of, spec)
    acts = sample_export.activities
    acts = acts[acts["occurred_at"] < as_of].assign(kind=lambda a: activity_kind(a))
    opps = sample_export.opportunities.set_index("opportunity_id")
    assert "meeting_per_30d" in spec.feature_names
    for oid in X.index[:40]:
        age = max((as_of - opps.loc[oid, "created_at"]) / DAY, RATE_MIN_AGE_DAYS)
        meetings = ((acts["opportunity_id"] == oid) & (acts["kind"] == "meeting")).sum()
        assert X.loc[oid, "meeting_per_30d"] == pytest.approx(meetings * 30.0 / age)
