"""What the app does under overload and for clients that leave, before and around the routes.

:class:`EarlyRefusalMiddleware`: while the engine would refuse any request (its queue is full,
or even the smallest request would not fit in its decoding budget), a request to a route that
answers a conversation gets 503 + Retry-After without its body being parsed or validated (it
is read, within the body limits, and dropped: bytes left unread on a kept-alive connection
would be taken for the next request's): a flood of refused requests then costs the event loop a
fraction of what answering them through the routes did, time it shares (the GIL, a core) with the decoding thread.

:class:`RefusalPacingMiddleware`: a client that asks again on the same connection before the
Retry-After of its last refusal has its next refusal held ``MAX_HOLD_S`` before it is sent, and
refusals past ``REFUSALS_PER_S`` a second are held for their Retry-After: a client that ignores
Retry-After is slowed to one refusal per ``MAX_HOLD_S``, at the cost of a timer, and the
refusals leave the decoding the CPU time (and the GIL) it needs to answer what was admitted in
time. Clients that wait as told are answered at once (up to that rate).

:class:`CancelOnDisconnectMiddleware`: a request whose client disconnects before the answer
starts has its handling cancelled; the engine then drops it from its queue without a model call,
and stops a model call at its next step once every request in it has been cancelled.
"""

from __future__ import annotations

import asyncio
import time
from typing import NamedTuple

from fastapi.responses import JSONResponse

from service.engine import InferenceEngine

# The routes that queue decoding work (POST), which an overloaded engine refuses.
ANSWER_PATHS = frozenset({"/respond", "/v1/chat/completions"})
REFUSALS_PER_S = 20.0
MAX_HOLD_S = 10.0
TOLD_TO_WAIT = 10_000  # connections remembered with the time they were told to wait until


class AnswerRoute(NamedTuple):
    path: str


class EarlyRefusalMiddleware:
    """503 + Retry-After, before the body is read, for a conversation while the engine would
    refuse any, paced by the engine."""

    def __init__(self, app, engine: InferenceEngine):
        self.app = app
        self.engine = engine

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in ANSWER_PATHS
            or (refused := self.engine.refusal()) is None
        ):
            await self.app(scope, receive, send)
            return
        self.engine.stats.rejected += 1
        # What the router would have set, for service.metrics' route label (a path of
        # ANSWER_PATHS: a route without parameters).
        scope["route"] = AnswerRoute(scope["path"])
        message = await receive()
        while message["type"] == "http.request" and message.get("more_body", False):
            message = await receive()
        response = JSONResponse(
            {"detail": str(refused)},
            status_code=503,
            headers={"Retry-After": str(refused.retry_after)},
        )
        await response(scope, receive, send)


class RefusalPacingMiddleware:
    """Hold a 503 with Retry-After of a route that answers a conversation MAX_HOLD_S when its
    connection ignored the previous one's Retry-After, or for its Retry-After when more than
    REFUSALS_PER_S refusals were sent in the last second; else send it at once."""

    def __init__(self, app):
        self.app = app
        self._tokens, self._refilled = REFUSALS_PER_S, time.monotonic()
        self._wait_until: dict[tuple, float] = {}  # (host, port) -> monotonic time

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in ANSWER_PATHS:
            await self.app(scope, receive, send)
            return
        client = tuple(scope.get("client") or ())

        async def paced_send(message):
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = dict(message.get("headers", []))
                retry_after = headers.get(b"retry-after", b"").decode()
                if retry_after.isdigit():
                    await self._pace(client, int(retry_after))
            await send(message)

        await self.app(scope, receive, paced_send)

    async def _pace(self, client: tuple, retry_after: int) -> None:
        now = time.monotonic()
        ignored = client and self._wait_until.pop(client, 0.0) > now
        self._tokens = min(REFUSALS_PER_S, self._tokens + (now - self._refilled) * REFUSALS_PER_S)
        self._refilled = now
        if ignored:  # the longest hold: it will ask again the moment it has its answer
            hold = MAX_HOLD_S
        elif self._tokens < 1:
            hold = min(retry_after, MAX_HOLD_S)
        else:
            hold = 0.0
            self._tokens -= 1
        if client:
            if len(self._wait_until) >= TOLD_TO_WAIT:  # forget the oldest
                del self._wait_until[next(iter(self._wait_until))]
            # Told at now + hold; a client that waits as told comes back after this (less a
            # margin for its clock and the network).
            self._wait_until[client] = now + hold + retry_after - 0.25
        if hold:
            await asyncio.sleep(hold)


class CancelOnDisconnectMiddleware:
    """Cancel the handling of a POST whose client disconnects after sending its body and before
    the response starts (a streamed response's own disconnect handling takes over then)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body_read = asyncio.Event()
        started = False

        async def receive_body():
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        handling = asyncio.create_task(self.app(scope, receive_body, send_tracked))

        async def watch():
            await body_read.wait()
            while not started:
                if (await receive())["type"] == "http.disconnect":
                    if not started:
                        handling.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait({handling})  # which, cancelled itself, leaves ``handling`` be
        except asyncio.CancelledError:
            handling.cancel()
            raise
        finally:
            watcher.cancel()
        if handling.cancelled():
            return  # the client left; there is nobody to answer
        handling.result()  # re-raise what the app raised
