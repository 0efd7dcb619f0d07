"""Typed dependencies: settings, the loaded models, the API key check.

They are ``async def`` because they only read the app's state and hash a key (microseconds):
FastAPI runs a plain ``def`` dependency in its thread pool, one hand-off per dependency per
request, which under load cost more than the work itself. Scoring stays a ``def`` handler.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from features.errors import ModelNotAvailable
from features.settings import Settings, hash_api_key
from models.registry import LoadedModel
from models.tasks import Task
from serving.errors import RequestProblem
from serving.middleware import retry_after


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Your funnelcast API key")


async def require_api_key(
    request: Request, settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]
) -> str:
    """Check the key (401) and its rate limit (429 with Retry-After); returns the key's digest."""
    accepted = settings.accepted_key_hashes()
    if not accepted:
        raise RequestProblem(
            "no API key is configured on this server: set FUNNELCAST_API_KEYS_FILE, FUNNELCAST_API_KEY_HASHES "
            "(or FUNNELCAST_API_KEYS) "
            "and restart",
            status_code=401,
        )
    if not key:
        raise RequestProblem("missing API key: send it in the X-API-Key header", status_code=401)
    digest = hash_api_key(key)
    if not any(hmac.compare_digest(digest, h) for h in accepted):
        raise RequestProblem("invalid API key", status_code=401)
    wait = request.app.state.rate_limiter.check(digest)
    if wait > 0:
        raise RequestProblem(
            f"rate limit of {settings.rate_limit_per_minute} requests per minute for this API key exceeded; "
            "retry after the Retry-After seconds",
            status_code=429,
            headers={"Retry-After": retry_after(wait)},
        )
    return digest


ApiKeyDep = Depends(require_api_key)


async def require_admin_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)]) -> str:
    """An admin key (model reload): 401 without a valid key, 403 for a key that may only score."""
    admin = settings.admin_key_hashes()
    if not key:
        raise RequestProblem("missing API key: send an admin key in the X-API-Key header", status_code=401)
    digest = hash_api_key(key)
    if any(hmac.compare_digest(digest, h) for h in admin):
        return digest
    if not admin:
        raise RequestProblem("no admin key is configured on this server: set FUNNELCAST_ADMIN_API_KEY_HASHES "
                             "(or FUNNELCAST_ADMIN_API_KEYS) and restart", status_code=403)
    if any(hmac.compare_digest(digest, h) for h in settings.accepted_key_hashes()):
        raise RequestProblem("this API key may score but not administer: use an admin key", status_code=403)
    raise RequestProblem("invalid API key", status_code=401)


AdminKeyDep = Depends(require_admin_key)
#: The caller's key digest (scopes idempotency keys to the caller).
CallerDep = Annotated[str, Depends(require_api_key)]


async def get_lead_model(request: Request) -> LoadedModel:
    models: dict[str, LoadedModel] = request.app.state.models
    loaded = models.get(Task.LEAD_QUALITY.value)
    if loaded is None:
        reason = request.app.state.load_errors.get(Task.LEAD_QUALITY.value, "not loaded")
        raise ModelNotAvailable(Task.LEAD_QUALITY.value, reason)
    return loaded


LeadModelDep = Annotated[LoadedModel, Depends(get_lead_model)]
