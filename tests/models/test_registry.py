"""The registry reader: an unreadable run is reported, and the alias is resolved once."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import mlflow
from mlflow.exceptions import MlflowException

from models.registry import describe_versions, load_scorer


class _Client:
    """Two versions of a model: v2's run can be read, v1's run is gone."""

    def search_model_versions(self, query):
        return [SimpleNamespace(version="1", run_id="gone", creation_timestamp=0),
                SimpleNamespace(version="2", run_id="here", creation_timestamp=0)]

    def get_registered_model(self, name):
        return SimpleNamespace(aliases={"champion": "2"})

    def get_run(self, run_id):
        if run_id == "gone":
            raise MlflowException("Run 'gone' not found")
        return SimpleNamespace(data=SimpleNamespace(metrics={"eval_roc_auc": 0.8}, params={"train_from": "a"}))


def test_a_version_whose_run_cannot_be_read_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        v2, v1 = describe_versions(_Client(), "lead_quality")
    assert v2["metrics"] == {"eval_roc_auc": 0.8} and v2["run_error"] is None and v2["aliases"] == ["champion"]
    assert v1["metrics"] == {} and "run gone could not be read" in v1["run_error"]
    assert "lead_quality version 1" in caplog.text


def test_the_alias_is_resolved_once_and_that_version_loaded(mlflow_store, monkeypatch):
    uris = []
    real = mlflow.pyfunc.load_model

    def recording(uri, *args, **kwargs):
        uris.append(uri)
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(mlflow.pyfunc, "load_model", recording)
    loaded = load_scorer(mlflow_store["client"], "lead_quality", "champion")
    assert uris == [f"models:/lead_quality/{loaded.version}"] and loaded.version == mlflow_store["version"]
