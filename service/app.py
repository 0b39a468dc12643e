"""The FastAPI application: ``create_app(engine)`` assembles the routers (service.routes,
service.openai_api, service.playground, service.docs), the body limits (size and read time) and
the error path; the routes reach the engine through their dependencies (service.dependencies)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import docs, metrics, openai_api, playground, routes
from service.engine import InferenceEngine
from service.overload import (
    CancelOnDisconnectMiddleware,
    EarlyRefusalMiddleware,
    RefusalPacingMiddleware,
)
from service.schemas import ChatCompletionRequest, RespondRequest
from service.security import HostCheckMiddleware, SecurityHeadersMiddleware

log = logging.getLogger("service.app")

DESCRIPTION = """\
Given the turns of a conversation so far, a BN-CVAE (Zhu et al., ACL 2020) samples several
diverse next responses: each sample draws its own latent z from the prior network p(z|c).
Concurrent requests are decoded together in micro-batches.
"""

# An error quotes the input it refuses (as FastAPI's do), but only so much of it: strings cut to
# QUOTE_CHARS, lists and objects to QUOTE_ITEMS items and QUOTE_DEPTH levels, at most
# MAX_ERRORS errors (fewer than QUOTE_ITEMS: the list of errors is quoted too); a request
# cannot make the server write a large body back.
QUOTE_CHARS = 200
QUOTE_ITEMS = 20
QUOTE_DEPTH = 4
MAX_ERRORS = 10
# Request bodies whose integer bounds the OpenAPI document publishes (see ServiceApp.openapi).
REQUEST_MODELS = (RespondRequest, ChatCompletionRequest)


def create_app(engine: InferenceEngine) -> FastAPI:
    """The app around ``engine`` (in ``app.state``), which it starts and stops with its lifespan."""
    app = ServiceApp(
        title="BN-CVAE dialogue responses",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.docs serves them without a CDN
        redoc_url=None,
        exception_handlers={
            RequestValidationError: validation_error,
            StarletteHTTPException: http_error,
        },
    )
    app.state.engine = engine
    app.state.metrics = metrics.ServiceMetrics(engine)
    # In this order: the OpenAPI document lists the paths in the order they were added.
    for router in (
        docs.router,
        playground.router,
        openai_api.router,
        routes.router,
        metrics.router,
    ):
        app.include_router(router)
    # The last added runs first: metrics count every request, the Host is checked before
    # anything else, then refusals are paced, the body's limits checked, and an overloaded
    # engine refuses without parsing the body; every answer, a refusal too, gets the security
    # headers.
    app.add_middleware(CancelOnDisconnectMiddleware)
    app.add_middleware(EarlyRefusalMiddleware, engine=engine)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=engine.config.max_body_bytes,
        timeout_s=engine.config.body_timeout_s,
    )
    app.add_middleware(RefusalPacingMiddleware)
    app.add_middleware(HostCheckMiddleware, patterns=engine.config.host_patterns())
    app.add_middleware(SecurityHeadersMiddleware)
    # Outermost (added last): it counts the requests the body limits refuse too.
    app.add_middleware(
        metrics.MetricsMiddleware, metrics=app.state.metrics, routes=app.router.routes
    )
    return app


@asynccontextmanager
async def lifespan(app: FastAPI):
    engine: InferenceEngine = app.state.engine
    await engine.start()
    try:
        yield
    finally:
        await engine.stop()


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    path = request.url.path
    if isinstance(exc.body, bytes) and not _is_utf8(exc.body):
        # A body FastAPI did not parse as JSON (its content type is not JSON), and that is not
        # text either; as an undecodable JSON body, it gets 400.
        return error_response(400, "request body is not UTF-8 text", path=path)
    errors = exc.errors()
    if openai_api.is_api_path(path):
        return openai_api.validation_error([quotable(e) for e in errors])
    shown = list(errors[:MAX_ERRORS])
    if len(errors) > MAX_ERRORS:
        more = f"{len(errors) - MAX_ERRORS} more errors not shown"
        shown.append({"type": "too_many_errors", "loc": ["body"], "msg": more, "input": None})
    return error_response(422, shown)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    path = request.url.path
    if openai_api.is_api_path(path):
        detail = exc.detail
        if exc.status_code == 404 and not isinstance(exc, openai_api.APIError):
            detail = f"Invalid URL ({request.method} {path[:QUOTE_CHARS]})"  # OpenAI's wording
        return openai_api.error_response(
            exc.status_code,
            quotable(str(detail)),
            exc.headers,
            param=getattr(exc, "param", None),
            code=getattr(exc, "code", None),
        )
    return error_response(exc.status_code, exc.detail, exc.headers)


def error_response(
    status: int, detail, headers: Mapping[str, str] | None = None, path: str = ""
) -> JSONResponse:
    """Every error the service answers: ``{"detail": detail}``, made quotable; on the
    OpenAI-compatible API (``path`` under /v1), OpenAI's ``{"error": {...}}``."""
    if openai_api.is_api_path(path):
        return openai_api.error_response(status, str(quotable(detail)), headers)
    return JSONResponse({"detail": quotable(detail)}, status_code=status, headers=headers)


def quotable(value, depth: int = 0):
    """``value`` as an error may quote it: JSON-serialisable, encodable as UTF-8, and short.

    Lone UTF-16 surrogates (json.loads makes them from ``"\\ud800"``; UTF-8 cannot encode them)
    and undecodable bytes are written as backslash escapes; NaN and infinities (Python's json
    reads them) become strings; anything else that is not JSON (an exception in a pydantic
    error's context) becomes its str().
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(text) > QUOTE_CHARS:
            return f"{text[:QUOTE_CHARS]}... ({len(text)} characters)"
        return text
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple, dict)) and depth >= QUOTE_DEPTH:
        return f"... ({len(value)} items)"
    if isinstance(value, (list, tuple)):
        items = [quotable(v, depth + 1) for v in value[:QUOTE_ITEMS]]
        if len(value) > QUOTE_ITEMS:
            items.append(f"... ({len(value)} items)")
        return items
    if isinstance(value, dict):
        shown = list(value.items())[:QUOTE_ITEMS]
        quoted = {quotable(str(k)): quotable(v, depth + 1) for k, v in shown}
        if len(value) > QUOTE_ITEMS:
            quoted["..."] = f"{len(value)} items"
        return quoted
    return quotable(str(value))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


class ServiceApp(FastAPI):
    """The service's FastAPI app: its OpenAPI document publishes integer bounds as the
    integers they are."""

    def openapi(self) -> dict[str, Any]:
        """FastAPI's OpenAPI model types the bounds as float: it would publish 32 as 32.0 and
        MAX_SEED (2**63 - 1) as 9.223372036854776e18, which is 2**63, a seed the API refuses.
        The bounds of pydantic's own schema of the request models are exact; they are copied
        over."""
        document = super().openapi()  # FastAPI caches it; copying the bounds again is harmless
        _, exact = models_json_schema(
            [(model, "validation") for model in REQUEST_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        for path, operations in document.get("paths", {}).items():
            if openai_api.is_api_path(path):  # it answers 400 in OpenAI's shape, never 422
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
        published = document.get("components", {}).get("schemas", {})
        for name, schema in exact.get("$defs", {}).items():
            if name in published:
                _copy_integer_bounds(schema, published[name])
        return document


def _copy_integer_bounds(exact, published) -> None:
    if isinstance(exact, dict) and isinstance(published, dict):
        for key, value in exact.items():
            if key in _BOUNDS and isinstance(value, int):
                published[key] = value
            elif key in published:
                _copy_integer_bounds(value, published[key])
    elif isinstance(exact, list) and isinstance(published, list):
        for e, p in zip(exact, published, strict=False):
            _copy_integer_bounds(e, p)


class RateLimitedLog:
    """A logger's warnings, at most ``per_second`` a second; the rest are counted, and the count
    is logged with the next one let through. A flood of slow clients must not also flood the
    log, nor spend the event loop's time writing it."""

    def __init__(self, logger: logging.Logger, per_second: int = 10):
        self.logger = logger
        self.per_second = per_second
        self._second = 0
        self._logged = 0
        self._suppressed = 0

    def warning(self, message: str, *args) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._logged = second, 0
        if self._logged >= self.per_second:
            self._suppressed += 1
            return
        self._logged += 1
        if self._suppressed:
            message += f" (and {self._suppressed} more like it, not logged)"
            self._suppressed = 0
        self.logger.warning(message, *args)


slow_body_log = RateLimitedLog(log)

# A slow client's time limit is drawn up to this share later than configured: a thousand
# connections opened at once would otherwise all time out in one turn of the event loop, and
# answering and closing them all kept /health waiting 1.2-1.4 s (benchmarks/stress.py: slow,
# exhaust). Spread over a tenth of a 20 s limit, they take their turns among the probes.
TIMEOUT_SPREAD = 0.1


def spread(seconds: float) -> float:
    """``seconds``, made up to TIMEOUT_SPREAD later at random."""
    return seconds * (1 + TIMEOUT_SPREAD * random.random())


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` (413) or slower than ``timeout_s`` (408).

    A declared Content-Length over the limit is refused without reading anything; a body without
    one (chunked) is counted as it arrives, and refused at the first chunk that crosses the
    limit. A body must be received in full within ``timeout_s`` of the request's start (its
    headers; up to TIMEOUT_SPREAD more, at random): a client that stalls part-way would
    otherwise hold its connection and what it has sent for ever. A refused body's connection is
    closed, as the rest of it is not read.

    The body is read here, whole, before the application sees the request, which then receives
    it as one message: a stalled body costs a task waiting here, not a request that the inner
    middleware and the route have started. A thousand connections opened at once, each
    stalled in its body, kept /health waiting 1.1-1.7 s while each went through them
    (benchmarks/stress.py: exhaust).
    """

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        has_body = False
        for name, value in scope["headers"]:
            if name == b"transfer-encoding":
                has_body = True
            if name == b"content-length":
                has_body = True
                try:
                    declared = int(value)
                except ValueError:
                    await self._reply(scope, receive, send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await self._reply(scope, receive, send, 413, self._too_large())
                    return
        if not has_body:  # HTTP/1.1: no Content-Length, no Transfer-Encoding, no body (/health)
            await self.app(scope, receive, send)
            return

        try:
            read = await asyncio.wait_for(self._read_body(receive), spread(self.timeout_s))
        except asyncio.TimeoutError:
            detail = f"request body not received within {self.timeout_s:g} s"
            host, port = scope.get("client") or ("?", 0)
            slow_body_log.warning("closed the connection from %s:%s: %s", host, port, detail)
            await self._reply(scope, receive, send, 408, detail)
            return
        if read is None:
            await self._reply(scope, receive, send, 413, self._too_large())
            return
        last, body = read
        # What the client sent, as it would have reached the app: the body in one message (or
        # what arrived of it, then the disconnect); after that, the connection's own messages.
        replay = [{"type": "http.request", "body": body, "more_body": False}]
        if last["type"] != "http.request":
            replay = [{**replay[0], "more_body": True}, last]

        async def replayed_receive():
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed_receive, send)

    async def _read_body(self, receive) -> tuple[dict, bytes] | None:
        """The body's chunks until it ends: the last message (not an http.request one if the
        client left) and the bytes received; None once they are over ``max_bytes``."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message, b"".join(chunks)  # http.disconnect: the client left
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return message, b"".join(chunks)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    @staticmethod
    async def _reply(scope, receive, send, status: int, detail: str) -> None:
        # Connection: close: the rest of the body is not read
        response = error_response(status, detail, {"connection": "close"}, scope.get("path", ""))
        await response(scope, receive, send)
