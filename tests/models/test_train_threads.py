"""FUNNELCAST_TRAIN_THREADS: the LightGBM threads of every training fit, set at the edge, never part of a recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.settings import Settings
from models import estimators
from models.estimators import CalibratedBoostedClassifier, set_train_threads, train_params


@pytest.fixture(autouse=True)
def _clear():
    yield
    set_train_threads(None)


def _data(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    y = (rng.random(n) < 1 / (1 + np.exp(-X["a"].to_numpy()))).astype(int)
    return X, y


def test_the_setting_overrides_each_models_threads_and_none_restores_them():
    X, y = _data()
    own = CalibratedBoostedClassifier(params={"num_threads": 1, "min_child_samples": 20}, max_rounds=20).fit(X, y)
    assert int(own.booster_.params["num_threads"]) == 1
    set_train_threads(3)
    assert train_params({"num_threads": 1, "x": 1}) == {"num_threads": 3, "x": 1}
    model = CalibratedBoostedClassifier(params={"num_threads": 1, "min_child_samples": 20}, max_rounds=20).fit(X, y)
    assert int(model.booster_.params["num_threads"]) == 3
    assert model.params == {"num_threads": 1, "min_child_samples": 20}  # the recipe keeps the model's own
    model.refit(X, y)
    assert int(model.booster_.params["num_threads"]) == 3
    # on this small data the threads do not change the trees
    np.testing.assert_allclose(model.predict_proba(X.head(50)), own.predict_proba(X.head(50)), atol=1e-6)
    set_train_threads(None)
    assert train_params({"num_threads": 1}) == {"num_threads": 1}
    with pytest.raises(ValueError, match="0 \\(every core\\) or more"):
        set_train_threads(-1)


def test_the_environment_variable_reaches_every_command(monkeypatch, tmp_path):
    from training import cli

    monkeypatch.setenv("FUNNELCAST_TRAIN_THREADS", "4")
    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path))
    assert Settings().train_threads == 4
    seen = {}
    monkeypatch.setattr(cli, "build_parser", lambda: _Parser(lambda args, settings: seen.update(
        threads=estimators._TRAIN_THREADS)))
    from features.settings import get_settings

    get_settings.cache_clear()
    try:
        assert cli.main([]) == 0
    finally:
        get_settings.cache_clear()
    assert seen["threads"] == 4
    monkeypatch.setenv("FUNNELCAST_TRAIN_THREADS", "-2")
    with pytest.raises(Exception, match="train_threads"):
        Settings()


class _Parser:
    """A parser whose one command records what it sees."""

    def __init__(self, func):
        self.func = func

    def parse_args(self, argv):
        import argparse

        return argparse.Namespace(func=self.func)
