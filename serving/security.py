"""Who may call the API: the API key check (401), its rate limit (429), failed keys throttled
per client address (429), the admin scope (403), and the browser origins allowed by CORS.

The key check is an ``async def`` dependency: it only hashes a key and reads the app's state
(microseconds), and FastAPI would run a plain ``def`` one in its thread pool, one hand-off per
request, which under load cost more than the work itself.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import APIKeyHeader

from features.settings import Settings
from serving.deps import SettingsDep
from serving.errors import RequestProblem
from serving.keys import accepted_key_hashes, admin_key_hashes, hash_api_key
from serving.middleware import retry_after

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Your funnelcast API key")


def _known(digest: str, hashes: frozenset[str]) -> bool:
    return any(hmac.compare_digest(digest, h) for h in hashes)


def _client(request: Request) -> str:
    # the peer address (behind a proxy, run uvicorn with --proxy-headers so this is the client's)
    return request.client.host if request.client is not None else "unknown"


def _throttle_failures(request: Request) -> None:
    """429 for an address that sent too many bad keys in the last minute (checked before the key)."""
    wait = request.app.state.failed_keys.wait(_client(request))
    if wait > 0:
        raise RequestProblem("too many requests with a missing or invalid API key from this address; "
                             "retry after the Retry-After seconds", status_code=429,
                             headers={"Retry-After": retry_after(wait)})


def _refused(request: Request, detail: str) -> RequestProblem:
    """A 401 for a missing or bad key, counted against the client's address."""
    request.app.state.failed_keys.failed(_client(request))
    return RequestProblem(detail, status_code=401)


async def require_api_key(
    request: Request, settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]
) -> str:
    """Check the key (401) and its rate limit (429 with Retry-After); returns the key's digest."""
    accepted = accepted_key_hashes(settings)
    if not accepted:
        raise RequestProblem(
            "no API key is configured on this server: set FUNNELCAST_API_KEYS_FILE, FUNNELCAST_API_KEY_HASHES "
            "(or FUNNELCAST_API_KEYS) "
            "and restart",
            status_code=401,
        )
    _throttle_failures(request)
    if not key:
        raise _refused(request, "missing API key: send it in the X-API-Key header")
    digest = hash_api_key(key)
    if not _known(digest, accepted):
        raise _refused(request, "invalid API key")
    wait = request.app.state.rate_limiter.check(digest)
    if wait > 0:
        raise RequestProblem(
            f"rate limit of {settings.rate_limit_per_minute} requests per minute for this API key exceeded; "
            "retry after the Retry-After seconds",
            status_code=429,
            headers={"Retry-After": retry_after(wait)},
        )
    return digest


async def require_admin_key(
    request: Request, settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]
) -> str:
    """An admin key (model reload): 401 without a valid key, 403 for a key that may only score."""
    admin = admin_key_hashes(settings)
    _throttle_failures(request)
    if not key:
        raise _refused(request, "missing API key: send an admin key in the X-API-Key header")
    digest = hash_api_key(key)
    if _known(digest, admin):
        return digest
    if not admin:
        raise RequestProblem("no admin key is configured on this server: set FUNNELCAST_ADMIN_API_KEY_HASHES "
                             "(or FUNNELCAST_ADMIN_API_KEYS) and restart", status_code=403)
    if _known(digest, accepted_key_hashes(settings)):
        raise RequestProblem("this API key may score but not administer: use an admin key", status_code=403)
    raise _refused(request, "invalid API key")


ApiKeyDep = Depends(require_api_key)
AdminKeyDep = Depends(require_admin_key)
#: The caller's key digest (scopes idempotency keys to the caller).
CallerDep = Annotated[str, Depends(require_api_key)]


def allow_origins(app: FastAPI, settings: Settings) -> None:
    """CORS for the configured browser origins; closed (no middleware) when none are configured."""
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Content-Type", "Idempotency-Key", "X-Request-ID"],
        )
