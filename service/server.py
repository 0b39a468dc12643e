"""The uvicorn server for ``python -m service``, with limits on connections and slow clients.

A connection holds a socket, a file descriptor and buffers; clients that open connections and
then stall must not be able to hold them all. uvicorn's own settings cover part of it:

* ``limit_concurrency`` (``max_connections``): beyond it, a request gets 503;
* ``timeout_keep_alive`` (``keep_alive_s``): an idle connection between requests is closed.

What uvicorn lacks, :class:`LimitedHttpToolsProtocol` adds: a connection that does not send a
request's headers within ``header_timeout_s`` (up to a tenth more, at random:
``service.app.spread``; an idle new connection, headers sent a byte at a time) is closed; headers over ``max_header_bytes`` get 431 (httptools, unlike h11 with its
``h11_max_incomplete_event_size``, buffers headers of any size); and when ``max_connections``
are open, a new connection closes the oldest one that is not being answered: idle, still sending
its headers, or still sending its body (the slow clients), so that they cannot lock out real
clients. A body that arrives too slowly is the app's ``BodyLimitMiddleware``'s
(``body_timeout_s``). Every connection shed is logged.

Probes: ``PROBE_CONNECTIONS`` connections beyond ``max_connections`` are kept for the liveness
and readiness probes (GET /health, /ready): when every connection is being answered, a new one
may still ask those, and any other request on it gets 503 + Retry-After; past that reserve a new
connection is closed at once. The process thus never holds more than ``max_connections +
PROBE_CONNECTIONS`` client sockets, within its file-descriptor limit (``max_connections``'
default leaves ``FD_RESERVE``), and a probe finds a socket, a slot and an answer whatever slow
or stalled clients do. (uvicorn's own ``limit_concurrency`` would answer a probe 503 too.)

SIGTERM (``docker stop``, Kubernetes ending a pod) drains the service (:class:`DrainingServer`):
the requests already admitted are decoded and answered, new ones get 503 with Retry-After and
``/ready`` turns 503 (a load balancer stops sending any); once nothing admitted is left (at most
``timeout_s`` later, each request's own limit), uvicorn's shutdown closes the connections and the
process exits with 0. A second SIGTERM or SIGINT ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from http import HTTPStatus

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.app import RateLimitedLog, error_response, spread
from service.config import ServiceConfig, default_max_connections

log = logging.getLogger("service.server")

PROBE_PATHS = (b"/health", b"/ready")
shed_log = RateLimitedLog(log)
PROBE_CONNECTIONS = 16


def build_server(config: ServiceConfig, app) -> uvicorn.Server:
    """uvicorn serving ``app`` with ``config``'s limits (its protocol's class attributes)."""
    max_connections = config.max_connections or default_max_connections()
    limits = {
        "header_timeout_s": config.header_timeout_s,
        "max_header_bytes": config.max_header_bytes,
        "max_connections": max_connections,
        "by_age": {},  # this server's open connections, oldest first
    }
    return DrainingServer(
        # the engine of an app from create_app; any other ASGI app (tests) is not drained
        getattr(getattr(app, "state", None), "engine", None),
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            http=type("Protocol", (LimitedHttpToolsProtocol,), limits),
            ws="none",  # no websocket routes; every connection is a LimitedHttpToolsProtocol
            # The protocol limits connections itself, with a reserve for the probes.
            limit_concurrency=None,
            # uvicorn types it int; it only hands it to loop.call_later, which takes a float
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]
        ),
    )


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM or SIGINT drains the engine before shutting down."""

    def __init__(self, engine, config: uvicorn.Config):
        super().__init__(config)
        self.engine = engine
        self.draining = False
        self._drained: asyncio.Task | None = None
        self.started_at: float | None = None  # time.perf_counter() once it listens

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.started_at = time.perf_counter()

    def handle_exit(self, sig: int, frame) -> None:
        if self.engine is None or self.draining or sig not in (signal.SIGTERM, signal.SIGINT):
            super().handle_exit(sig, frame)  # the second signal: uvicorn's own (immediate) exit
            return
        # Not recorded as uvicorn's captured signal: it would raise it again once shut down,
        # and a drained service exits with 0.
        self.draining = True
        self.engine.drain()
        log.info("%s: draining (new requests get 503)", signal.Signals(sig).name)

    async def on_tick(self, counter: int) -> bool:
        if self.draining and self._drained is None:
            self._drained = asyncio.create_task(self._drain())
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        started = time.perf_counter()
        # Every admitted request ends within its time limit, answered or timed out.
        idle = await self.engine.wait_idle(self.engine.config.timeout_s + 1)
        log.info(
            "drained in %.1f s%s; shutting down",
            time.perf_counter() - started,
            "" if idle else " (requests still waiting: they get 503)",
        )
        self.should_exit = True


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header time and size limit and room-making."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000
    # The open connections, oldest first (a dict keeps insertion order): the oldest sheddable
    # one is found near its start, not by a scan of a thousand at every new connection.
    by_age: dict[LimitedHttpToolsProtocol, None] = {}

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_bytes, self._header_tail = 0, b""
        self._header_timer: asyncio.TimerHandle | None = None
        self._start_header_timer()
        self.by_age[self] = None
        self._make_room()
        if len(self.by_age) > self.max_connections + PROBE_CONNECTIONS:
            self._shed(f"{self.max_connections} connections and the probes' reserve in use")

    def connection_lost(self, exc) -> None:
        self._stop_header_timer()
        self.by_age.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._between_requests() and not self.transport.is_closing():
            # Counted up to the blank line that ends them (which may span two reads), and
            # refused before the parser buffers more.
            window = self._header_tail + data
            end = window.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4 - len(self._header_tail)
            self._header_tail = window[-3:]
            if self._header_bytes > self.max_header_bytes:
                detail = f"request headers larger than {self.max_header_bytes} bytes"
                self._shed(detail, _http_response(431, detail))
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self._header_bytes, self._header_tail = 0, b""
        if len(self.by_age) <= self.max_connections or self._is_probe():
            super().on_headers_complete()
            return
        # In the probes' reserve: any other request gets 503 (and the connection is closed).
        app, self.app = self.app, _connections_exhausted
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    # ---------------------------------------------------------------------------------------

    def _between_requests(self) -> bool:
        """No request is being answered: the connection is idle or reading request headers."""
        return self.cycle is None or self.cycle.response_complete

    def _sending_body(self) -> bool:
        """A request's body is still arriving (and nothing has been answered yet)."""
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_started

    def _is_probe(self) -> bool:
        method = self.parser.get_method()
        return method in (b"GET", b"HEAD") and httptools.parse_url(self.url).path in PROBE_PATHS

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            delay = spread(self.header_timeout_s)  # not all at once: see service.app.spread
            self._header_timer = self.loop.call_later(delay, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._shed(f"no request headers within {self.header_timeout_s:g} s")

    def _make_room(self) -> None:
        """Over max_connections, close the oldest connection that is idle or reading headers,
        else the oldest one whose request body is still arriving, if there is one."""
        if len(self.by_age) <= self.max_connections:
            return
        for sheddable in (
            LimitedHttpToolsProtocol._between_requests,
            LimitedHttpToolsProtocol._sending_body,
        ):
            oldest = next((c for c in self.by_age if c is not self and sheddable(c)), None)
            if oldest is not None:
                oldest._shed(f"making room for a new connection ({len(self.by_age)} open)")
                return

    def _shed(self, why: str, reply: bytes = b"") -> None:
        """Close the connection (after ``reply``), and log why."""
        host, port = self.client or ("?", 0)
        shed_log.warning("closed the connection from %s:%s: %s", host, port, why)
        if reply:
            self.transport.write(reply)
        self.transport.close()
        # Counted out at once: a request read in the same event-loop step, before
        # connection_lost, would be checked against limit_concurrency with this one still in.
        self.connections.discard(self)
        self.by_age.pop(self, None)


async def _connections_exhausted(scope, receive, send) -> None:
    """The answer to a request other than a probe on a connection in the probes' reserve."""
    detail = "too many open connections; retry later"
    await error_response(503, detail, {"retry-after": "1", "connection": "close"})(
        scope, receive, send
    )


def _http_response(status: int, detail: str) -> bytes:
    """A whole HTTP response with the app's error body, for a connection closed after it."""
    response = error_response(status, detail, {"connection": "close"})
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body
