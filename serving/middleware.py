"""Request plumbing: request ids, structured JSON access logs, body size limit, Prometheus
metrics, server faults answered with their request id, per-key rate limiting, failed-key
throttling per client address, a concurrency guard for expensive analytics and idempotent
POSTs in a cache bounded in bytes.

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
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("funnelcast.access")
log = logging.getLogger("funnelcast.serving")
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


class BodyTooLarge(HTTPException):
    """The body read so far passed the limit (FastAPI re-raises an HTTPException met while it
    reads the body, so the app's handler answers it: 413 naming the limit)."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="request body over the limit")


def counted(receive: Receive, limit: int) -> Receive:
    """``receive`` that counts the body bytes as they arrive and raises :class:`BodyTooLarge`
    once over ``limit``: a chunked body (no Content-Length) is never read whole."""
    seen = 0

    async def receive_counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge
        return message

    return receive_counted


def server_fault(request_id: str) -> JSONResponse:
    """The answer to a fault of the server: no internals, the request id to quote (the log has the rest)."""
    return JSONResponse({"detail": f"internal server error; quote request id {request_id} to the operator",
                         "errors": [], "request_id": request_id}, status_code=500)


class RequestContextMiddleware:
    """Request id (``X-Request-ID`` kept if sane, else a new one) on every response, a JSON
    access log line per request (never the API key), the body size limit (by ``Content-Length``
    before anything is read, and by counting the bytes as they are read, chunked or not),
    metrics, and a 500 carrying the request id for an unexpected exception, logged with its
    traceback and the same id.

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
                seen["started"] = True
                seen["status"] = message["status"]
                response_headers = MutableHeaders(scope=message)
                seen["model_version"] = response_headers.get("x-model-version")
                response_headers["X-Request-ID"] = request_id
            await send(message)

        length = headers.get("content-length")
        too_large = JSONResponse(
            {"detail": f"request body over the limit of {self.max_body_bytes:,} bytes; send fewer records per request",
             "errors": [], "request_id": request_id},
            status_code=413,
        )
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await too_large(scope, receive, send_with_id)
            else:
                await self.app(scope, counted(receive, self.max_body_bytes), send_with_id)
        except BodyTooLarge:  # read outside FastAPI's body parsing (which answers it itself)
            if seen.get("started"):
                raise
            await too_large(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s %s failed (request id %s)", scope["method"], scope.get("path", ""), request_id,
                          extra={"request_id": request_id})
            if seen.get("started"):
                raise  # the response is under way: the server closes the connection
            await server_fault(request_id)(scope, receive, send_with_id)
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
class FailedKeyThrottle:
    """Failed API keys per client address: after ``per_minute`` bad keys in a minute, the
    address gets 429 until its bucket refills (a token bucket, as :class:`RateLimiter`).
    Only failures take tokens, so a client with a good key is never slowed by this; the
    buckets of at most ``max_clients`` addresses are kept (the oldest dropped first)."""

    per_minute: int
    max_clients: int = 100_000
    _buckets: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _tokens(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)

    def wait(self, client: str, now: float | None = None) -> float:
        """Seconds ``client`` must wait before its next key is checked (0: go ahead)."""
        if self.per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens = self._tokens(client, now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) * 60.0 / self.per_minute

    def failed(self, client: str, now: float | None = None) -> None:
        """Count a bad (or missing) key from ``client``."""
        if self.per_minute <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            self._buckets[client] = (max(0.0, self._tokens(client, now) - 1.0), now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)


class Busy(Exception):
    """Every slot of a :class:`ConcurrencyGuard` is taken."""


@dataclass
class ConcurrencyGuard:
    """At most ``limit`` concurrent runs of the expensive analytics (funnel, forecast,
    worklist) per process; one more is refused at once (503 with Retry-After), not queued,
    so they never take every worker thread from lead scoring."""

    limit: int
    _slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(max(1, self.limit))

    def acquire(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise Busy(f"{self.limit} expensive request(s) are already running in this process")

    def release(self) -> None:
        self._slots.release()


@dataclass
class IdempotencyCache:
    """First response per (API key, Idempotency-Key), kept ``ttl`` seconds, least recently used
    dropped first once the stored responses pass ``max_bytes`` (or ``size`` entries). A
    response larger than a quarter of the budget is not kept: its retry is scored again."""

    max_bytes: int = 64 * 1024 * 1024
    ttl: float = 24 * 3600.0
    size: int = 10_000
    _items: OrderedDict = field(default_factory=OrderedDict)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _cost(key: tuple[str, str], fingerprint: str, body: bytes) -> int:
        return len(body) + len(fingerprint) + sum(len(k) for k in key) + 200  # ~ the tuple and dict entry

    @property
    def stored_bytes(self) -> int:
        return self._bytes

    def _drop(self, key: tuple[str, str]) -> None:
        _, fingerprint, body, _ = self._items.pop(key)
        self._bytes -= self._cost(key, fingerprint, body)

    def get(self, key: tuple[str, str], now: float | None = None) -> tuple[str, bytes, int] | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            stored_at, fingerprint, body, status = item
            if now - stored_at > self.ttl:
                self._drop(key)
                return None
            self._items.move_to_end(key)
            return fingerprint, body, status

    def put(self, key: tuple[str, str], fingerprint: str, body: bytes, status: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        cost = self._cost(key, fingerprint, body)
        if cost > self.max_bytes // 4:
            return
        with self._lock:
            if key in self._items:
                self._drop(key)
            self._items[key] = (now, fingerprint, body, status)
            self._bytes += cost
            while self._bytes > self.max_bytes or len(self._items) > self.size:
                self._drop(next(iter(self._items)))
