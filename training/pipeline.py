"""One training path for every task: train over the task protocol, log and register in MLflow.

:func:`train` asks the task's definition (``training.tasks``) for its snapshots, time-fold
evaluation and final scorer; :func:`log_and_register` logs any task's result the same way:
tags (task, data source, provenance), params (the shared ones and the task's), the evaluation
metrics as ``eval_*`` and the baseline's under the task's prefix, the report artifacts, the
pyfunc, and the registration. The first registered version of a model also becomes the
champion; later ones wait as challenger for ``funnelcast promote``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from features.contract import Export
from models.registry import ScorerModel
from models.tasks import Task, TrainResult, build_task
from training.provenance import provenance_tags
from training.tasks import task_definition

__all__ = ["experiment_id", "log_and_register", "train"]


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


def _log_model(scorer: Any, snapshots: pd.DataFrame, folder: Path) -> str:
    """Log the pyfunc of ``scorer`` and register it; returns the new version."""
    name = scorer.task
    joblib.dump(scorer, folder / "scorer.joblib")
    example = snapshots[scorer.spec.feature_names].head(5)
    signature = infer_signature(example, pd.DataFrame({"probability": scorer.predict_proba(example)}))
    info = mlflow.pyfunc.log_model(name=name, python_model=ScorerModel(),
                                   artifacts={"scorer": str(folder / "scorer.joblib")}, signature=signature,
                                   input_example=example, registered_model_name=name)
    return str(info.registered_model_version)


def _register(client: MlflowClient, scorer: Any, version: str, alias: str, challenger_alias: str) -> list[str]:
    """Set the aliases of a new version (the first version also becomes ``alias``) and its trained_until tag."""
    name = scorer.task
    aliases = [challenger_alias]
    if alias not in client.get_registered_model(name).aliases:
        aliases.append(alias)  # a first model becomes champion directly
    for a in aliases:
        client.set_registered_model_alias(name, a, version)
    client.set_model_version_tag(name, version, "trained_until", str(scorer.trained_until))
    return aliases


def log_and_register(result: TrainResult, client: MlflowClient, *, experiment: str, artifact_location: str | None,
                     cfg: Any, data_source: str, alias: str = "champion",
                     challenger_alias: str = "challenger") -> TrainResult:
    """Log ``result`` (any task) to MLflow and register it as ``challenger_alias`` (first version: ``alias`` too)."""
    scorer = result.scorer
    definition = task_definition(scorer.task)
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
        if result.outcome_labels is not None:
            mlflow.log_metrics(result.outcome_labels.as_metrics())
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            _write_report(result, cfg, d / "artifacts")
            for part in sorted(p for p in (d / "artifacts").iterdir() if p.is_dir()):
                mlflow.log_artifacts(str(part), artifact_path=part.name)
            version = _log_model(scorer, result.snapshots, d)
        result.aliases = _register(client, scorer, version, alias, challenger_alias)
        result.run_id, result.version = run.info.run_id, version
    return result
