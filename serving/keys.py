"""API keys: their stored form, the keys file (rotation without a restart) and the key sets
a request is checked against.

The settings (``FUNNELCAST_API_KEY_HASHES``, ``FUNNELCAST_API_KEYS``, the admin keys and
``FUNNELCAST_API_KEYS_FILE``) are read by :class:`features.settings.Settings`; what they
mean for a request is decided here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from features.settings import Settings

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


def _file_keys(settings: Settings, *scopes: str) -> set[str]:
    if settings.api_keys_file is None:
        return set()
    now = datetime.now(UTC)
    return {e.sha256 for e in KEYS_FILES.entries(settings.api_keys_file) if e.scope in scopes and e.live(now)}


def admin_key_hashes(settings: Settings) -> frozenset[str]:
    """Digests of the keys that may administer (reload models); they may also score."""
    return (frozenset(settings.admin_api_key_hashes) | {hash_api_key(k) for k in settings.admin_api_keys}
            | _file_keys(settings, "admin"))


def accepted_key_hashes(settings: Settings) -> frozenset[str]:
    """Digests of every key that may score: the configured ones, the keys file's live ones, the admin keys."""
    return (frozenset(settings.api_key_hashes) | {hash_api_key(k) for k in settings.api_keys}
            | _file_keys(settings, "score") | admin_key_hashes(settings))
