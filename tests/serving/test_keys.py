"""API keys from a file: rotation, revocation and expiry without a restart; keys never logged."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from features.settings import Settings
from serving.app import create_app
from serving.keys import KeysFileError, hash_api_key, parse_keys_file


def _write(path, entries, bump: int = 0) -> None:
    path.write_text(json.dumps(entries), encoding="utf-8")
    st = path.stat()  # a rewrite within the same mtime tick must still be seen: move mtime on
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


@pytest.fixture
def keyed(tmp_path, empty_store):
    """An app reading its keys from a file, on an existing (empty) MLflow store: ``GET /v1/models``
    answers 200 to an accepted key (on a missing store it would be a 503, also past the key check)."""
    keys = tmp_path / "keys.json"
    _write(keys, [{"sha256": hash_api_key("old-key"), "scope": "score", "name": "crm"},
                  {"sha256": hash_api_key("admin-key"), "scope": "admin"}])
    app = create_app(Settings(home=tmp_path, api_keys_file=keys, tracking_uri=empty_store, reload_poll_seconds=0))
    with TestClient(app) as c:
        yield c, keys


def _status(c, key: str) -> int:
    r = c.get("/v1/models", headers={"X-API-Key": key})
    assert r.status_code != 200 or r.json() == {"models": []}, r.text
    return r.status_code


def test_rotation_grace_then_revocation_without_restart(keyed):
    c, keys = keyed
    assert _status(c, "old-key") == 200 and _status(c, "new-key") == 401
    # rotate: add the new key, the old one keeps working until it is removed (grace)
    _write(keys, [{"sha256": hash_api_key("old-key"), "scope": "score"},
                  {"sha256": hash_api_key("new-key"), "scope": "score"},
                  {"sha256": hash_api_key("admin-key"), "scope": "admin"}], bump=1)
    assert _status(c, "new-key") == 200 and _status(c, "old-key") == 200
    # revoke: the very next request with the old key is refused
    _write(keys, [{"sha256": hash_api_key("new-key"), "scope": "score"},
                  {"sha256": hash_api_key("admin-key"), "scope": "admin"}], bump=2)
    assert _status(c, "old-key") == 401 and _status(c, "new-key") == 200


def test_expired_key_is_refused_and_scopes_hold(keyed):
    c, keys = keyed
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    _write(keys, [{"sha256": hash_api_key("old-key"), "scope": "score", "expires": past},
                  {"sha256": hash_api_key("new-key"), "scope": "score", "expires": future},
                  {"sha256": hash_api_key("admin-key"), "scope": "admin"}], bump=1)
    assert _status(c, "old-key") == 401 and _status(c, "new-key") == 200
    assert _status(c, "admin-key") == 200  # an admin key may also score
    r = c.post("/v1/admin/reload", headers={"X-API-Key": "new-key"})
    assert r.status_code == 403 and "may score but not administer" in r.json()["detail"]


def test_a_broken_file_keeps_the_last_good_keys_and_logs_no_key(keyed, caplog):
    c, keys = keyed
    assert _status(c, "old-key") == 200
    with caplog.at_level(logging.ERROR, logger="funnelcast.keys"):
        keys.write_text('[{"sha256": "not-a-digest", "scope": "score"}]', encoding="utf-8")
        os.utime(keys, ns=(0, keys.stat().st_mtime_ns + 5_000_000_000))
        assert _status(c, "old-key") == 200
    assert "entry [0].sha256" in caplog.text
    assert "old-key" not in caplog.text and hash_api_key("old-key") not in caplog.text
    keys.unlink()  # no file, no keys from it
    assert _status(c, "old-key") == 401


@pytest.mark.parametrize("text, field", [
    ("{}", "JSON list"),
    ('[{"sha256": "' + "a" * 64 + '", "scope": "owner"}]', "entry [0].scope"),
    ('[{"sha256": "' + "a" * 64 + '", "expires": "soon"}]', "entry [0].expires"),
    ("[1]", "entry [0] is not an object"),
    ("[", "not JSON"),
])
def test_keys_file_errors_name_the_entry_and_field(text, field):
    with pytest.raises(KeysFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_keys_file(text)


def test_naive_expiry_is_utc():
    (e,) = parse_keys_file('[{"sha256": "' + "b" * 64 + '", "expires": "2030-01-01T00:00:00"}]')
    assert e.expires == datetime(2030, 1, 1, tzinfo=UTC) and e.scope == "score"
