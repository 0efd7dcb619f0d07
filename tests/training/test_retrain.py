"""The retraining loop: `retrain` trains and promotes through the gate; `run --data` ends serving its models."""

from __future__ import annotations

import pytest


@pytest.fixture
def project(tmp_path, monkeypatch):
    from features.settings import get_settings

    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FUNNELCAST_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _champion(task: str) -> str:
    from features.settings import get_settings
    from models.registry import configure

    return str(configure(get_settings().resolved_tracking_uri()).get_model_version_by_alias(task, "champion").version)


def test_retrain_promotes_only_through_the_gate_and_exits_0_when_nothing_moves(project, capsys):
    from training.cli import main

    assert main(["generate", "--seed", "3", "--scale", "0.05"]) == 0
    assert main(["retrain", "--task", "lead_quality"]) == 0
    out = capsys.readouterr().out
    assert "lead_quality: PROMOTED: first version: champion directly" in out and _champion("lead_quality") == "1"

    assert main(["retrain", "--task", "lead_quality"]) == 0  # same recipe, same data: nothing to gain
    out = capsys.readouterr().out
    assert "champion before" in out and "lead_quality: kept: same recipe and no newer data" in out
    assert _champion("lead_quality") == "1"  # v2 stays @challenger


def test_retrain_reports_a_failed_task_and_exits_1(project, capsys):
    from training.cli import main

    assert main(["generate", "--seed", "3", "--scale", "0.05"]) == 0
    assert main(["retrain", "--task", "lead_quality", "--as-of", "1990-01-01"]) == 1
    out = capsys.readouterr().out
    assert "lead_quality: FAILED: failed: " in out


def test_a_champion_trained_on_another_source_is_replaced_only_when_asked(project, capsys):
    """What `run --data` does after training: the sample's champion says nothing about the user's CRM."""
    from types import SimpleNamespace

    from features.settings import get_settings
    from models.registry import configure
    from training.cli import main
    from training.retrain import champion_of, promote_trained

    assert main(["generate", "--seed", "3", "--scale", "0.05"]) == 0
    assert main(["train", "--task", "lead_quality"]) == 0  # v1: @champion, trained on the sample
    settings = get_settings()
    client = configure(settings.resolved_tracking_uri())
    version, source = champion_of(client, "lead_quality", "champion")
    assert (version, source) == ("1", str(settings.sample_export))
    client.copy_model_version("models:/lead_quality/1", "lead_quality")  # v2, as if trained on the user's CRM
    client.set_registered_model_alias("lead_quality", "challenger", "2")
    new = SimpleNamespace(scorer=SimpleNamespace(task="lead_quality"), aliases=["challenger"], version="2")
    row = promote_trained(new, None, client, settings, before="1", before_source=source, source="/srv/crm",
                          replace_other_source=True)
    assert row.promoted and row.champion_after == "2" and "another data source" in row.reason
    aliases = client.get_registered_model("lead_quality").aliases
    assert str(aliases["champion"]) == "2" and str(aliases["previous_champion"]) == "1"


def test_train_of_several_tasks_trains_the_others_when_one_has_too_little_data(project, capsys):
    """A young CRM: too few customers for high_value must not stop lead_quality (exit 2, both named)."""
    from features.settings import get_settings
    from training.cli import main

    assert main(["generate", "--seed", "3", "--scale", "0.05"]) == 0
    capsys.readouterr()
    assert main(["train", "--task", "high_value", "lead_quality"]) == 2
    captured = capsys.readouterr()
    assert "error: high_value: only " in captured.err and "high_value not trained, the other tasks go on" in captured.err
    assert "trained: lead_quality; not trained: high_value" in captured.err
    assert "Traceback" not in captured.err
    assert "registered lead_quality version 1" in captured.out and _champion("lead_quality") == "1"
    # one task asked for: its error is the command's, as before
    assert main(["train", "--task", "high_value"]) == 2
    assert "error: only " in capsys.readouterr().err
    from models.registry import configure, not_trained_reason

    client = configure(get_settings().resolved_tracking_uri())
    assert not_trained_reason(client, "high_value").startswith("high_value: only ")
    assert not_trained_reason(client, "lead_quality") is None  # trained: nothing recorded


def test_a_leads_only_export_trains_lead_quality_and_says_what_the_other_tasks_need(project, tmp_path, capsys):
    """An export with leads and no deals (X Education's shape): no traceback, each task's need and what was found."""
    import shutil

    import pandas as pd

    from training.cli import main

    assert main(["generate", "--out", str(tmp_path / "s"), "--seed", "3", "--scale", "0.05"]) == 0
    leads_only = tmp_path / "leads_only"
    shutil.copytree(tmp_path / "s" / "export", leads_only)
    for table in ("opportunities", "stage_history"):
        path = leads_only / f"{table}.csv"
        pd.read_csv(path, nrows=0).to_csv(path, index=False)  # the header only
    leads = pd.read_csv(leads_only / "leads.csv", dtype=str, keep_default_na=False)
    leads.assign(opportunity_id="").to_csv(leads_only / "leads.csv", index=False)  # converted, no deal record
    acts = pd.read_csv(leads_only / "activities.csv", dtype=str, keep_default_na=False)
    acts[acts["opportunity_id"] == ""].to_csv(leads_only / "activities.csv", index=False)
    capsys.readouterr()
    assert main(["train", "--data", str(leads_only)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "stage_conversion needs opportunities (deals) and their stage history; the export has no opportunities" in err
    assert "high_value needs customers whose first won deal is at least 365 days before the cutoff" in err
    assert "trained: lead_quality; not trained: high_value, stage_conversion" in err
    # the API says why a task has no model, not "run funnelcast train" (which would fail the same way)
    from features.settings import get_settings
    from serving.app import load_models

    models, problems = load_models(get_settings())
    assert set(models) == {"lead_quality"}
    assert problems["stage_conversion"].startswith("not trained on the last export: stage_conversion needs "
                                                   "opportunities (deals) and their stage history")
    assert "high_value needs customers" in problems["high_value"]
    # asked alone, the task's need is the command's error
    assert main(["train", "--task", "stage_conversion", "--data", str(leads_only), "--horizon", "30d"]) == 2
    assert "stage_conversion needs deals open at the snapshot times" in capsys.readouterr().err
    # the deal commands say the same, no traceback (funnel once ended in a KeyError)
    assert main(["funnel", "--data", str(leads_only)]) == 2
    assert ("the funnel needs deals and their stage history; the export has no opportunities and no stage_history "
            "rows") in capsys.readouterr().err
    assert main(["funnel", "--data", str(tmp_path / "s" / "export"), "--as-of", "1999-01-01"]) == 2  # before it
    assert "; the export has none then (its deals entered stages from " in (err := capsys.readouterr().err)
    assert "choose an --as-of from " in err
