"""Request plumbing: request ids, structured JSON access logs, body size limit, Prometheus
metrics, per-key rate limiting and idempotent POSTs.

All state is per process (with several uvicorn workers each keeps its own counters and
caches); Prometheus aggregates across processes when it scrapes each one.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("funnelcast.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Metrics:
    """The app's Prometheus metrics, in a registry of its own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "funnelcast_request_seconds",
            "Request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.errors = Counter("funnelcast_errors", "Responses with status >= 400", ["route", "status"], registry=self.registry)
        self.scores = Counter("funnelcast_scores", "Records scored", ["model", "version"], registry=self.registry)


class RequestContextMiddleware:
    """Request id (``X-Request-ID`` kept if sane, else a new one) on every response, a JSON
    access log line per request (never the API key), the body size limit, and metrics.

    Plain ASGI, not Starlette's ``BaseHTTPMiddleware``: that one runs the rest of the app in
    a task group and streams the response through a memory channel, about 1 ms a request;
    here the response passes straight through, with the header added to its start message.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id
        start = time.perf_counter()
        seen: dict[str, object] = {"status": 500, "model_version": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                response_headers = MutableHeaders(scope=message)
                seen["model_version"] = response_headers.get("x-model-version")
                response_headers["X-Request-ID"] = request_id
            await send(message)

        length = headers.get("content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                too_large = JSONResponse(
                    {"detail": f"request body over the limit of {self.max_body_bytes:,} bytes; send fewer records per request",
                     "errors": []},
                    status_code=413,
                )
                await too_large(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self._observe(scope, request_id, int(seen["status"]), seen["model_version"], time.perf_counter() - start)

    def _observe(self, scope: Scope, request_id: str, status: int, model_version: object, elapsed: float) -> None:
        method = scope["method"]
        template = getattr(scope.get("route"), "path", "unmatched")
        self.metrics.latency.labels(method, template, str(status)).observe(elapsed)
        if status >= 400:
            self.metrics.errors.labels(template, str(status)).inc()
        access_log.info(
            json.dumps(
                {
                    "request_id": request_id,
                    "method": method,
                    "path": template,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "model_version": model_version,
                }
            )
        )


@dataclass
class RateLimiter:
    """A token bucket per API key: ``per_minute`` requests, bursts up to the same number."""

    per_minute: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, key: str, now: float | None = None) -> float:
        """Take a token for ``key``; return 0 when allowed, else seconds until the next token."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


@dataclass
class IdempotencyCache:
    """First response per (API key, Idempotency-Key), kept ``ttl`` seconds, at most ``size`` entries."""

    size: int = 10_000
    ttl: float = 24 * 3600.0
    _items: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[str, str], now: float | None = None) -> tuple[str, bytes, int] | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            stored_at, fingerprint, body, status = item
            if now - stored_at > self.ttl:
                del self._items[key]
                return None
            return fingerprint, body, status

    def put(self, key: tuple[str, str], fingerprint: str, body: bytes, status: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._items[key] = (now, fingerprint, body, status)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
