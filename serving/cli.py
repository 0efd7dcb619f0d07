"""``funnelcast serve``: the scoring API under uvicorn.

Serving contributes this command to the ``funnelcast`` CLI through the ``funnelcast.commands``
entry point (pyproject.toml), so the CLI in ``training`` finds it without importing serving:
training and serving never import each other.
"""

from __future__ import annotations

import argparse

from features.settings import Settings

__all__ = ["register", "serve"]


def serve(settings: Settings, host: str | None = None, port: int | None = None, workers: int = 1) -> None:
    """Serve the API on ``host:port`` (the settings' by default) with ``workers`` processes."""
    import uvicorn

    # uvicorn's worker processes import the app factory by name
    uvicorn.run("serving.app:create_app", factory=True, host=host or settings.host, port=port or settings.port,
                workers=workers)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_tracking_store(hint="train first: `funnelcast train` (or `funnelcast run`, which also serves)")
    host, port = args.host or settings.host, args.port or settings.port
    print(f"serving on http://{host}:{port}: the managers' page at /, OpenAPI docs at /docs")
    serve(settings, args.host, args.port, args.workers)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``funnelcast`` subcommands."""
    v = sub.add_parser("serve", help="serve the scoring API and the managers' page",
                       description="Serve the scoring API, its OpenAPI docs (/docs) and the managers' page (/) with "
                       "uvicorn, with the @champion of every task.")
    v.add_argument("--host", help="bind address (default FUNNELCAST_HOST or 127.0.0.1)")
    v.add_argument("--port", type=int, help="port (default FUNNELCAST_PORT or 8000)")
    v.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    v.set_defaults(func=_cmd_serve)
