"""The playground at ``/``: a static page (HTML, JS, CSS in service/static) that calls /respond.

Nothing on the page comes from another host, so it works on a machine without internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"
FILE_NAMES = ("playground.js", "playground.css")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    if name not in FILE_NAMES:  # a fixed list: no path from the request reaches the disk
        raise HTTPException(404, f"no such file: {name[:100]}")
    return FileResponse(STATIC / name)
