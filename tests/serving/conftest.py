"""Fixtures of the serving tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _no_refresh_at_start():
    """An app these tests start does not refresh in the background at start (``FUNNELCAST_REFRESH_AT_START``):
    the tests say when a refresh runs (a request, an admin call, a reload), and a refresh of their
    own would race their assertions and take a CPU. Module-scoped and autouse, so it is set before the
    module's fixtures build their apps; the tests of the refresh at start set it on their own settings."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUNNELCAST_REFRESH_AT_START", "false")
        yield


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URI of an MLflow store that exists and holds no model. The serving side never creates a
    store (a missing one is a 503 naming what to run), so an app that must answer ``GET /v1/models``
    with 200 and no model gets one made here, as training would make it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('empty-store') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()  # creates the file and its tables
    return uri
