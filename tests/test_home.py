"""The project home is found the way git finds ``.git``; read commands never create an empty store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture
def fresh_settings(monkeypatch, tmp_path):
    """No FUNNELCAST_* or MLflow variables (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI), a per-user data folder under ``tmp_path``, and a clean cache."""
    from features.settings import get_settings

    for name in ("FUNNELCAST_HOME", "FUNNELCAST_DATA", "FUNNELCAST_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "user-data"))  # platformdirs' per-user folder on Linux
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _homes(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".funnelcast") if p.is_dir())


def test_the_nearest_funnelcast_folder_up_from_the_working_folder_is_the_home(tmp_path, monkeypatch, fresh_settings):
    from features.settings import Settings

    (tmp_path / "proj" / ".funnelcast").mkdir(parents=True)
    deep = tmp_path / "proj" / "reports" / "2026"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    s = Settings()
    assert s.home == tmp_path / "proj" / ".funnelcast"
    assert s.home_origin == f"found from {deep}"
    assert s.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'proj' / '.funnelcast' / 'mlflow.db'}"


def test_a_marker_file_makes_its_folder_a_project(tmp_path, monkeypatch, fresh_settings):
    from features.settings import Settings

    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "funnelcast.toml").write_text("# a funnelcast project\n")
    monkeypatch.chdir(tmp_path / "proj" / "sub")
    s = Settings()
    assert s.home == tmp_path / "proj" / ".funnelcast" and "funnelcast.toml" in s.home_origin


def test_outside_any_project_the_per_user_folder_is_used_and_the_variable_wins(tmp_path, monkeypatch, fresh_settings):
    from features.settings import Settings

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    s = Settings()
    assert s.home == tmp_path / "user-data" / "funnelcast" and s.home_origin.startswith("the per-user default")
    monkeypatch.setenv("FUNNELCAST_HOME", "relative/home")
    s = Settings()
    assert s.home == tmp_path / "elsewhere" / "relative" / "home"  # made absolute where it was read
    assert s.home_origin == "set by FUNNELCAST_HOME or given"


def test_the_store_line_hides_passwords(tmp_path):
    from features.settings import Settings, redact_uri

    assert redact_uri("postgresql+psycopg://crm:s3cret@db:5432/crm") == "postgresql+psycopg://crm:***@db:5432/crm"
    assert redact_uri("https://user:tok@mlflow.example/") == "https://user:***@mlflow.example/"
    assert redact_uri("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db"
    line = Settings(home=tmp_path, tracking_uri="postgresql://u:pw@h/mlflow").where("mysql://r:pw2@h/crm")
    assert "pw" not in line.replace("***", "") and "store postgresql://u:***@h/mlflow" in line
    assert "data mysql://r:***@h/crm" in line and "\n" not in line


def test_trained_in_a_project_scored_from_a_subfolder_with_the_same_models(tmp_path, monkeypatch, capsys,
                                                                          fresh_settings):
    from features.settings import get_settings
    from training.cli import main

    project = tmp_path / "proj"
    (project / ".funnelcast").mkdir(parents=True)
    monkeypatch.chdir(project)
    assert main(["generate", "--seed", "3", "--scale", "0.05"]) == 0  # into <home>/sample
    assert main(["train", "--task", "lead_quality"]) == 0
    assert "registered lead_quality version 1" in capsys.readouterr().out

    sub = project / "notes" / "q3"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    get_settings.cache_clear()  # a new process would read its settings afresh
    assert main(["score", "--task", "lead_quality", "--out", "scores.csv"]) == 0
    captured = capsys.readouterr()
    assert f"home {project / '.funnelcast'} (found from {sub})" in captured.err
    assert f"store sqlite:///{project / '.funnelcast' / 'mlflow.db'}" in captured.err
    scored = pd.read_csv(sub / "scores.csv")
    assert len(scored) > 0 and set(scored["model"]) == {"lead_quality@1"}
    assert _homes(tmp_path) == [project / ".funnelcast"]  # no new store next to the subfolder
    assert not (tmp_path / "user-data").exists()


@pytest.mark.parametrize("argv", [["score", "--task", "lead_quality", "--out", "x.csv"],
                                  ["promote", "--task", "stage_conversion"],
                                  ["drift", "--task", "high_value"]])
def test_read_commands_refuse_a_missing_store_instead_of_creating_one(argv, sample_dir, tmp_path, monkeypatch, capsys,
                                                                     fresh_settings):
    from training.cli import main

    (tmp_path / "proj" / ".funnelcast").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj")
    assert main([*argv, "--data", str(sample_dir / "export")]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {tmp_path / 'proj' / '.funnelcast' / 'mlflow.db'}" in err
    assert "funnelcast train" in err and "Traceback" not in err
    assert list((tmp_path / "proj" / ".funnelcast").iterdir()) == []


def test_the_api_refuses_a_missing_store_and_shows_no_server_path(tmp_path, fresh_settings):
    from fastapi.testclient import TestClient

    from features.settings import Settings
    from serving.app import create_app

    home = tmp_path / "empty-home"
    home.mkdir()
    settings = Settings(home=home, reload_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    reason = r.json()["reason"]
    assert "no MLflow store" in reason and "funnelcast train" in reason
    assert str(tmp_path) not in r.text and "[SQL" not in r.text
    assert not (home / "mlflow.db").exists()


def test_client_reasons_carry_no_sql_and_no_absolute_paths():
    from serving.app import public_reason

    raw = ("(sqlite3.OperationalError) no such table: registered_models\n[SQL: SELECT registered_models.name FROM "
           "registered_models WHERE name = ?]\n[parameters: ('lead_quality',)]\n(Background on this error at: "
           "https://sqlalche.me/e/20/e3q8) reading /srv/funnelcast/.funnelcast/mlflow.db and "
           "file:///srv/funnelcast/.funnelcast/mlartifacts/1/model")
    shown = public_reason(raw)
    assert shown.startswith("(sqlite3.OperationalError) no such table: registered_models")
    assert "SELECT" not in shown and "parameters" not in shown and "/srv" not in shown
    assert "<server>/mlflow.db" in shown and "<server>/model" in shown
    assert public_reason("models:/lead_quality/3 at https://mlflow.example/a") == \
        "models:/lead_quality/3 at https://mlflow.example/a"


@pytest.mark.parametrize("raw, expected", [("dev-key", ["dev-key"]), (" a , b ,", ["a", "b"]),
                                           ('["a", "b"]', ["a", "b"])])
def test_list_settings_take_comma_separated_text_or_a_json_list(raw, expected, monkeypatch, fresh_settings):
    from features.settings import get_settings

    monkeypatch.setenv("FUNNELCAST_API_KEYS", raw)
    monkeypatch.setenv("FUNNELCAST_CORS_ORIGINS", "http://crm.example,http://localhost:3000")
    monkeypatch.setenv("FUNNELCAST_OPEN_STAGES", "Qualification, Proposal")
    s = get_settings()
    assert s.api_keys == expected
    assert s.cors_origins == ["http://crm.example", "http://localhost:3000"]
    assert s.open_stages == ("qualification", "proposal")


def test_an_unreadable_setting_is_named_without_a_traceback_or_the_key(monkeypatch, capsys, fresh_settings):
    """A variable the settings cannot read stops the command with its name and what is wrong (exit 2), never
    a pydantic traceback; a key's value is not echoed."""
    from training.cli import main

    monkeypatch.setenv("FUNNELCAST_API_KEYS", '["secret-123"')
    monkeypatch.setenv("FUNNELCAST_PORT", "eighty")
    assert main(["funnel"]) == 2
    err = capsys.readouterr().err
    assert "FUNNELCAST_API_KEYS: Value error, not a JSON list" in err and "secret-123" not in err
    assert "FUNNELCAST_PORT: Input should be a valid integer" in err and "'eighty'" in err
    assert "Traceback" not in err
