"""The Dask engine's training and refresh: ``funnelcast train --engine dask`` on a local cluster of two
worker processes registers a lead model whose evaluation AUC is the pandas path's (within 0.002), its
LightGBM grown by ``DaskLGBMClassifier`` is a plain local booster (SHAP additive, picklable), the
replayed early stopping is LightGBM's, and ``funnelcast refresh --engine dask`` stores the same scores
as the pandas refresh in a PostgreSQL operations store."""

from __future__ import annotations

import argparse
import pickle

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")

from features.engine import using_client  # noqa: E402
from models.dask_fit import early_stopping_round, grow_on_cluster, round_losses  # noqa: E402
from models.estimators import CalibratedBoostedClassifier  # noqa: E402
from models.metrics import classification_metrics  # noqa: E402


def _data(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[:, 4] = rng.integers(0, 4, size=n)
    z = X[:, 0] - 0.5 * X[:, 1] + 0.3 * (X[:, 4] == 2) + rng.normal(scale=1.5, size=n)
    return X, (z > 0.8).astype(int)


@pytest.mark.parametrize("seed", [0, 1])
def test_replayed_early_stopping_is_lightgbms(seed):
    X, y = _data(seed)
    params = {"objective": "binary", "learning_rate": 0.2, "num_leaves": 15, "verbosity": -1, "seed": seed,
              "min_child_samples": 5, "num_threads": 1}
    train, valid = lgb.Dataset(X[:2000], y[:2000], categorical_feature=[4]), None
    valid = lgb.Dataset(X[2000:], y[2000:], reference=train)
    curve: dict = {}
    stopped = lgb.train(params, train, 400, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(10, verbose=False), lgb.record_evaluation(curve)])
    full = lgb.train(params, lgb.Dataset(X[:2000], y[:2000], categorical_feature=[4]), 400)
    losses = round_losses(full, X[2000:], y[2000:])
    recorded = np.asarray(curve["valid_0"]["binary_logloss"])
    np.testing.assert_allclose(losses[:len(recorded)], recorded, rtol=1e-6)
    assert early_stopping_round(losses, 10) == stopped.best_iteration < 400


@pytest.fixture(scope="module")
def two_threads():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        yield client


@pytest.mark.parametrize("seed", [3, 4])
def test_trees_grown_on_the_cluster_are_the_same_every_fit(two_threads, seed):
    """Same rows, same seed: the same trees, fit after fit (the blocks sit on fixed workers and LightGBM
    ranks the workers in address order; before, the ranks followed the scheduler's order and about half
    the fits grew other trees). Another seed bags other rows: other trees."""
    X, y = _data(seed, 6000)
    params = {"objective": "binary", "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 50,
              "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "verbosity": -1, "seed": seed}
    def trees(booster: lgb.Booster) -> list:  # the model without its parameters (the ports of each fit)
        return booster.dump_model()["tree_info"]

    fits = [grow_on_cluster(two_threads, params, X, y, None, [4], 40)[0] for _ in range(4)]
    assert all(trees(f) == trees(fits[0]) for f in fits[1:])
    other = grow_on_cluster(two_threads, {**params, "seed": seed + 10}, X, y, None, [4], 40)[0]
    assert trees(other) != trees(fits[0])


def test_fits_the_data_parallel_learner_cannot_grow_grow_in_this_process(two_threads):
    """LightGBM's data-parallel learner fails on interaction constraints (std::bad_alloc on the workers:
    the deal timing models use them): under a Dask session such a fit is the local fit, tree for tree."""
    import pandas as pd

    X, y = _data(5)
    frame = pd.DataFrame(X, columns=list("abcde")).assign(e=lambda f: f["e"].astype(int).astype("str"))
    params = {"interaction_constraints": [[0, 1], [1, 2, 3, 4]], "num_threads": 1}

    def fit() -> CalibratedBoostedClassifier:
        return CalibratedBoostedClassifier(["e"], params=params, random_state=2).fit(
            frame[:2000], y[:2000], frame[2000:], y[2000:])

    local = fit()
    with using_client(two_threads):
        on_session = fit()
    assert on_session.booster_.dump_model()["tree_info"] == local.booster_.dump_model()["tree_info"]
    # a regression (the deal model's surrogate for reasons): DaskLGBMClassifier would take it for classes
    params = {"objective": "regression", "num_threads": 1}
    target = X[:, 0] - X[:, 1]
    local = CalibratedBoostedClassifier(["e"], params=params, random_state=2, max_rounds=50).fit(frame, target)
    with using_client(two_threads):
        on_session = CalibratedBoostedClassifier(["e"], params=params, random_state=2, max_rounds=50).fit(frame, target)
    assert on_session.booster_.dump_model()["tree_info"] == local.booster_.dump_model()["tree_info"]


def test_trees_grown_on_the_cluster_are_a_local_booster_with_additive_shap(trained, two_threads):
    snaps, spec = trained.snapshots, trained.scorer.spec
    cols = spec.feature_names
    times = sorted(snaps["as_of"].unique())
    fit, cal, ev = (snaps[snaps["as_of"].isin(t)] for t in (times[:-4], times[-4:-2], times[-2:]))
    with using_client(two_threads):
        model = CalibratedBoostedClassifier(spec.categorical_features, random_state=7).fit(
            fit[cols], fit["label"].to_numpy(), cal[cols], cal["label"].to_numpy())
    local = CalibratedBoostedClassifier(spec.categorical_features, random_state=7).fit(
        fit[cols], fit["label"].to_numpy(), cal[cols], cal["label"].to_numpy())
    assert isinstance(model.booster_, lgb.Booster) and model.booster_.current_iteration() == model.n_rounds_
    assert 1 <= model.n_rounds_ < 1000  # early stopping replayed on the calibration window
    contrib = model.contributions(ev[cols])
    np.testing.assert_allclose(contrib.sum(axis=1), model.raw_score(ev[cols]), atol=1e-9)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict_proba(ev[cols]), model.predict_proba(ev[cols]))
    # data-parallel trees are not the same trees (each worker bins and bags its own rows): close, not equal
    auc = {name: classification_metrics(ev["label"].to_numpy(), m.predict_proba(ev[cols]))["roc_auc"]
           for name, m in (("dask", model), ("local", local))}
    assert abs(auc["dask"] - auc["local"]) < 0.05, auc


@pytest.fixture(scope="module")
def dask_home(tmp_path_factory, sample_dir):
    """`funnelcast train --task lead_quality --engine dask` on a local cluster of two worker processes."""
    from features.settings import get_settings
    from training.cli import main

    home = tmp_path_factory.mktemp("dask_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("FUNNELCAST_HOME", str(home))
    get_settings.cache_clear()
    try:
        assert main(["train", "--task", "lead_quality", "--data", str(sample_dir / "export"), "--horizon", "91d",
                     "--snapshot-every", "28d", "--seed", "7", "--engine", "dask", "--dask-workers", "2"]) == 0
    finally:
        mp.undo()
        get_settings.cache_clear()
    return home


def test_train_on_dask_registers_a_model_with_the_pandas_paths_auc(dask_home, trained):
    from models.registry import configure

    client = configure(f"sqlite:///{dask_home / 'mlflow.db'}")
    version = client.get_model_version_by_alias("lead_quality", "champion")
    metrics = client.get_run(version.run_id).data.metrics
    assert abs(metrics["eval_roc_auc"] - trained.metrics["roc_auc"]) <= 0.002
    assert metrics["eval_roc_auc"] > 0.6


def test_refresh_on_dask_against_postgresql_stores_the_pandas_scores(dask_home, sample_dir, postgres_url):
    from features.settings import Settings
    from serving.cli import _cmd_refresh
    from serving.snapshots import SnapshotStore
    from serving.store import OperationsStore

    settings = Settings(home=dask_home, tracking_uri=f"sqlite:///{dask_home / 'mlflow.db'}", store_url=postgres_url,
                        data=str(sample_dir / "export"))
    flags = {"data": None, "scheduler": None, "dask_workers": 2, "dask_threads": 1, "dask_memory_limit": None}
    assert _cmd_refresh(argparse.Namespace(engine="pandas", **flags), settings) == 0
    assert _cmd_refresh(argparse.Namespace(engine="dask", **flags), settings) == 0
    both = SnapshotStore(OperationsStore(postgres_url)).previous(["lead"], 2)
    assert both["snapshot_id"].nunique() == 2
    pandas_scores, dask_scores = (g.set_index("entity_id")[["probability", "score", "grade", "reasons"]].sort_index()
                                  for _, g in both.groupby("snapshot_id"))
    assert len(dask_scores) > 50
    pd.testing.assert_frame_equal(dask_scores, pandas_scores)


def test_an_unknown_engine_setting_is_an_error_naming_it(tmp_path, monkeypatch, capsys, sample_dir):
    from features.settings import get_settings
    from training.cli import main

    monkeypatch.setenv("FUNNELCAST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FUNNELCAST_ENGINE", "spark")
    get_settings.cache_clear()
    try:
        assert main(["train", "--task", "lead_quality", "--data", str(sample_dir / "export")]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert "error: engine 'spark' is not one of pandas, dask" in err and "Traceback" not in err
