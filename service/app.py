"""The FastAPI application: ``create_app(engine)`` with the routes and the body-size limit."""

from __future__ import annotations

import json
import math
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service import docs, openai_api, playground
from service.engine import InferenceEngine
from service.responding import ANSWER_ERRORS, ReadyEngine, respond_to
from service.schemas import (
    LIMITS,
    ErrorDetail,
    Info,
    ModelSummary,
    RespondRequest,
    RespondResponse,
    SampledResponse,
    Status,
)

DESCRIPTION = """\
Given the turns of a conversation so far, a BN-CVAE (Zhu et al., ACL 2020) samples several
diverse next responses: each sample draws its own latent z from the prior network p(z|c).
Concurrent requests are decoded together in micro-batches.
"""


def create_app(engine: InferenceEngine) -> FastAPI:
    """The app around ``engine``, which it starts and stops with its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="BN-CVAE dialogue responses",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.docs serves them without a CDN
        redoc_url=None,
    )
    app.state.engine = engine
    app.include_router(docs.router)
    app.include_router(playground.router)
    app.include_router(openai_api.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=engine.config.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # FastAPI's own handler, except that a NaN/Infinity in the body (Python's json accepts
        # them) is echoed as a string instead of making the error response unserialisable.
        errors = _json_safe(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": errors}, status_code=422)

    unavailable = {"model": ErrorDetail, "description": "Model not loaded yet, or overloaded"}

    @app.get("/health", response_model=Status, responses={503: {"model": Status}})
    async def health():
        """Liveness: the process serves. 503 only if the model failed to load."""
        if engine.state == "failed":
            return JSONResponse({"status": "failed", "error": engine.error}, status_code=503)
        return Status(status="ok")

    @app.get("/ready", response_model=Status, responses={503: {"model": Status}})
    async def ready():
        """Readiness: 200 once the model is loaded, 503 (loading or failed) until then."""
        if engine.state != "ready":
            return JSONResponse(
                {"status": engine.state, "error": engine.error},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        return Status(status="ready")

    @app.get("/info", response_model=Info, responses={503: unavailable})
    async def info(engine: ReadyEngine):
        """The model's variant and dimensions, vocabulary size, device, checkpoint, engine."""
        return Info(**engine.describe(), limits=LIMITS)

    @app.post(
        "/respond",
        response_model=RespondResponse,
        responses=ANSWER_ERRORS,
    )
    async def respond(body: RespondRequest, engine: ReadyEngine):
        """Sample ``num_samples`` responses to the conversation."""
        result, report = await respond_to(
            engine,
            [(t.speaker, t.text) for t in body.conversation],
            body.responder,
            num_samples=body.num_samples,
            max_length=body.max_length,
            decoding=body.decoding,
            temperature=body.temperature,
            seed=body.seed,
            options=body.decoding_options(),
        )
        return RespondResponse(
            responses=[
                SampledResponse(
                    text=r.text,
                    log_prob=r.log_prob if math.isfinite(r.log_prob) else None,
                    num_tokens=len(r.tokens),
                )
                for r in result.responses
            ],
            responder=result.responder,
            input=report,
            model=ModelSummary(
                name=engine.name, variant=engine.model.config.variant, device=str(engine.device)
            ),
        )

    return app


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 before they are read into memory.

    A declared Content-Length over the limit is refused without reading anything; a body without
    one (chunked) is counted while the application receives it, and refused at the first chunk
    that crosses the limit (whatever the application was about to answer is discarded).
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reply(send, 400, "invalid Content-Length header")
                    return
                if declared > self.max_bytes:
                    await self._reply(send, 413, self._too_large())
                    return

        received = 0
        too_large = False
        started = False

        async def limited_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if too_large:
                return  # the app's answer to a truncated body; ours is the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await self._reply(send, 413, self._too_large())

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    @staticmethod
    async def _reply(send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
