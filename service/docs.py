"""``/docs`` and ``/redoc`` with their scripts served by the app, so they work offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN: a blank page without internet. The
assets come from the ``fastapi-offline`` package (Swagger UI 5, which reads the OpenAPI 3.1
that FastAPI writes); only its files are used, not its app factory.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    app, root = request.app, request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon.png",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        # No badge from the online validator (validator.swagger.io).
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/docs/oauth2-redirect")
async def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    app, root = request.app, request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}/docs/assets/redoc.standalone.js",
        redoc_favicon_url=f"{root}/docs/assets/favicon.png",
        with_google_fonts=False,
    )
    # ReDoc's sidebar shows Redocly's logo from cdn.redoc.ly; images from elsewhere than this
    # server are refused by the page itself, and ReDoc drops an image that fails to load.
    body = bytes(page.body).decode().replace("<head>", f"<head>\n    {REDOC_IMAGES_POLICY}", 1)
    return HTMLResponse(body)


REDOC_IMAGES_POLICY = (
    """<meta http-equiv="Content-Security-Policy" content="img-src 'self' data:">"""
)


@router.get("/docs/assets/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSET_NAMES:  # a fixed list: no path from the request reaches the disk
        raise HTTPException(404, f"no such asset: {name[:100]}")
    return FileResponse(ASSETS / name)
