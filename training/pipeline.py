"""One training path for every task: train over the task protocol, log and register in MLflow.

:func:`train` asks the task's definition (``training.tasks``) for its snapshots, time-fold
evaluation and final scorer; :func:`log_and_register` logs any task's result the same way:
tags (task, data source, provenance), params (the shared ones and the task's), the evaluation
metrics as ``eval_*`` and the baseline's under the task's prefix, each candidate's
(``baseline_<name>_*`` for the baselines, ``candidate_<name>_*`` for the models), the report
artifacts, the pyfunc, and the registration. The first registered version of a model also
becomes the champion, unless it is below the **baseline floor** (:func:`result_floor`; then it
stays challenger and the ``floor`` tag says why, until ``funnelcast promote --force``); later
ones wait as challenger for ``funnelcast promote``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from features.contract import Export
from features.profile import source_key
from models.registry import ScorerModel, clear_not_trained
from models.tasks import Task, TrainResult, build_task
from training.promote import Floor, floor
from training.provenance import provenance_tags
from training.tasks import task_definition

__all__ = ["experiment_id", "log_and_register", "result_baselines", "result_floor", "train"]


def train(task: Task | str, export: Export, cutoff: pd.Timestamp, config: Any, *, progress: bool = False,
          outcomes: pd.DataFrame | None = None) -> TrainResult:
    """Train ``task`` on what ``export`` knew at ``cutoff`` (no MLflow)."""
    return build_task(task_definition(task), export, cutoff, config, progress=progress, outcomes=outcomes)


def experiment_id(client: MlflowClient, experiment: str, artifact_location: str | None = None) -> str:
    """The id of the MLflow experiment named ``experiment``, created (with ``artifact_location``) if missing."""
    exp = client.get_experiment_by_name(experiment)
    return exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)


def _shared_params(result: TrainResult, cfg: Any) -> dict[str, object]:
    meta = result.scorer.metadata
    return {
        "task": result.scorer.task,
        "train_from": meta["train_from"],
        "trained_until": meta["trained_until"],
        "n_features": len(result.scorer.spec.feature_names),
        "seed": cfg.seed,
        "params_source": str(meta.get("params_source", "default")),
        "stored_outcomes": "used" if result.outcome_labels is not None else "off",
        **{f"split_{k}": v for k, v in result.windows.items()},
        **result.chosen,  # windows and models chosen from the data (horizon_source: data|user, candidate, ...)
    }


def _candidate_metrics(result: TrainResult) -> dict[str, float]:
    """Each candidate's evaluation-window metrics: ``baseline_<name>_<metric>`` for the baselines
    (where the floor reads them), ``candidate_<name>_<metric>`` for the models."""
    out: dict[str, float] = {}
    if result.candidates is None:
        return out
    own = task_definition(result.scorer.task).baseline  # logged already, from baseline_metrics
    for name, row in result.candidates.iterrows():
        prefix = "baseline" if row.get("role") == "baseline" else "candidate"
        if f"{prefix}_{name}" == own:
            continue
        for k, v in row.items():
            # the evaluation window's figures only (validation figures and settings: report/candidates.csv)
            if k in result.metrics and isinstance(v, (int, float, np.floating)) and np.isfinite(v):
                out[f"{prefix}_{name}_{k}"] = float(v)
    return out


def result_baselines(result: TrainResult) -> dict[str, dict[str, float]]:
    """Every baseline's evaluation-window metrics: the task's own (under its prefix) and the
    candidates whose role is ``baseline``."""
    definition = task_definition(result.scorer.task)
    named = (result.chosen or {}).get("baseline_name")
    cands = result.candidates
    # the task's own baseline figures are one of the ladder's baselines (lead_quality: the better of the two
    # on the evaluation window): named once, by that name
    own = not (named and cands is not None and named in cands.index and cands.loc[named, "role"] == "baseline")
    out = {definition.baseline: dict(result.baseline_metrics)} if own else {}
    if result.candidates is not None:
        for name, row in result.candidates[result.candidates["role"] == "baseline"].iterrows():
            if f"baseline_{name}" != definition.baseline:
                out[f"baseline_{name}"] = {k: v for k, v in row.items() if isinstance(v, (int, float, np.floating))}
    return out


def result_floor(result: TrainResult) -> Floor:
    """The baseline floor of a training result on its evaluation window (``training.promote.floor``)."""
    metric = task_definition(result.scorer.task).floor_metric
    return floor(result.metrics, result_baselines(result), metric, result.windows.get("evaluate", "?"))


def _write_report(result: TrainResult, cfg: Any, folder: Path) -> None:
    """The report every task logs (features, held-out predictions, drift reference), then the task's own."""
    report = folder / "report"
    report.mkdir(parents=True)
    spec = result.scorer.spec
    (report / "features.json").write_text(json.dumps(
        {"features": spec.feature_names, "categorical": spec.categorical_features, "spec": spec.__dict__},
        indent=2, default=str))
    result.evaluation.to_csv(report / "evaluation_predictions.csv", index=False)
    if result.scorer.metadata.get("reference") is not None:
        (report / "reference_distributions.json").write_text(json.dumps(result.scorer.metadata["reference"], indent=1))
    task_definition(result.scorer.task).write_report(result, cfg, folder)


#: What a logged scorer needs to load and score: funnelcast (the scorer's classes) and the libraries whose
#: objects its pickle holds, pinned to the versions installed. Stated, not inferred: MLflow's inference loads
#: the model in a child process to see what it imports (about 3 s per model logged) and missed LightGBM.
MODEL_PACKAGES = ("funnelcast", "lightgbm", "scikit-learn", "scipy", "numpy", "pandas", "pyarrow", "cloudpickle")


def model_requirements() -> list[str]:
    """The pip requirements of a logged scorer (``requirements.txt`` beside it; MLflow adds its own)."""
    out = []
    for package in MODEL_PACKAGES:
        try:
            out.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:  # e.g. run from a source tree without installing funnelcast
            continue
    return out


def _log_model(scorer: Any, snapshots: pd.DataFrame, folder: Path) -> str:
    """Log the pyfunc of ``scorer`` and register it; returns the new version."""
    name = scorer.task
    joblib.dump(scorer, folder / "scorer.joblib")
    example = snapshots[scorer.spec.feature_names].head(5)
    signature = infer_signature(example, pd.DataFrame({"probability": scorer.predict_proba(example)}))
    info = mlflow.pyfunc.log_model(name=name, python_model=ScorerModel(),
                                   artifacts={"scorer": str(folder / "scorer.joblib")}, signature=signature,
                                   input_example=example, registered_model_name=name,
                                   pip_requirements=model_requirements())
    return str(info.registered_model_version)


def _register(client: MlflowClient, scorer: Any, version: str, alias: str, challenger_alias: str,
              outcome: str, reason: str) -> list[str]:
    """Set the aliases of a new version (the first version also becomes ``alias``, unless the floor
    refused it) and its trained_until and floor tags."""
    name = scorer.task
    aliases = [challenger_alias]
    registered = client.get_registered_model(name)
    if alias not in registered.aliases and outcome != "refused":
        aliases.append(alias)  # a first model becomes champion directly
    for a in aliases:
        client.set_registered_model_alias(name, a, version)
    client.set_model_version_tag(name, version, "trained_until", str(scorer.trained_until))
    client.set_model_version_tag(name, version, "floor", outcome)
    client.set_model_version_tag(name, version, "floor_reason", reason[:500])
    clear_not_trained(client, name, registered.tags)
    return aliases


def floor_outcome(fl: Floor, force: bool) -> str:
    """``passed``, ``refused``, ``forced`` (below, but ``--force``) or ``no baseline``."""
    if fl.best is None:
        return "no baseline"
    return "passed" if fl.passed else ("forced" if force else "refused")


def log_and_register(result: TrainResult, client: MlflowClient, *, experiment: str, artifact_location: str | None,
                     cfg: Any, data_source: str, alias: str = "champion",
                     challenger_alias: str = "challenger", force: bool = False) -> TrainResult:
    """Log ``result`` (any task) to MLflow and register it as ``challenger_alias`` (first version:
    ``alias`` too, unless it is below the baseline floor and not ``force``)."""
    scorer = result.scorer
    if isinstance(scorer.metadata.get("export_profile"), dict):  # the source it was read from: serving compares like with like
        scorer.metadata["export_profile"] = {**scorer.metadata["export_profile"], "source": source_key(data_source)}
    definition = task_definition(scorer.task)
    fl = result_floor(result)
    outcome = floor_outcome(fl, force)
    with mlflow.start_run(experiment_id=experiment_id(client, experiment, artifact_location),
                          run_name=f"{scorer.task}-{scorer.trained_until.date()}") as run:
        mlflow.set_tags({"task": scorer.task, "data_source": data_source})
        mlflow.set_tags(provenance_tags(cfg.seed, scorer.metadata.get("data_fingerprint")))
        if result.warnings:
            mlflow.set_tag("warnings", " | ".join(result.warnings)[:5000])
        mlflow.log_params({**_shared_params(result, cfg), **definition.run_params(result, cfg)})
        mlflow.log_metrics({f"eval_{k}": v for k, v in result.metrics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"{definition.baseline}_{k}": v for k, v in result.baseline_metrics.items()
                            if np.isfinite(v)})
        mlflow.log_metrics(_candidate_metrics(result))
        mlflow.log_metrics({k: v for k, v in fl.metrics().items() if np.isfinite(v)})
        mlflow.set_tags({"floor": outcome, "floor_metric": fl.metric, "floor_reason": fl.describe()[:500]})
        if result.outcome_labels is not None:
            mlflow.log_metrics(result.outcome_labels.as_metrics())
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            _write_report(result, cfg, d / "artifacts")
            for part in sorted(p for p in (d / "artifacts").iterdir() if p.is_dir()):
                mlflow.log_artifacts(str(part), artifact_path=part.name)
            try:
                version = _log_model(scorer, result.snapshots, d)
                result.aliases = _register(client, scorer, version, alias, challenger_alias, outcome, fl.describe())
            except BaseException as exc:  # interrupted or failed: no version of this run may look complete
                _mark_incomplete(client, scorer.task, run.info.run_id)
                mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
                raise
        result.run_id, result.version = run.info.run_id, version
    return result


def _mark_incomplete(client: MlflowClient, name: str, run_id: str) -> None:
    """Tag every version registered from ``run_id`` ``incomplete`` (``/v1/models`` leaves them out)."""
    try:
        for mv in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            client.set_model_version_tag(name, mv.version, "incomplete", "true")
    except Exception:  # noqa: BLE001 - the original error is what the caller must see
        logging.getLogger(__name__).exception("could not tag the versions of run %s incomplete", run_id)
