"""Customer value and account features: point-in-time, and value sums within the window."""

from __future__ import annotations

import pandas as pd

from features.customers import AccountFeatureSpec, account_features, customer_value


def test_customer_value_sums_won_deals_within_the_window(sample_export):
    as_of = sample_export.exported_at
    v = customer_value(sample_export.opportunities, as_of, 365)
    o = sample_export.opportunities
    acc = v[v["complete"]].index[0]
    won = o[(o["account_id"] == acc) & (o["outcome"] == "won")]
    first = won["closed_at"].min()
    expected = won.loc[won["closed_at"] < first + pd.Timedelta(days=365), "amount"].fillna(0).sum()
    assert v.loc[acc, "value"] == expected
    assert (v.loc[v["complete"], "first_won_at"] + pd.Timedelta(days=365) <= as_of).all()


def test_account_features_ignore_everything_after_as_of(sample_export):
    as_of = sample_export.exported_at - pd.Timedelta(days=200)
    spec = AccountFeatureSpec.from_export(sample_export)
    ids = sample_export.accounts["account_id"].head(300).tolist()
    before = account_features(sample_export, ids, as_of, spec)
    late = sample_export.opportunities["created_at"] >= as_of
    scrambled = sample_export.opportunities.copy()
    scrambled.loc[late, "amount"] = 1e9
    scrambled.loc[scrambled["closed_at"] >= as_of, "outcome"] = "won"
    acts = sample_export.activities.copy()
    acts.loc[acts["occurred_at"] >= as_of, "type"] = "meeting"
    hist = sample_export.stage_history.copy()
    hist.loc[hist["entered_at"] >= as_of, "amount"] = 1e9
    from dataclasses import replace

    after = account_features(replace(sample_export, opportunities=scrambled, activities=acts, stage_history=hist), ids, as_of, spec)
    pd.testing.assert_frame_equal(before, after)


def test_account_features_of_prospects_only(sample_export):
    """No account of the batch has a won deal (look-alike scoring of prospects): every customer
    feature is unknown, nothing raises (pandas 3 cannot map through an empty datetime Series)."""
    from dataclasses import replace

    as_of = sample_export.exported_at
    spec = AccountFeatureSpec.from_export(sample_export)
    o = sample_export.opportunities
    prospects = sorted(set(sample_export.accounts["account_id"]) - set(o.loc[o["outcome"] == "won", "account_id"]))[:20]
    assert prospects
    only = replace(sample_export, opportunities=o[o["account_id"].isin(prospects)])
    X = account_features(only, prospects, as_of, spec)
    assert list(X.index) == prospects
    assert (X["is_customer"] == 0).all() and X["days_since_first_win"].isna().all()
    assert X["early_activities"].isna().all()
