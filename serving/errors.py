"""The one place where errors become HTTP answers a CRM admin can act on.

Domain errors raised in ``features`` and ``models`` are mapped here; request validation
errors are rewritten as ``path: reason`` items; nothing a client sends gets a 500.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.errors import (
    BadRow,
    ExportValidationError,
    FunnelcastError,
    InvalidRecord,
    ModelNotAvailable,
)

log = logging.getLogger("funnelcast.serving")


class RequestProblem(FunnelcastError):
    """A request that is well-formed JSON but cannot be scored; ``errors`` are (path, reason)."""

    def __init__(
        self,
        detail: str,
        errors: list[tuple[str, str]] | None = None,
        status_code: int = 422,
        headers: dict[str, str] | None = None,
    ):
        self.detail, self.errors, self.status_code, self.headers = detail, errors or [], status_code, headers
        super().__init__(detail)


_SERVER_PATH = re.compile(r"(?:file://)?(?<![\w.:/])/(?:[\w.@+-]+/)+[\w.@+-]*")


def client_safe(message: str) -> str:
    """A message without the server's absolute paths (the log line keeps them)."""
    return _SERVER_PATH.sub("<server path>", message)


def _path(loc: tuple) -> str:
    parts = [p for p in loc if p not in ("body", "query")]  # a query parameter is named as it is
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _reason(err: dict) -> str:
    kind, msg = err.get("type", ""), err.get("msg", "invalid")
    if kind == "missing":
        return "required field missing"
    if kind.startswith("datetime") or kind.startswith("date"):
        return f"not an ISO 8601 timestamp ({msg})"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"invalid JSON: {ctx.get('error', msg)}"
    return msg


def _body(detail: str, errors: list[tuple[str, str]], request: Request | None = None) -> dict:
    out: dict = {"detail": detail, "errors": [{"path": p, "reason": r} for p, r in errors]}
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    if request_id is not None:
        out["request_id"] = request_id
    return out


def _http_detail(request: Request, exc: StarletteHTTPException) -> str:
    if exc.status_code == 413:
        limit = request.app.state.settings.max_body_bytes
        return f"request body over the limit of {limit:,} bytes; send fewer records per request"
    return str(exc.detail)


def install(app: FastAPI) -> None:
    # async handlers: they only build a small JSON response, and Starlette runs a plain
    # ``def`` handler in its thread pool (a hand-off per error response, e.g. under a 429 burst)
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [(_path(tuple(e.get("loc", ()))), _reason(e)) for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return JSONResponse(_body("the request body is not valid JSON", errors, request), status_code=400)
        if any(e.get("type") == "model_attributes_type" and tuple(e.get("loc", ())) == ("body",) for e in exc.errors()):
            detail = "the request body must be a JSON object (Content-Type: application/json)"
            return JSONResponse(_body(detail, errors, request), status_code=422)
        detail = f"{len(errors)} invalid field(s): " + "; ".join(f"{p}: {r}" for p, r in errors[:5])
        return JSONResponse(_body(detail, errors, request), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own answers (404 route, 405 method, 413 body counted over the limit while read)
        return JSONResponse(_body(_http_detail(request, exc), [], request), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestProblem)
    async def _problem(request: Request, exc: RequestProblem) -> JSONResponse:
        return JSONResponse(_body(exc.detail, exc.errors, request), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ModelNotAvailable)
    async def _no_model(request: Request, exc: ModelNotAvailable) -> JSONResponse:
        headers = {"Retry-After": "60"} if exc.transient else {}  # a page or client does not wait for a train
        return JSONResponse(_body(client_safe(str(exc)), [], request), status_code=503, headers=headers)

    @app.exception_handler(InvalidRecord)
    async def _invalid(request: Request, exc: InvalidRecord) -> JSONResponse:
        return JSONResponse(_body(str(exc), [(exc.path, exc.reason)], request), status_code=422)

    @app.exception_handler(ExportValidationError)
    async def _export(request: Request, exc: ExportValidationError) -> JSONResponse:
        errors = [(f"{b.table}[{b.row}].{b.column}", b.reason) for b in exc.report.bad_rows]
        return JSONResponse(_body("invalid records", errors, request), status_code=422)

    @app.exception_handler(FunnelcastError)
    async def _domain(request: Request, exc: FunnelcastError) -> JSONResponse:
        return JSONResponse(_body(str(exc), [], request), status_code=422)


def bad_rows_as_problem(bad: list[tuple[str, BadRow]]) -> RequestProblem:
    """BadRows of records a client sent, each with the request path of its record."""
    errors = [(f"{path}.{b.column}", b.reason + (f" (value {b.value!r})" if b.value is not None else "")) for path, b in bad]
    detail = f"{len(errors)} invalid field(s): " + "; ".join(f"{p}: {r}" for p, r in errors[:5])
    return RequestProblem(detail, errors)
