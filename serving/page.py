"""The managers' page at ``/``: one static HTML file calling the API (no build step, nothing
fetched from the network; charts are inline SVG drawn by the page's own script)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).parent / "static"


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    path = (STATIC / name).resolve()
    if path.parent != STATIC.resolve() or not path.is_file():
        from serving.errors import RequestProblem

        raise RequestProblem(f"no static file {name!r}", [("name", "not found")], status_code=404)
    return FileResponse(path)
