"""One settings object for the whole service, read at the edges (CLI and API).

Library functions never read settings themselves: they take what they need as arguments.
Values come from ``FUNNELCAST_*`` environment variables or a ``.env`` file; the MLflow
tracking URI also honours the standard ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def hash_api_key(key: str) -> str:
    """The stored form of an API key: its SHA-256 hex digest."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_log = logging.getLogger("funnelcast.keys")


@dataclass(frozen=True)
class KeyEntry:
    """One key of the keys file: its SHA-256 digest, its scope and an optional expiry (UTC)."""

    sha256: str
    scope: str  # "score" or "admin"
    expires: datetime | None = None
    name: str = ""

    def live(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires


class KeysFileError(ValueError):
    pass


def parse_keys_file(text: str, where: str = "keys file") -> tuple[KeyEntry, ...]:
    """A JSON list of ``{"sha256": hex, "scope": "score"|"admin", "expires": ISO time, "name": text}``;
    raises :class:`KeysFileError` naming the entry and field of anything wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeysFileError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, list):
        raise KeysFileError(f"{where}: expected a JSON list of key entries")
    out = []
    for i, e in enumerate(raw):
        if not isinstance(e, dict):
            raise KeysFileError(f"{where}: entry [{i}] is not an object")
        digest = str(e.get("sha256", "")).strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise KeysFileError(f"{where}: entry [{i}].sha256 is not a SHA-256 hex digest (64 hex characters)")
        scope = str(e.get("scope", "score")).strip().lower()
        if scope not in ("score", "admin"):
            raise KeysFileError(f"{where}: entry [{i}].scope must be 'score' or 'admin', not {scope!r}")
        expires = None
        if e.get("expires") not in (None, ""):
            try:
                expires = datetime.fromisoformat(str(e["expires"]).replace("Z", "+00:00"))
            except ValueError:
                raise KeysFileError(f"{where}: entry [{i}].expires is not an ISO 8601 time") from None
            expires = expires.replace(tzinfo=UTC) if expires.tzinfo is None else expires.astimezone(UTC)
        out.append(KeyEntry(digest, scope, expires, str(e.get("name", ""))))
    return tuple(out)


class _KeysFileCache:
    """The keys file's entries, re-read when its mtime, size or inode changes (no restart to rotate).

    A file that becomes unreadable or invalid keeps the last good entries and logs why (never a key);
    a file that is removed means no keys from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[Path, tuple[tuple[int, int, int], tuple[KeyEntry, ...]]] = {}

    def entries(self, path: Path) -> tuple[KeyEntry, ...]:
        try:
            st = path.stat()
        except FileNotFoundError:
            self._seen.pop(path, None)
            return ()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        seen = self._seen.get(path)
        if seen is not None and seen[0] == stamp:
            return seen[1]
        with self._lock:
            try:
                entries = parse_keys_file(path.read_text(encoding="utf-8"), str(path))
            except (OSError, UnicodeDecodeError, KeysFileError) as exc:
                _log.error("API keys file not (re)loaded, keeping the previous keys: %s", exc)
                return seen[1] if seen is not None else ()
            self._seen[path] = (stamp, entries)
            _log.info("API keys file %s loaded: %d entries", path, len(entries))
            return entries


KEYS_FILES = _KeysFileCache()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELCAST_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".funnelcast"), description="Project data folder")
    data: str | None = Field(None, description="Default CRM export: folder or SQLAlchemy URL")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking/registry URI; default: MLFLOW_TRACKING_URI or SQLite under home"
    )
    experiment: str = "funnelcast"
    open_stages: tuple[str, ...] = ("qualification", "proposal", "contract")
    horizon_days: int = Field(91, gt=0)
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

    def _file_keys(self, *scopes: str) -> set[str]:
        if self.api_keys_file is None:
            return set()
        now = datetime.now(UTC)
        return {e.sha256 for e in KEYS_FILES.entries(self.api_keys_file) if e.scope in scopes and e.live(now)}

    def accepted_key_hashes(self) -> frozenset[str]:
        return (frozenset(self.api_key_hashes) | {hash_api_key(k) for k in self.api_keys}
                | self._file_keys("score") | self.admin_key_hashes())

    def admin_key_hashes(self) -> frozenset[str]:
        return (frozenset(self.admin_api_key_hashes) | {hash_api_key(k) for k in self.admin_api_keys}
                | self._file_keys("admin"))

    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.home / 'operations.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
