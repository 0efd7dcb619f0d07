"""One settings object for the whole service, read at the edges (CLI and API).

Library functions never read settings themselves: they take what they need as arguments.
Values come from ``FUNNELCAST_*`` environment variables or a ``.env`` file; the MLflow
tracking URI also honours the standard ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELCAST_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".funnelcast"), description="Project data folder")
    data: str | None = Field(None, description="Default CRM export: folder or SQLAlchemy URL")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default: MLFLOW_TRACKING_URI or SQLite under home"
    )
    experiment: str = "funnelcast"
    open_stages: tuple[str, ...] = ("qualification", "proposal", "contract")
    horizon_days: int | None = Field(None, gt=0, description="Label horizon of lead_quality and stage_conversion; default: chosen from the data")
    snapshot_every_days: int = Field(14, gt=0)
    max_batch: int = Field(1000, gt=0)
    model_alias: str = "champion"
    api_key_hashes: list[str] = Field(
        default_factory=list,
        description="SHA-256 hex digests of accepted API keys (FUNNELCAST_API_KEY_HASHES='[\"..\"]')",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Plain API keys, hashed on read and never kept (for local use and tests)",
    )
    admin_api_key_hashes: list[str] = Field(
        default_factory=list, description="SHA-256 hex digests of admin keys (model reload); also valid as API keys"
    )
    admin_api_keys: list[str] = Field(default_factory=list, description="Plain admin keys, hashed on read (local use)")
    api_keys_file: Path | None = Field(
        None,
        description="JSON list of hashed keys with scope and optional expiry, re-read when it changes "
        "(rotate keys without a restart)",
    )
    store_url: str | None = Field(
        None, description="SQLAlchemy URL of the outcomes and served-scores store; default SQLite under home"
    )
    reload_poll_seconds: float = Field(60, ge=0, description="Check the model alias every N seconds; 0: off")
    rate_limit_per_minute: int = Field(1200, ge=0, description="Requests per minute per API key (0: no limit)")
    max_body_bytes: int = Field(20_000_000, gt=0, description="Largest request body accepted")
    cors_origins: list[str] = Field(default_factory=list, description="Browser origins allowed (CORS closed if empty)")
    host: str = "127.0.0.1"
    port: int = 8000

    @field_validator("open_stages", mode="before")
    @classmethod
    def _stages_from_str(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(s.strip().casefold() for s in v.split(",") if s.strip())
        return v

    @property
    def sample_dir(self) -> Path:
        return self.home / "sample"

    @property
    def sample_export(self) -> Path:
        return self.sample_dir / "export"

    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def artifact_location(self) -> str:
        return (self.home / "mlartifacts").resolve().as_uri()

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.home / 'operations.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
