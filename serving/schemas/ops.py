"""Operations schemas: health, readiness, the registered models, reload, outcomes, live performance."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from models.tasks import Task
from serving.schemas.common import Timestamp
from serving.schemas.live import SnapshotState


class FloorOutcome(BaseModel):
    passed: bool = Field(description="Not below the best simple baseline by more than the allowance")
    model: float = Field(description="The model's floor metric (an ROC AUC) on its evaluation window")
    baseline: float = Field(description="The best baseline's figure of the same metric, same window")
    allowance: float = Field(description="The noise allowance: one standard error of the model's AUC")


class ModelVersion(BaseModel):
    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    created_at: str
    trained_from: str | None
    trained_until: str | None
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Each baseline's figures on the same evaluation window, beside eval_* "
        "(from the run's baseline_<name>_<metric> metrics)")
    floor: FloorOutcome | None = Field(None, description="The baseline floor of the version (null: not recorded)")
    run_error: str | None = Field(None, description="Why the version's training run (its metrics) could not be read")
    loaded: bool = Field(description="Whether this API process serves this version")


class ModelsResponse(BaseModel):
    models: list[ModelVersion]


class Health(BaseModel):
    status: str


class TaskReadiness(BaseModel):
    state: Literal["loaded", "failed", "not_trained", "not_registered"]
    version: str | None = Field(None, description="The version served (state loaded)")
    reason: str | None = Field(None, description="Why it is not loaded")


class DataReadiness(BaseModel):
    state: Literal["readable", "unreadable", "shrunken", "not_read_yet"] = Field(
        description="The configured export (read on the first funnel, forecast or worklist request); shrunken: "
        "refused, it lost rows or recent events since the served models were trained on it (reason: the figures)")
    rows: dict[str, int] = Field(default_factory=dict, description="Rows per table of the export served")
    reason: str | None = None


class StoreReadiness(BaseModel):
    state: Literal["present", "missing", "gone"] = Field(
        description="The MLflow store the models are loaded from; missing: refused, never created empty (reason: "
        "which store and what to run); gone: deleted while the server ran (not ready; the models already loaded "
        "still score)")
    kind: str = Field(description="sqlite (a file under the project home by default), or the scheme of a server URI")
    name: str | None = Field(None, description="The SQLite file's name (no server path)")
    reason: str | None = None


class OperationsReadiness(BaseModel):
    state: Literal["present", "none", "gone"] = Field(
        description="The operations database (outcomes, served scores, snapshots); none: no operations store yet "
        "(the first write creates it, a read never does); gone: deleted while the server ran (not ready)")
    kind: str = Field(description="sqlite (operations.db under the project home by default), or the database's scheme")
    name: str | None = Field(None, description="The SQLite file's name (no server path)")
    reason: str | None = None


class Readiness(BaseModel):
    ready: bool = Field(description="lead_quality loaded and no registered model failed to load")
    models: dict[str, str] = Field(description="Loaded model versions by name")
    reason: str | None = None
    tasks: dict[str, TaskReadiness] = Field(default_factory=dict, description="Every served task's state")
    data: DataReadiness | None = None
    store: StoreReadiness | None = Field(None, description="The MLflow store (null: not checked)")
    operations: OperationsReadiness | None = Field(None, description="The operations database (null: not checked)")
    snapshot: SnapshotState | None = Field(None, description="The scored snapshot served (null: none yet)")


class ReloadedModel(BaseModel):
    version: str | None = Field(description="The version now served (null: none)")
    previous: str | None = Field(description="The version served before the reload")
    changed: bool


class ReloadResponse(BaseModel):
    models: dict[str, ReloadedModel]
    problems: dict[str, str] = Field(description="Models that could not be loaded (the previous one stays in use)")


class OutcomeRecord(BaseModel):
    record_id: str = Field(min_length=1, max_length=256, description="The lead id (or deal id) the CRM scored",
                           examples=["L-1"])
    task: str = Field(Task.LEAD_QUALITY.value, description="The model the outcome is for", examples=["lead_quality"])
    outcome: Literal["converted", "disqualified", "won", "lost"] = Field(
        description="lead: converted / disqualified; deal: won / lost"
    )
    occurred_at: Timestamp = Field(description="When it happened (ISO 8601; no offset = UTC; years 1900-2199, never a number)")


class OutcomesRequest(BaseModel):
    outcomes: list[OutcomeRecord] = Field(min_length=1, max_length=10_000)


class OutcomesResponse(BaseModel):
    received: int
    created: int
    updated: int = Field(description="Records reported before with another outcome or time, now corrected")
    unchanged: int = Field(description="Records reported before identically (idempotent repeats)")
    results: list[Literal["accepted", "duplicate", "corrected"]] = Field(
        default_factory=list, description="Each record's result, in the order sent: accepted (new), duplicate (the "
        "same outcome and time were stored) or corrected (another one was stored and is replaced)")


class VersionPerformance(BaseModel):
    version: str
    loaded: bool
    n: int = Field(description="Records scored by this version and decided afterwards")
    positives: int
    roc_auc: float | None
    brier: float | None
    calibration_error: float | None
    mean_probability: float | None
    observed_rate: float | None


class PerformanceResponse(BaseModel):
    task: str
    outcomes_stored: int
    versions: list[VersionPerformance]
