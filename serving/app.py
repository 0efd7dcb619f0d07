"""The FastAPI app factory: ``uvicorn serving.app:create_app --factory``.

Nothing is built at import time. The lifespan loads the champion models from the MLflow
registry; when none is registered yet the app still starts, ``/readyz`` says why it is not
ready and scoring answers 503 with the reason. With ``FUNNELCAST_REFRESH_EVERY`` the lifespan
also refreshes the scored snapshot at start and then on that schedule; without it, it starts the
first refresh in the background when the configured source has no current snapshot
(``FUNNELCAST_REFRESH_AT_START``, on by default).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pathlib import Path

import swagger_ui
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import HTMLResponse, Response

from features.errors import FunnelcastError, ModelNotAvailable
from features.settings import Settings, StoreNotFound, get_settings
from models.registry import LoadedModel, load_scorer
from serving import errors, page, routes_accounts, routes_admin, routes_deals, routes_leads, routes_live, routes_ops
from serving.deps import LOAD_FAILED, SERVED_TASKS, load_failure, registry_client, store_missing_reason
from serving.middleware import (
    ConcurrencyGuard,
    FailedKeyThrottle,
    IdempotencyCache,
    Metrics,
    RateLimiter,
    RequestContextMiddleware,
)
from serving.refresh import Refresher, refresh_at_start, refresh_every
from serving.store import FilePresence
from serving.security import allow_origins

log = logging.getLogger("funnelcast.serving")



_SQL_NOISE = re.compile(r"\s*(\[SQL: .*?\]|\[parameters: .*?\]|\(Background on this error at: [^)]*\))", re.S)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:file://)?(?:/[\w.@+-]+)+/([\w.@+-]+)")


def public_reason(exc: BaseException | str) -> str:
    """What a client may read of a failure: no SQL text, no bind parameters, no absolute server paths
    (a path is cut to its last part); the whole error goes to the server log."""
    text = _ABSOLUTE_PATH.sub(r"<server>/\1", _SQL_NOISE.sub("", str(exc)))
    return text.strip() or type(exc).__name__


def load_models(settings: Settings) -> tuple[dict[str, LoadedModel], dict[str, str]]:
    """Load each served task's model at the configured alias; collect why any could not load.

    A missing SQLite tracking store is refused, not created empty (the server log names the path
    and how the home was found; clients read the reason without server paths)."""
    models, problems = {}, {}
    try:
        client = registry_client(settings)
    except StoreNotFound as exc:
        log.error("%s", exc)
        reason = store_missing_reason(settings)
        return {}, {t.value: reason for t in SERVED_TASKS}
    except Exception as exc:  # a broken store must not keep the API down
        log.exception("cannot open the MLflow store")
        reason = f"{LOAD_FAILED}: cannot open the MLflow store ({public_reason(exc)}; the server log has the details)"
        return {}, {t.value: reason for t in SERVED_TASKS}
    for task in SERVED_TASKS:
        try:
            models[task.value] = load_scorer(client, task.value, settings.model_alias)
        except ModelNotAvailable as exc:  # not registered (no version at the alias); the 503 names the model
            problems[task.value] = public_reason(exc.reason)
        except FunnelcastError as exc:
            problems[task.value] = public_reason(exc)
        except Exception as exc:  # noqa: BLE001 - reported through /readyz, not raised
            log.exception("loading %s failed", task.value)
            problems[task.value] = public_reason(load_failure(exc))
    return models, problems


#: Swagger UI's files, from the installed swagger-ui-py package (no CDN: /docs works offline).
SWAGGER_UI_FILES = Path(swagger_ui.__file__).parent / "static"


def _local_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI served from the installed package (FastAPI's "self-hosting
    JavaScript and CSS for docs"), so it renders where there is no internet."""
    app.mount("/docs-static", StaticFiles(directory=SWAGGER_UI_FILES), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui_html() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API docs",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon-32x32.png")


#: OpenAPI links: what one answer gives the next request (clients and the stateful fuzzing follow them).
#: (source path, method, link name, target path, method, target parameter -> runtime expression)
LINKS = (
    ("/v1/scores", "get", "history", "/v1/scores/{kind}/{entity_id}/history", "get",
     {"kind": "$response.body#/scores/0/kind", "entity_id": "$response.body#/scores/0/id"}),
    ("/v1/scores", "get", "next_page", "/v1/scores", "get", {"page_token": "$response.body#/next_page_token"}),
    ("/v1/models", "get", "performance", "/v1/models/{task}/performance", "get",
     {"task": "$response.body#/models/0/name"}),
)


def _with_links(app: FastAPI) -> None:
    """Add :data:`LINKS` to the 200 responses of the generated OpenAPI document."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            for path, method, name, target, target_method, params in LINKS:
                pointer = "#/paths/" + target.replace("~", "~0").replace("/", "~1") + f"/{target_method}"
                response = doc["paths"][path][method]["responses"]["200"]
                response.setdefault("links", {})[name] = {"operationRef": pointer, "parameters": params}
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _json_access_log() -> None:
    """Access lines are JSON already: print them as they are, once."""
    access = logging.getLogger("funnelcast.access")
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


def freeze_heap() -> None:
    """Move every object alive now (the loaded models, the imported libraries: a few million) out of
    the garbage collector's reach (:func:`gc.freeze`): a full collection then scans only what requests
    allocate, instead of pausing every request in flight for tens of milliseconds (the p99 of the load
    test). Called once the models are loaded, and again after a reload swapped new ones in."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, preloaded: dict[str, LoadedModel] | None = None) -> FastAPI:
    """The app. ``preloaded`` models (e.g. in tests or when embedding) replace loading from the registry."""
    settings = settings or get_settings()
    _json_access_log()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if preloaded is None:
            app.state.models, app.state.load_errors = load_models(settings)
        else:
            app.state.models, app.state.load_errors = dict(preloaded), {}
        app.state.mlflow_presence.status()  # seen at start: deleted later is "gone" in /readyz
        app.state.refresher.store.ops.status()
        freeze_heap()
        for name, m in app.state.models.items():
            log.info("serving %s version %s (@%s)", name, m.version, m.alias)
        poller = routes_ops.start_alias_polling(app.state, settings.reload_poll_seconds) if preloaded is None else None
        schedule = asyncio.create_task(refresh_every(app.state, settings.refresh_every)) if settings.refresh_every else None
        # the first scores before the first manager asks (the thread, or None: not needed or not wanted)
        app.state.first_refresh = refresh_at_start(app.state) if schedule is None and settings.refresh_at_start else None
        yield
        for task in (poller, schedule):
            if task is not None:
                task.cancel()
        app.state.refresher.stop()  # a refresh still running (the first one, say) does not hold the shutdown up
        if (ops := getattr(app.state, "ops_store", None)) is not None and not ops.flush_scores():
            log.error("shutting down with served scores not yet written to the operations database")

    app = FastAPI(
        title="funnelcast",
        version="0.1.0",
        summary="Lead scoring with reasons, learned from your CRM's history",
        description=(
            "Authenticate with the `X-API-Key` header. Send leads as your CRM holds them "
            "(data contract v1); every error names the field path and the reason."
        ),
        lifespan=lifespan,
        docs_url=None,  # served from local files below, not a CDN
        redoc_url=None,  # ReDoc loads from a CDN only
    )
    _local_docs(app)
    _with_links(app)
    app.state.settings = settings
    app.state.models, app.state.load_errors = {}, {t.value: "starting" for t in SERVED_TASKS}
    app.state.model_loader = lambda: load_models(settings)  # POST /v1/admin/reload swaps in what this loads
    app.state.mlflow_presence = FilePresence(settings.local_tracking_db())  # /readyz: a stat of mlflow.db per call
    app.state.refresher = Refresher(app.state)  # scored snapshots: the worklist, funnel and forecast answer from them
    app.state.after_models_swapped = app.state.refresher.run_in_background  # a reload refreshes the snapshot
    app.state.metrics = Metrics()
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.idempotency = IdempotencyCache(max_bytes=settings.idempotency_cache_bytes)
    app.state.failed_keys = FailedKeyThrottle(settings.failed_keys_per_minute)
    app.state.analytics = ConcurrencyGuard(settings.analytics_concurrency)
    errors.install(app)
    allow_origins(app, settings)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics, max_body_bytes=settings.max_body_bytes)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus metrics: request latency, errors, scores served per model version."""
        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(routes_admin.router)
    app.include_router(routes_leads.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_accounts.router)
    app.include_router(routes_deals.router)
    app.include_router(routes_live.router)
    app.include_router(page.router)
    return app
