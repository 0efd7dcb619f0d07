"""The oracle of the small-batch fast path (serving/fastpath.py, features/fastrow.py): on many of the
sample's leads, with missing values, unseen categories, activities after ``as_of``, accounts not
sent or created later, and every source, its features, scores, reasons and warnings are the
frame path's; anything it does not cover falls back (``None``) instead of answering differently."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from features.io import DEFAULT_OPEN_STAGES
from features.pit import open_leads
from serving.fastpath import FAST_MAX_LEADS, fast_lead_scores
from serving.records import export_items
from serving.routes_leads import _SCORED, lead_export
from serving.schemas.leads import LeadScoreItem

SEED = 7


def _frame_path(items, scorer, as_of):
    export = lead_export(items, scorer.spec, DEFAULT_OPEN_STAGES, as_of)
    return scorer.score_with_features(export.leads, export.accounts, export.activities, as_of)


def _same(items, scorer, as_of) -> None:
    fast = fast_lead_scores(items, scorer, as_of)
    assert fast is not None, "the fast path should cover these leads"
    scored, X = _frame_path(items, scorer, as_of)
    pd.testing.assert_frame_equal(fast.rows.frame(), X, check_exact=True)
    for c in _SCORED:
        got, want = getattr(fast, c), scored[c].tolist()
        if c in ("probability", "expected_value", "base_probability"):
            np.testing.assert_array_equal(np.asarray(got, dtype=float), np.asarray(want, dtype=float), err_msg=c)
        else:
            assert got == want, c


def _perturb(item: dict, rng: np.random.Generator, sources: list[str]) -> dict:
    """A lead as a CRM might send it: fields left out, values never seen, activities after as_of, ..."""
    item = copy.deepcopy(item)
    lead = item["lead"]
    for field in ("source", "seniority", "country", "owner_id", "account_id", "budget_k", "campaign"):
        if field in lead and rng.random() < 0.15:
            del lead[field]
    roll = rng.random()
    if roll < 0.15:
        lead["source"] = "  Brand_New_Source "  # unseen, trimmed and case-folded
    elif roll < 0.5:
        lead["source"] = str(rng.choice(sources)).upper()
    if rng.random() < 0.1:
        lead["owner_id"] = "rep_never_seen"
    account = item.get("account")
    if account is not None:
        if rng.random() < 0.15:
            del item["account"]  # the lead names an account that is not sent
        elif rng.random() < 0.1:
            account["created_at"] = "2099-01-01T00:00:00Z"  # created after as_of: invisible
        elif rng.random() < 0.2:
            account.pop("industry", None)
            account["employees"] = None
    acts = item["activities"]
    if acts and rng.random() < 0.3:
        acts[0] = {**acts[0], "occurred_at": "2099-01-01T00:00:00Z"}  # after as_of: not counted
    if acts and rng.random() < 0.2:
        for a in acts:
            a.pop("lead_id", None)  # linked to the lead it came with
    if rng.random() < 0.1:
        item["activities"] = []
    return item


@pytest.fixture(scope="module")
def boosted(lead_scorer, sample_export):
    """The session's lead scorer with boosted trees (whichever candidate won its gate): fit on the
    sample's leads at the export time, with whether they ever converted as the label (an oracle
    needs trees that split on categories and counts, not a good model)."""
    import dataclasses

    from features.leads import lead_features
    from models.estimators import CalibratedBoostedClassifier

    as_of = sample_export.exported_at
    leads = sample_export.leads[sample_export.leads["created_at"] < as_of]
    X = lead_features(leads, sample_export.accounts, sample_export.activities, as_of, lead_scorer.context,
                      lead_scorer.spec)
    y = leads["converted_at"].notna().to_numpy(dtype=int)
    cut = int(len(X) * 0.8)
    clf = CalibratedBoostedClassifier(lead_scorer.spec.categorical_features, random_state=SEED)
    clf.fit(X.iloc[:cut], y[:cut], X.iloc[cut:], y[cut:])
    return dataclasses.replace(lead_scorer, classifier=clf)


@pytest.fixture(scope="module")
def sample_items(sample_export):
    as_of = sample_export.exported_at
    leads = open_leads(sample_export.leads, as_of)
    leads = leads.sample(n=min(240, len(leads)), random_state=SEED)
    items = export_items(leads, sample_export.accounts, sample_export.activities, as_of)
    return as_of, items, sorted(sample_export.leads["source"].dropna().unique().tolist())


def test_fast_path_equals_the_frame_path_on_the_sample(sample_items, boosted):
    lead_scorer = boosted
    as_of, items, sources = sample_items
    rng = np.random.default_rng(SEED)
    batches = 0
    i = 0
    while i < len(items):
        size = int(rng.integers(1, FAST_MAX_LEADS + 1))
        chunk = [_perturb(it, rng, sources) for it in items[i:i + size]]
        _same([LeadScoreItem.model_validate(it) for it in chunk], lead_scorer, as_of)
        i, batches = i + size, batches + 1
    assert batches > 40


def test_every_source_and_the_warnings_are_the_same(sample_items, boosted):
    lead_scorer = boosted
    as_of, items, sources = sample_items
    for source in [*sources, "never_seen"]:
        item = copy.deepcopy(items[0])
        item["lead"]["source"] = source
        _same([LeadScoreItem.model_validate(item)], lead_scorer, as_of)
    bare = {"lead": {"lead_id": "x", "created_at": "2025-01-01T00:00:00Z", "account_id": "A_not_sent"}}
    fast = fast_lead_scores([LeadScoreItem.model_validate(bare)], lead_scorer, as_of)
    assert any("was not sent" in w for w in fast.warnings[0]) and any("is missing" in w for w in fast.warnings[0])
    _same([LeadScoreItem.model_validate(bare)], lead_scorer, as_of)


@pytest.mark.parametrize("case", ["duplicate", "late", "conflicting_account", "other_parent", "too_many", "converted_before_created"])
def test_what_the_fast_path_does_not_cover_falls_back(sample_items, boosted, case):
    lead_scorer = boosted
    as_of, items, _ = sample_items
    with_account = [it for it in items if "account" in it and it["activities"]]
    a, b = copy.deepcopy(with_account[0]), copy.deepcopy(with_account[1])
    batch = [a, b]
    if case == "duplicate":
        b["lead"]["lead_id"] = a["lead"]["lead_id"]
    elif case == "late":
        a["lead"]["created_at"] = (as_of + pd.Timedelta(days=1)).isoformat()
    elif case == "conflicting_account":
        b["account"] = {**a["account"], "industry": "something else"}
    elif case == "other_parent":
        a["activities"][0]["lead_id"] = "someone_else"
    elif case == "too_many":
        batch = [copy.deepcopy(it) for it in items[:FAST_MAX_LEADS + 1]]
    elif case == "converted_before_created":  # a rule of the loader: it reports the row
        a["lead"]["converted_at"] = "2000-01-01T00:00:00Z"
    validated = [LeadScoreItem.model_validate(it) for it in batch]
    assert fast_lead_scores(validated, lead_scorer, as_of) is None


def test_every_kind_of_model_gives_the_same_answer(sample_items, lead_scorer, boosted):
    """The session's scorer is whichever candidate won its gate (a baseline on the small sample): the
    fast path asks the model itself for its contributions, so it answers the same for each."""
    as_of, items, _ = sample_items
    for scorer in (lead_scorer, boosted):
        for k in range(0, 24, 3):
            _same([LeadScoreItem.model_validate(it) for it in items[k:k + 3]], scorer, as_of)
    assert fast_lead_scores([LeadScoreItem.model_validate(items[0])], object(), as_of) is None
