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


def test_a_logged_model_lists_what_it_needs_to_load_at_the_installed_versions(mlflow_store):
    from importlib import metadata

    mlflow.set_tracking_uri(mlflow_store["uri"])
    mlflow.set_registry_uri(mlflow_store["uri"])
    path = mlflow.pyfunc.get_model_dependencies(f"models:/lead_quality/{mlflow_store['version']}")
    lines = set(open(path).read().split())
    for package in ("funnelcast", "lightgbm", "scikit-learn", "pandas", "numpy", "mlflow"):
        assert f"{package}=={metadata.version(package)}" in lines, (package, lines)


def _client(model_tags: dict[str, str], run_source: str | None):
    run = SimpleNamespace(data=SimpleNamespace(tags={} if run_source is None else {"data_source": run_source}))
    return SimpleNamespace(get_registered_model=lambda name: SimpleNamespace(tags=model_tags),
                           get_run=lambda run_id: run)


def test_a_champion_of_another_export_is_not_served_when_the_last_export_could_not_train_its_task(tmp_path):
    """After a first `funnelcast run` on the sample, a leads-only CRM cannot train stage_conversion: the
    sample's deal model must not go on scoring that CRM's deals. The same export trained earlier is served."""
    from models.registry import NOT_TRAINED_TAG, _trained_on_another_export

    mv = SimpleNamespace(version="3", run_id="r")
    failed = {NOT_TRAINED_TAG: "stage_conversion needs opportunities", f"{NOT_TRAINED_TAG}_source": str(tmp_path / "crm")}
    why = _trained_on_another_export(_client(failed, str(tmp_path / "sample")), "stage_conversion", mv)
    assert why == ("not trained on the last export: stage_conversion needs opportunities; version 3 was trained on "
                   "another export and is not served for this one")
    # the same export (written another way), a version without a recorded source, nothing recorded: served
    assert _trained_on_another_export(_client(failed, str(tmp_path / "x" / ".." / "crm")), "stage_conversion", mv) is None
    assert _trained_on_another_export(_client(failed, None), "stage_conversion", mv) is None
    assert _trained_on_another_export(_client({}, str(tmp_path / "sample")), "stage_conversion", mv) is None
