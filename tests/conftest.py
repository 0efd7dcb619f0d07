"""Shared, seeded fixtures: a small generated CRM export, a trained lead scorer, an MLflow store.

Everything is built once per test session on small data (scale 0.15) so the suite stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# LightGBM's OpenMP threads sleep instead of spinning while they wait: with the suite's two workers
# (pytest-xdist, `make test`) each fit's threads would otherwise spin against the other worker's on
# two cores (a tuning test went from 13 s to 94 s). Read by libgomp when LightGBM loads, so set first;
# child processes (the CLI and server tests) inherit it. It changes no result, only how threads wait.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: A PostgreSQL server for the tests (`.ci/run` starts one): read before the FUNNELCAST_* variables go
POSTGRES_URL = os.environ.get("FUNNELCAST_TEST_POSTGRES_URL")

# tests configure everything explicitly: a developer's FUNNELCAST_* / MLflow settings must not leak in.
# FUNNELCAST_TEST_* stay: they configure the tests themselves, and the pytest-xdist workers, started
# after this file ran in the main process, read them from the environment they inherit.
for _name in [n for n in os.environ if (n.startswith("FUNNELCAST_") and not n.startswith("FUNNELCAST_TEST_"))
              or n == "MLFLOW_TRACKING_URI"]:
    del os.environ[_name]

SEED = 7
SCALE = 0.05


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_uri():
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI, and Settings honours that variable: one
    test's (or fixture's) store would become the next one's default (a Dask train registered into
    another test's store). Each test starts without it and leaves none behind."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from features.sample import generate_sample

    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, seed=SEED, scale=SCALE)
    return out


@pytest.fixture(scope="session")
def sample_export(sample_dir: Path):
    from features.io import load_export

    export, report = load_export(sample_dir / "export")
    assert not report, report.summary()
    return export


@pytest.fixture(scope="session")
def train_config():
    from training.train import TrainConfig

    return TrainConfig(horizon_days=91, snapshot_every_days=28, seed=SEED)  # the horizon from the data: tests/models/test_windows.py


@pytest.fixture(scope="session")
def trained(sample_export, train_config):
    from training.train import build_lead_model

    return build_lead_model(sample_export, train_config, sample_export.exported_at)


@pytest.fixture(scope="session")
def lead_scorer(trained):
    return trained.scorer


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory, trained, train_config):
    """A local SQLite MLflow store with ``lead_quality@champion`` registered from ``trained``."""
    from models.registry import configure
    from training.pipeline import log_and_register

    home = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = configure(uri)
    result = log_and_register(
        trained,
        client,
        experiment="funnelcast-tests",
        artifact_location=(home / "artifacts").as_uri(),
        cfg=train_config,
        data_source="generated sample",
    )
    return {"uri": uri, "client": client, "version": result.version, "home": home}


@pytest.fixture(scope="session")
def account_sample(tmp_path_factory: pytest.TempPathFactory):
    """A scale-0.3 sample (about 270 customers with a complete value: the small one has 39) and the
    high_value model built on it: ``(export folder, export, config, result)``."""
    from features.io import load_export
    from features.sample import generate_sample
    from training.accounts import AccountConfig, build_high_value_model

    out = tmp_path_factory.mktemp("hv_sample")
    generate_sample(out, seed=SEED, scale=0.3)
    export, _ = load_export(out / "export")
    cfg = AccountConfig(n_bootstrap=5, seed=SEED)
    return out / "export", export, cfg, build_high_value_model(export, cfg, export.exported_at)


@pytest.fixture(scope="session")
def deal_config():
    from training.deals import DealTrainConfig

    return DealTrainConfig(snapshot_every_days=28, seed=SEED)


@pytest.fixture(scope="session")
def deal_snapshot_frame(sample_export, deal_config):
    """``(spec, snapshots)`` of the deal models on the small sample, up to the export time."""
    from training.deals import build_snapshots

    return build_snapshots(sample_export, sample_export.exported_at, deal_config)


@pytest.fixture(scope="module")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """A SQLAlchemy URL of a fresh, empty PostgreSQL database for the test module (dropped after it).

    From the server at ``FUNNELCAST_TEST_POSTGRES_URL`` (``.ci/run`` starts one); skips when it is
    unset. Any module can use it: ``def test_x(postgres_url): ...``."""
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set FUNNELCAST_TEST_POSTGRES_URL (`.ci/run` starts one and sets it)")
    import uuid

    import sqlalchemy as sa

    server = sa.make_url(POSTGRES_URL)
    name = f"fc_{request.module.__name__.rsplit('.', 1)[-1][:30]}_{uuid.uuid4().hex[:8]}".lower()
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def race_outcomes():
    """``race(url)``: 4 threads store the same 50 outcomes 5 times each through ``OperationsStore(url)``
    at once; returns the errors raised, each record's results and the rows stored."""
    import threading

    def race(url: str) -> tuple[list[BaseException], list[list[str]], int]:
        from serving.store import OperationsStore

        store = OperationsStore(url)
        items = [{"task": "lead_quality", "record_id": f"L-{i}", "outcome": "converted" if i % 2 else "disqualified",
                  "occurred_at": "2030-01-01T00:00:00Z"} for i in range(50)]
        errors: list[BaseException] = []
        results: list[list[str]] = []
        start = threading.Barrier(4)

        def worker() -> None:
            start.wait()
            for _ in range(5):
                try:
                    results.append(store.upsert_outcomes(items).statuses)
                except Exception as exc:  # noqa: BLE001 - counted, the test asserts there are none
                    errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = store.outcome_count("lead_quality")
        store.engine.dispose()
        return errors, results, rows

    return race
