"""Leakage audit: planted leaks on the generated sample are flagged, clean fields are not; X Education's
Tags and Lead Quality are flagged (skipped without ../shared/data); suspects can be excluded."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.leads import LeadFeatureSpec
from training.audit import audit_leads, changed_after_outcome, single_feature_auc, write_exclude

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.parametrize("seed", [0, 1])
def test_single_feature_auc(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 4000)
    perfect = pd.Series(np.where(y == 1, "yes", "no"))
    noise = pd.Series(rng.normal(size=4000))
    assert single_feature_auc(perfect[:2000], y[:2000], perfect[2000:], y[2000:], numeric=False) == 1.0
    assert abs(single_feature_auc(noise[:2000], y[:2000], noise[2000:], y[2000:], numeric=True) - 0.5) < 0.05
    # missing is a value: a field filled only for positives is as good as the label
    filled = pd.Series(np.where(y == 1, 3.0, np.nan))
    assert single_feature_auc(filled[:2000], y[:2000], filled[2000:], y[2000:], numeric=True) == 1.0


@pytest.fixture(scope="module")
def planted(sample_export):
    """The sample with planted leaks (known only after the outcome) and a clean random field."""
    rng = np.random.default_rng(3)
    leads = sample_export.leads.copy()
    converted = leads["converted_at"].notna()
    decided = leads["converted_at"].fillna(leads["disqualified_at"])
    n = len(leads)
    leads["lead_status"] = np.where(converted, "qualified", np.where(rng.random(n) < 0.5, "nurture", "new"))
    leads["won_reason"] = np.where(converted & (rng.random(n) < 0.9), "budget", None)
    leads["last_touch_date"] = (decided + pd.Timedelta(days=3)).dt.strftime("%Y-%m-%d")
    leads["favourite_colour"] = rng.choice(["red", "green", "blue"], n)
    export = replace(sample_export, leads=leads)
    ids = leads.loc[decided.notna(), "lead_id"].to_numpy()
    history = pd.DataFrame({
        "record_table": "leads",
        "record_id": ids,
        "field": "favourite_colour_changed",
        "changed_at": decided[decided.notna()].to_numpy() + pd.Timedelta(hours=1),
    })
    history = pd.concat([history, pd.DataFrame({"record_table": "leads", "record_id": ids, "field": "source",
                                                "changed_at": leads.loc[decided.notna(), "created_at"].to_numpy()})])
    return export, history


def test_planted_leaks_are_flagged_and_clean_fields_are_not(planted):
    export, history = planted
    report = audit_leads(export, snapshot_every_days=28, field_history=history)
    by = {f.feature: f for f in report.findings}
    assert by["lead_status"].suspect and "AUC" in " ".join(by["lead_status"].reasons)
    assert by["won_reason"].suspect and "filled for" in " ".join(by["won_reason"].reasons)
    assert by["last_touch_date"].suspect and "date after the outcome" in " ".join(by["last_touch_date"].reasons)
    assert not by["favourite_colour"].suspect
    assert not by["source"].suspect  # set at creation, per the field history
    assert by["source"].after_outcome == 0.0
    # computed point-in-time features are reported, never flagged
    assert not any(f.suspect for f in report.findings if not f.stored)


def test_changed_after_outcome_from_field_history(planted):
    export, history = planted
    shares = changed_after_outcome(export.leads, history)
    assert shares["favourite_colour_changed"] == 1.0 and shares["source"] == 0.0


def test_suspects_can_be_excluded_from_training(planted, tmp_path):
    export, _ = planted
    report = audit_leads(export, snapshot_every_days=28)
    spec = LeadFeatureSpec.from_export(export, exclude=report.suspects)
    assert not set(report.suspects) & set(spec.feature_names)
    path = write_exclude(report, tmp_path / "suspects.txt")
    assert path.read_text().split() == report.suspects


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (public datasets) not present")
def test_xeducation_tags_and_lead_quality_are_flagged(tmp_path):
    from features.adapters import import_export, write_import
    from training.cli import main

    r = import_export("xeducation", DATA / "xeducation_leads")
    report = audit_leads(r.export, synthetic=r.synthetic)
    assert {"tags", "lead_quality"} <= set(report.suspects)
    assert report.split["order"].startswith("record order")
    assert any("filled-after-outcome cannot be checked" in n for n in report.notes)
    # the same through the command line, on the written import
    out = write_import(r, tmp_path / "xe")
    excl = tmp_path / "suspects.txt"
    assert main(["audit", "--data", str(out), "--write-exclude", str(excl), "--out", str(tmp_path / "a.json")]) == 0
    assert {"tags", "lead_quality"} <= set(excl.read_text().split())


def test_the_windows_are_a_horizon_apart(planted):
    export, _ = planted
    report = audit_leads(export, snapshot_every_days=28, horizon_days=91)
    day = {w: [pd.Timestamp(d.split(" ")[0]) for d in report.split[w].split("..")] for w in ("earlier", "later")}
    assert day["later"][0] - day["earlier"][1] >= pd.Timedelta(days=91)
    assert not any("adjacent" in n for n in report.notes)
    cut = export.leads["created_at"].min() + pd.Timedelta(days=200)  # too short for the gap: adjacent, and said so
    short = audit_leads(export, cutoff=cut, snapshot_every_days=28, horizon_days=91)
    assert any("adjacent" in n for n in short.notes)


def test_train_names_a_stored_field_that_predicts_the_outcome_alone(planted, train_config):
    """`funnelcast train` does not wait for `funnelcast audit`: a field filled in because of the outcome
    (lead_status is 'qualified' for every converted lead) is named in a warning with its AUC; a clean field
    (favourite_colour) and the point-in-time features are not."""
    from dataclasses import replace as with_

    from training.train import build_lead_model

    export, _ = planted
    result = build_lead_model(export, with_(train_config, snapshot_every_days=28), export.exported_at)
    leaks = [w for w in result.warnings if w.startswith("possible leak:")]
    assert len(leaks) == 1, result.warnings
    assert re.search(r"lead_status (1\.000|0\.9[5-9]\d)", leaks[0]), leaks[0]
    assert "--exclude" in leaks[0] and "lead_status" in leaks[0].split("--exclude")[1]
    assert not any("favourite_colour" in w or "activities" in w for w in leaks)


def test_leak_warnings_need_a_field_that_ranks_almost_perfectly():
    from training.audit import TRAIN_LEAK_AUC, leak_warnings

    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.3).astype(int)
    frame = pd.DataFrame({"status": np.where(y == 1, "won", "open"),
                          "noisy": np.where(rng.random(4000) < 0.7, y, 1 - y).astype(str)})
    warned = leak_warnings(frame[:3000], y[:3000], frame[3000:], y[3000:], ["status", "noisy"], {"status", "noisy"})
    assert len(warned) == 1 and "this stored field alone ranks" in warned[0] and "(status 1.000)" in warned[0]
    assert "noisy" not in warned[0] and warned[0].endswith("--exclude status if it is") and TRAIN_LEAK_AUC == 0.95
