"""One settings object for the whole service, read at the edges (CLI and API).

Library functions never read settings themselves: they take what they need as arguments.
Values come from ``FUNNELCAST_*`` environment variables or a ``.env`` file; the MLflow
tracking URI also honours the standard ``MLFLOW_TRACKING_URI``.

The project home (models, operations database, sample) is found the way git finds ``.git``:
``FUNNELCAST_HOME`` when set; else the nearest ``.funnelcast/`` folder, or the ``.funnelcast/``
beside the nearest ``funnelcast.toml`` marker, walking up from the working folder; else the
per-user data folder (``platformdirs.user_data_path("funnelcast")``: ``~/.local/share/funnelcast``
on Linux). Any command run from a subfolder of a project therefore reads the project's store.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from features.errors import FunnelcastError

__all__ = ["HOME_DIR", "MARKER", "Settings", "SettingsProblem", "StoreNotFound", "find_home", "get_settings",
           "redact_uri"]

#: A list setting: a JSON list (``'["a", "b"]'``) or comma-separated text (``a,b``) in the environment.
StrList = Annotated[list[str], NoDecode]

#: The project folder's name, and the marker file whose folder gets one.
HOME_DIR = ".funnelcast"
MARKER = "funnelcast.toml"


class StoreNotFound(FunnelcastError):
    """A command that reads models found no MLflow store where the project home says it is."""

    def __init__(self, path: Path, origin: str, hint: str):
        self.path = path
        super().__init__(f"no MLflow store at {path} (project home {path.parent}, {origin}); {hint}")


def find_home(start: Path | None = None) -> tuple[Path, str]:
    """The project home seen from ``start`` (the working folder) and how it was found.

    The nearest ``.funnelcast/`` folder or ``funnelcast.toml`` marker (whose folder's
    ``.funnelcast/`` is the home) from ``start`` up to the root; else the per-user data folder."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / HOME_DIR).is_dir():
            return folder / HOME_DIR, f"found from {here}"
        if (folder / MARKER).is_file():
            return folder / HOME_DIR, f"marked by {folder / MARKER}"
    import platformdirs

    origin = f"the per-user default: no {HOME_DIR}/ or {MARKER} above {here}"
    return platformdirs.user_data_path("funnelcast"), origin


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (database URLs and http URIs alike)."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELCAST_", env_file=".env", extra="ignore")

    #: never None once validated: ``_find_home`` fills it in
    home: Path | None = Field(None, description="Project data folder (default: the nearest .funnelcast/ or "
                              "funnelcast.toml walking up from the working folder, else the per-user data folder)")
    data: str | None = Field(None, description="Default CRM export: folder or SQLAlchemy URL")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default: MLFLOW_TRACKING_URI or SQLite under home"
    )
    experiment: str = "funnelcast"
    artifact_root: str | None = Field(
        None, description="Where a new MLflow experiment stores its models: a folder every host mounts at the same "
        "path, or a bucket URI (s3://..., gs://...); default: mlartifacts under home, or the tracking server's own "
        "artifact root when the tracking URI is a server (http://, https://)")
    open_stages: Annotated[tuple[str, ...], NoDecode] = ("qualification", "proposal", "contract")
    horizon_days: int | None = Field(None, gt=0, description="Label horizon of lead_quality and stage_conversion; default: chosen from the data")
    snapshot_every_days: int = Field(14, gt=0)
    max_batch: int = Field(1000, gt=0)
    train_threads: int | None = Field(
        None, ge=0, description="LightGBM threads of each model fit in training (train, retrain, run, backtest, "
        "promote, tune); default: the models' own (2, or 1 for the deal models, which fit many small "
        "models); 0: every core. A shared machine wants fewer, a large dedicated one more")
    model_alias: str = "champion"
    api_key_hashes: StrList = Field(
        default_factory=list,
        description="SHA-256 hex digests of accepted API keys (FUNNELCAST_API_KEY_HASHES='[\"..\"]')",
    )
    api_keys: StrList = Field(
        default_factory=list,
        description="Plain API keys, hashed on read and never kept (for local use and tests)",
    )
    admin_api_key_hashes: StrList = Field(
        default_factory=list, description="SHA-256 hex digests of admin keys (model reload); also valid as API keys"
    )
    admin_api_keys: StrList = Field(default_factory=list, description="Plain admin keys, hashed on read (local use)")
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
    max_body_bytes: int = Field(20_000_000, gt=0, description="Largest request body accepted (counted while read)")
    idempotency_cache_bytes: int = Field(64 * 1024 * 1024, ge=0, description="Memory for replayable responses")
    analytics_concurrency: int = Field(2, gt=0, description="Concurrent funnel/forecast/worklist runs per process")
    failed_keys_per_minute: int = Field(30, ge=0, description="Bad API keys per client address per minute (0: off)")
    max_allocation_cells: int = Field(4_000_000, gt=0, description="Largest reps x items of one allocation")
    min_export_share: float = Field(
        0.8, ge=0, le=1, description="Refuse an export (refresh, funnel, forecast) holding fewer than this share of any "
        "table's rows at training from the same source, or older events; 0: off")
    cors_origins: StrList = Field(default_factory=list, description="Browser origins allowed (CORS closed if empty)")
    refresh_every: float = Field(
        0, ge=0, description="`serve` refreshes the scored snapshot every N seconds (or '15m', '2h'); 0: off "
        "(run `funnelcast refresh` from cron instead)"
    )
    refresh_at_start: bool = Field(
        True, description="`serve` starts the first refresh in the background at start when the CRM source is "
        "configured (FUNNELCAST_DATA, or the sample under home) and no scored snapshot of the loaded models from it "
        "exists yet, so the first manager does not wait for it; false: the first worklist, funnel or forecast "
        "request runs it (with FUNNELCAST_REFRESH_EVERY the schedule refreshes at start anyway)"
    )
    refresh_process: bool = Field(
        True, description="`serve` runs each refresh in a child process at a lower priority (see refresh_nice), so "
        "scoring keeps the worker's CPU and the export never stays in its memory; false: in a worker thread"
    )
    refresh_nice: int = Field(10, ge=0, le=19, description="How much nicer (os.nice) the refresh's child process runs")
    trend_points: int = Field(3, ge=2, description="Snapshots a score trend looks back over (the latest included)")
    trend_threshold_points: float = Field(
        5.0, gt=0, description="Probability change, in points, beyond which a trend is improving or declining"
    )
    effort_lead: float | None = Field(None, gt=0, le=1000, description="Worklist effort of a lead in rep touches; "
                                      "default: measured on the export (docs/guides/managers-page.md)")
    effort_deal: float | None = Field(None, gt=0, le=1000, description="Worklist effort of a deal in rep touches, "
                                      "every stage; default: measured on the export per stage")
    effort_account: float | None = Field(None, gt=0, le=1000, description="Worklist effort of an account in rep "
                                         "touches; default: measured on the export")
    engine: str = Field("pandas", description="Engine of `train`, `score` and `refresh`: pandas (this process) or "
                        "dask (features per entity partition and LightGBM on a Dask cluster; the `dask` extra)")
    dask_scheduler: str | None = Field(None, description="Dask scheduler address (tcp://host:8786) of --engine dask; "
                                       "default: a local cluster started for the command")
    dask_workers: int = Field(2, gt=0, description="Workers of the local Dask cluster")
    dask_threads: int = Field(1, gt=0, description="Threads per worker of the local Dask cluster")
    dask_memory_limit: str = Field("auto", description="Memory limit per worker of the local Dask cluster ('4GB', 'auto')")
    host: str = "127.0.0.1"
    port: int = 8000

    _home_origin: str = PrivateAttr("set by FUNNELCAST_HOME or given")

    @field_validator("home", mode="before")
    @classmethod
    def _home_absolute(cls, v: object) -> object:
        return None if v is None or v == "" else Path(v).expanduser().resolve()  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _find_home(self) -> Settings:
        if self.home is None:
            self.home, self._home_origin = find_home()
        return self

    @property
    def home_origin(self) -> str:
        """How the home was found: ``FUNNELCAST_HOME`` (or given), found from a folder, or the per-user default."""
        return self._home_origin

    @field_validator("open_stages", mode="before")
    @classmethod
    def _stages_from_str(cls, v: object) -> object:
        v = _list_from_str(v)
        return tuple(s.strip().casefold() for s in v if isinstance(s, str) and s.strip()) if isinstance(v, list) else v

    @field_validator("api_key_hashes", "api_keys", "admin_api_key_hashes", "admin_api_keys", "cors_origins",
                     mode="before")
    @classmethod
    def _strings_from_str(cls, v: object) -> object:
        return _list_from_str(v)

    @field_validator("refresh_every", mode="before")
    @classmethod
    def _seconds_from_str(cls, v: object) -> object:
        """'90', '90s', '15m', '2h' or '1d' as seconds."""
        if isinstance(v, str):
            text = v.strip().lower()
            unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:], None)
            number = text[:-1] if unit else text
            try:
                return float(number) * (unit or 1)
            except ValueError:
                raise ValueError(f"refresh_every {v!r} is not a duration such as 900, '15m' or '2h'") from None
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

    def local_tracking_db(self) -> Path | None:
        """The SQLite file of the tracking store when it is one (None for a server or another database)."""
        uri = self.resolved_tracking_uri()
        if not uri.startswith("sqlite:///"):
            return None
        path = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None

    def require_tracking_store(self, hint: str = "train first: `funnelcast train` (or `funnelcast run`)") -> None:
        """Refuse (:class:`StoreNotFound`) when the tracking store is a SQLite file that does not exist:
        MLflow would silently create an empty one, and every model would look missing."""
        db = self.local_tracking_db()
        if db is not None and not db.exists():
            origin = self.home_origin if db.parent == self.home else "the configured tracking URI"
            raise StoreNotFound(db, origin, f"{hint}; or run from the project folder or set FUNNELCAST_HOME")

    def where(self, data: str | None = None) -> str:
        """One line naming the project home, the MLflow store and the data source (passwords hidden)."""
        source = data or self.data or str(self.sample_export)
        return (f"home {self.home} ({self.home_origin}) | store {redact_uri(self.resolved_tracking_uri())} | "
                f"data {redact_uri(source)}")

    def artifact_location(self) -> str | None:
        """The artifact location funnelcast creates its experiment with: ``artifact_root`` (a folder as a
        ``file://`` URI), else None for a tracking server (the server's root: its ``--artifacts-destination``,
        which every client reaches through it), else ``mlartifacts`` under home."""
        if self.artifact_root:
            root = self.artifact_root
            return root if "://" in root or root.startswith("mlflow-artifacts:") else \
                Path(root).expanduser().resolve().as_uri()
        if self.resolved_tracking_uri().startswith(("http://", "https://")):
            return None
        return (self.home / "mlartifacts").resolve().as_uri()

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.home / 'operations.db').resolve()}"


def _list_from_str(v: object) -> object:
    """A list setting as the environment gives it: a JSON list, or comma-separated values (blanks dropped)."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg} at character {exc.pos}); write it as "
                             "'[\"a\", \"b\"]' or as a,b") from None
    return [part.strip() for part in text.split(",") if part.strip()]


class SettingsProblem(FunnelcastError):
    """A setting (a ``FUNNELCAST_*`` variable or a ``.env`` line) that cannot be read: which one, and why."""


def _setting_problem(exc: Exception) -> SettingsProblem:
    if isinstance(exc, ValidationError):
        lines = []
        for e in exc.errors():
            name = "_".join(str(p) for p in e["loc"]).upper()
            got = "" if "KEY" in name else f" (got {e.get('input')!r})"  # never echo a key
            lines.append(f"FUNNELCAST_{name}: {e['msg']}{got}")
        return SettingsProblem("invalid settings:\n  " + "\n  ".join(lines))
    return SettingsProblem(f"invalid settings: {exc}")


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment and ``.env``; :class:`SettingsProblem` (no traceback at the CLI)
    names the variable that cannot be read."""
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise _setting_problem(exc) from None
