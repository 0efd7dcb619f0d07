"""`funnelcast train --refit {off,choose}`: the refit on the calibration window, off by default, reaches each
task's config (lead_quality's ``choose_refit``, stage_conversion's ``refit_timing``), and train says what it chose."""

from __future__ import annotations

import pytest

from models.tasks import Task


@pytest.fixture
def home(tmp_path, monkeypatch):
    from features.settings import get_settings

    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FUNNELCAST_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _configs(argv: list[str], settings, monkeypatch) -> dict[Task, object]:
    """Each task's config as `funnelcast train ARGV` builds it (the training itself is replaced)."""
    import training.cli_train as cli_train
    from training.cli import main

    seen = {}

    def fake_train_tasks(tasks, settings, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(cli_train, "train_tasks", fake_train_tasks)
    assert main(["train", *argv]) == 0
    return {t: cli_train.task_config(t, settings, horizon_days=91, snapshot_every_days=14, seed=0, exclude=(),
                                     overrides=seen["overrides"], default_params=True)[0] for t in Task}


def test_refit_is_off_by_default_and_keeps_each_tasks_defaults(home, monkeypatch):
    from training.deals import DealTrainConfig
    from training.train import TrainConfig

    for argv in ([], ["--refit", "off"]):
        cfgs = _configs(argv, home, monkeypatch)
        assert cfgs[Task.LEAD_QUALITY].choose_refit is TrainConfig.choose_refit is False
        assert cfgs[Task.STAGE_CONVERSION].refit_timing is DealTrainConfig.refit_timing is False


def test_refit_choose_tries_the_lead_refit_and_leaves_the_deal_refit_to_the_validation_window(home, monkeypatch):
    import dataclasses

    cfgs = _configs(["--refit", "choose", "--timing-layout", "close_share"], home, monkeypatch)
    assert cfgs[Task.LEAD_QUALITY].choose_refit is True
    deal = cfgs[Task.STAGE_CONVERSION]
    assert deal.refit_timing is None and deal.chosen_per_fit
    assert deal.timing_layout == "close_share"  # the other overrides still apply
    high_value = {f.name for f in dataclasses.fields(cfgs[Task.HIGH_VALUE])}
    assert not high_value & {"choose_refit", "refit_timing"}  # a task without a refit is left as it was


def test_an_unknown_refit_mode_is_refused_naming_the_choices(capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--refit", "always"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'always'" in err and "'off', 'choose'" in err


def test_the_help_says_what_the_refit_does_and_why_it_is_off(capsys):
    from training.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--refit {off,choose}" in text
    assert "most recent decided window" in text and "beats the model as calibrated on the validation window" in text
    assert "did not pay on average" in text


@pytest.mark.parametrize(("chosen", "said"), [
    ({"refit_on_calibration": "no"}, None),  # --refit off: nothing to say
    ({"refit_on_calibration": "yes"}, "refitted on the calibration window too"),  # fixed on (refit_timing True)
    ({"refit_on_calibration": "yes", "refit_note": "validation log loss 0.30 as fitted, 0.29 refitted"},
     "refit on the calibration window kept: validation log loss 0.30 as fitted, 0.29 refitted"),
    ({"refit_on_calibration": "no", "refit_note": "no validation window to choose on"},
     "refit on the calibration window not kept: no validation window to choose on"),
])
def test_train_prints_whether_the_refit_was_kept_and_why(chosen, said):
    from training.cli_train import _chosen_text

    text = _chosen_text({"candidate": "lgbm", **chosen})
    if said is None:
        assert "refit" not in text
    else:
        assert said in text


def test_train_refit_choose_end_to_end_prints_and_logs_the_deal_refit_choice(sample_dir, home, capsys):
    from training.cli import main
    from training.cli_common import mlflow_client

    argv = ["train", "--task", "stage_conversion", "--data", str(sample_dir / "export"), "--refit", "choose"]
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("stage_conversion: "))
    assert "refit on the calibration window kept: " in line or "refit on the calibration window not kept: " in line
    client = mlflow_client(home)
    run, = client.search_runs([client.get_experiment_by_name(home.experiment).experiment_id])
    params = run.data.params
    assert params["refit_on_calibration"] in ("yes", "no") and params["refit_note"]
    assert ("window kept: " in line) == (params["refit_on_calibration"] == "yes")
