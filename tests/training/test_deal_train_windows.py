"""The deal models' windows on a short history: the fold shrinks until the deal models' own fit and
calibration rows hold enough deals, or says what is missing; never a bare ValueError (Maven CRM with
the horizon chosen from the data, 91 days on 14 months, ended `funnelcast run` in a traceback)."""

from __future__ import annotations

import pandas as pd
import pytest


def _split_of(export, months: int, with_enough: bool):
    from training.tasks import task_definition

    definition = task_definition("stage_conversion")
    as_of = export.opportunities["created_at"].min() + pd.DateOffset(months=months)
    cfg = definition.config(horizon_days=91, snapshot_every_days=14, seed=0)
    snaps = definition.snapshots(export, as_of, cfg)
    enough = definition.enough(snaps, cfg) if with_enough else None
    return definition.fold(cfg, snaps).split(snaps.times, snaps.cutoff, enough), snaps, cfg


def test_the_fold_refuses_a_split_whose_deal_models_would_have_no_fit_rows(sample_export):
    from models.folds import NotEnoughHistory
    from training.deals import fit_and_calibration_rows, rows_shortfall

    # a year of history and a 91-day horizon: the plain fold accepts a split, but the next-stage fit rows
    # (labelled before its calibration window starts) are none
    plain, snaps, cfg = _split_of(sample_export, 12, with_enough=False)
    short = rows_shortfall(fit_and_calibration_rows(snaps.frame, plain.cutoff, cfg))
    assert short is not None and "fit window holds 0 deal snapshots" in short
    with pytest.raises(NotEnoughHistory) as caught:
        _split_of(sample_export, 12, with_enough=True)
    assert "deal snapshots" in str(caught.value) and "--horizon" in str(caught.value)
    # a longer history: the fold shrinks its evaluation window until the deal models have their rows
    split, snaps, cfg = _split_of(sample_export, 16, with_enough=True)
    assert rows_shortfall(fit_and_calibration_rows(snaps.frame, split.cutoff, cfg)) is None
    assert split.evaluate_days < 91


def test_train_on_a_too_short_history_for_the_deal_models_is_an_error_not_a_traceback(sample_dir, tmp_path,
                                                                                        monkeypatch, capsys):
    from features.settings import get_settings
    from training.cli import main

    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        opps = pd.read_csv(sample_dir / "export" / "opportunities.csv", usecols=["created_at"])
        as_of = (pd.to_datetime(opps["created_at"], utc=True).min() + pd.DateOffset(months=12)).isoformat()
        code = main(["train", "--task", "stage_conversion", "--data", str(sample_dir / "export"), "--as-of", as_of,
                     "--horizon", "91d"])
        err = capsys.readouterr().err
        assert code == 2 and "not enough history for a time split" in err and "deal snapshots" in err
        assert "Traceback" not in err
    finally:
        get_settings.cache_clear()
