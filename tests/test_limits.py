"""Every limit of the service exactly at its value and one past it: the request body (declared
and streamed), the request headers, a turn's text and speaker, the turns and tokens read, the
samples and words asked for, the configuration's bounds and the admission of queued work."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from uvicorn.lifespan.off import LifespanOff
from uvicorn.server import ServerState

import service.app
import service.server
from benchmarks.service_process import free_port
from service.app import BodyLimitMiddleware, RateLimitedLog, create_app
from service.config import ConfigError, ServiceConfig
from service.engine import ADMIT_SHARE, DecodeCost, EngineOverloaded, GenerationRequest
from service.schemas import MAX_LENGTH, MAX_SAMPLES, MAX_SPEAKER_CHARS, MAX_TURN_CHARS
from service.server import PROBE_CONNECTIONS, LimitedHttpToolsProtocol, build_server
from tests.test_service import make_engine, tiny_checkpoint, wait_ready  # noqa: F401

BODY_LIMIT = 400


@pytest.fixture(scope="module")
def limited(tiny_checkpoint):  # noqa: F811
    with TestClient(create_app(make_engine(tiny_checkpoint, max_body_bytes=BODY_LIMIT))) as c:
        wait_ready(c)
        yield c


def request_of(size: int) -> bytes:
    """A valid /respond body of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    core = json.dumps({"conversation": [{"speaker": "A", "text": "hi"}], "num_samples": 1})
    assert len(core) <= size
    return core.encode() + b" " * (size - len(core))


def post(client, content, **headers):
    return client.post("/respond", content=content,
                       headers={"content-type": "application/json", **headers})  # fmt: skip


def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_refused(limited):
    at, past = request_of(BODY_LIMIT), request_of(BODY_LIMIT + 1)
    r = post(limited, at)
    assert r.request.headers["content-length"] == str(BODY_LIMIT)
    assert r.status_code == 200, r.text
    r = post(limited, past)
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"request body larger than {BODY_LIMIT} bytes"


def test_a_streamed_body_is_counted_to_the_same_byte(limited):
    def chunks(body: bytes, size: int = 64):  # no Content-Length: counted as it arrives
        for i in range(0, len(body), size):
            yield body[i : i + size]

    r = post(limited, chunks(request_of(BODY_LIMIT)))
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 200, r.text
    r = post(limited, chunks(request_of(BODY_LIMIT + 1)))
    assert r.status_code == 413, r.text
    # the byte past the limit in a chunk of its own
    r = post(limited, iter([request_of(BODY_LIMIT), b" "]))
    assert r.status_code == 413, r.text


def test_a_declared_length_past_the_limit_is_refused_before_reading(limited):
    r = post(limited, request_of(BODY_LIMIT), **{"content-length": str(BODY_LIMIT + 1)})
    assert r.status_code == 413
    r = post(limited, b"{}", **{"content-length": "x"})
    assert r.status_code == 400 and "Content-Length" in r.json()["detail"]


# --- headers: the real protocol in a server on this process -----------------------------------

HEADER_LIMIT = 1024


@pytest.fixture(scope="module")
def header_server(tiny_checkpoint):  # noqa: F811
    config = ServiceConfig(checkpoint=tiny_checkpoint, port=free_port(), log_level="warning",
                           max_header_bytes=HEADER_LIMIT, max_connections=20)  # fmt: skip
    server = build_server(config, create_app(make_engine(tiny_checkpoint)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    yield config.port
    server.should_exit = True
    thread.join(10)


def head_of(size: int) -> bytes:
    """A request head of exactly ``size`` bytes, from the request line to the blank line."""
    start = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def exchange(port: int, data: bytes, pieces: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        step = -(-len(data) // pieces)
        for i in range(0, len(data), step):  # the head in several reads of the server
            sock.sendall(data[i : i + step])
            time.sleep(0.02)
        return sock.recv(65536)


@pytest.mark.parametrize("pieces", [1, 3])
def test_headers_of_exactly_the_limit_are_read_and_one_byte_more_get_431(header_server, pieces):
    assert exchange(header_server, head_of(HEADER_LIMIT), pieces).startswith(b"HTTP/1.1 200")
    reply = exchange(header_server, head_of(HEADER_LIMIT + 1), pieces)
    assert reply.startswith(b"HTTP/1.1 431"), reply
    assert f"request headers larger than {HEADER_LIMIT} bytes".encode() in reply


def test_the_header_count_starts_again_for_each_request(header_server):
    with socket.create_connection(("127.0.0.1", header_server), timeout=10) as sock:
        for _ in range(3):  # three heads of the limit on one kept-alive connection
            sock.sendall(head_of(HEADER_LIMIT))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")


# --- the request's fields -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_checkpoint):  # noqa: F811
    with TestClient(create_app(make_engine(tiny_checkpoint))) as c:
        wait_ready(c)
        yield c


def respond(client, conversation, **fields):
    return client.post("/respond", json={"conversation": conversation, "num_samples": 1, **fields})


@pytest.mark.parametrize(
    "field, at, past",
    [
        ("text", "a" * MAX_TURN_CHARS, "a" * (MAX_TURN_CHARS + 1)),
        ("speaker", "S" * MAX_SPEAKER_CHARS, "S" * (MAX_SPEAKER_CHARS + 1)),
    ],
)
def test_a_turn_at_its_limits_is_read_and_past_them_refused(client, field, at, past):
    turn = {"speaker": "A", "text": "hi"}
    assert respond(client, [{**turn, field: at}]).status_code == 200
    r = respond(client, [{**turn, field: past}])
    assert r.status_code == 422 and field in r.text
    assert MAX_TURN_CHARS == 1000 and MAX_SPEAKER_CHARS == 32


@pytest.mark.parametrize("field, limit", [("num_samples", MAX_SAMPLES), ("max_length", MAX_LENGTH)])
def test_samples_and_length_at_the_limit_and_one_past(client, field, limit):
    fields = {"num_samples": 1, "max_length": 1, field: limit}
    r = respond(client, [], **fields)
    assert r.status_code == 200, r.text
    out, asked = r.json(), fields["num_samples"]
    # pairwise distinct: fewer only when the draws ran out (one word of a tiny vocabulary), said so
    assert out["sampling"]["returned"] == len(out["responses"]) <= asked
    assert (len(out["responses"]) < asked) == (out["sampling"]["warning"] is not None)
    r = respond(client, [], **{**fields, field: limit + 1})
    assert r.status_code == 422 and field in r.text
    assert (MAX_SAMPLES, MAX_LENGTH) == (32, 60)


def test_the_turns_and_tokens_read_stop_at_the_models_window(client):
    cfg = client.app.state.engine.model.config
    w, n = cfg.max_context, cfg.max_utt_len
    turns = [{"speaker": "AB"[i % 2], "text": "hi"} for i in range(w + 1)]
    for count, read in ((w, w), (w + 1, w)):
        report = respond(client, turns[:count]).json()["input"]
        assert (report["turns"], report["turns_read"], report["tokens"]) == (count, read, read)
    for words, read in ((n, n), (n + 1, n)):
        report = respond(client, [{"speaker": "A", "text": "hi " * words}]).json()["input"]
        assert report["tokens"] == read


@pytest.mark.parametrize(
    "field, lowest",
    [("max_body_bytes", 1), ("max_header_bytes", 1024), ("max_batch_size", 1), ("queue_size", 1),
     ("max_connections", 0), ("torch_threads", 0), ("max_wait_ms", 0)],
)  # fmt: skip
def test_the_configurations_lowest_values_are_accepted_and_one_less_refused(
    tiny_checkpoint,  # noqa: F811
    field,
    lowest,
):
    assert getattr(ServiceConfig(checkpoint=tiny_checkpoint, **{field: lowest}), field) == lowest
    with pytest.raises(ConfigError, match=field):
        ServiceConfig(checkpoint=tiny_checkpoint, **{field: lowest - 1})


@pytest.mark.parametrize("port, ok", [(0, True), (65535, True), (-1, False), (65536, False)])
def test_port_bounds(tiny_checkpoint, port, ok):  # noqa: F811
    if ok:
        assert ServiceConfig(checkpoint=tiny_checkpoint, port=port).port == port
    else:
        with pytest.raises(ConfigError, match="port"):
            ServiceConfig(checkpoint=tiny_checkpoint, port=port)


# --- admission --------------------------------------------------------------------------------


def admission(tiny_checkpoint, queued: int, backlog_units: int, queue_size=4, timeout_s=10.0):  # noqa: F811
    """An engine whose queue holds ``queued`` requests and whose backlog is ``backlog_units``
    (1 ms each, no fixed part per step)."""
    engine = make_engine(tiny_checkpoint, queue_size=queue_size, timeout_s=timeout_s)
    engine.cost = DecodeCost(seconds_per_unit=1e-3)
    engine._queue = asyncio.Queue(queue_size)
    for _ in range(queued):
        engine._queue.put_nowait(None)
    engine._backlog_units = backlog_units
    return engine


def request_of_work(work: int) -> GenerationRequest:
    return GenerationRequest(turns=[], num_samples=1, max_length=work)


def test_the_queue_admits_up_to_its_size(tiny_checkpoint):  # noqa: F811
    assert admission(tiny_checkpoint, 3, 0)._admit(request_of_work(5)) == 5
    with pytest.raises(EngineOverloaded, match="4 requests waiting") as refused:
        admission(tiny_checkpoint, 4, 0)._admit(request_of_work(5))
    assert refused.value.retry_after == 1


def test_queued_work_is_admitted_up_to_its_budget_exactly(tiny_checkpoint):  # noqa: F811
    budget_units = round(10.0 * ADMIT_SHARE / 1e-3)  # 5 s of 1 ms units
    assert ADMIT_SHARE == 0.5 and budget_units == 5000
    engine = admission(tiny_checkpoint, 1, 4000)
    assert engine._admit(request_of_work(60)) == 60  # 4.06 s
    engine._backlog_units = budget_units - 60
    assert engine._admit(request_of_work(60)) == 60  # exactly 5 s
    engine._backlog_units = budget_units - 59
    with pytest.raises(EngineOverloaded, match=r"about 4\.9 s of decoding queued") as refused:
        engine._admit(request_of_work(60))  # 5.001 s
    assert refused.value.retry_after == 5  # the backlog's seconds, rounded up
    assert engine.stats.rejected == 1


def test_a_request_alone_is_admitted_whatever_its_cost(tiny_checkpoint):  # noqa: F811
    engine = admission(tiny_checkpoint, 0, 0, timeout_s=0.001)
    assert engine._admit(request_of_work(60)) == 60
    engine._backlog_units = 1
    for _ in range(2):
        with pytest.raises(EngineOverloaded):
            engine._admit(request_of_work(60))
    assert engine.stats.rejected == 2  # each refusal counted


def test_the_decode_cost_from_two_timed_calls():
    # 0.1 ms a row-step, and a step's fixed part worth 7 rows: 1 row x 10 steps takes 8 ms,
    # 8 rows x 20 steps 30 ms
    cost = DecodeCost.from_timings((1, 10, 0.008), (8, 20, 0.030))
    assert cost.seconds_per_unit == pytest.approx(1e-4)
    assert cost.step_overhead == pytest.approx(7.0)
    assert cost.units(2, 60) == 540  # a request for 1 response (2 candidates): 4.5 x 2 x 60
    assert cost.units(256, 60) == 15_780
    noisy = DecodeCost.from_timings((1, 10, 0.02), (8, 20, 0.02))  # no slope: no fixed part
    assert (noisy.step_overhead, noisy.seconds_per_unit) == (0, pytest.approx(0.001 / 8))
    flat = DecodeCost.from_timings((1, 10, 0.01), (8, 20, 0.02))  # a step costs the same
    assert (flat.step_overhead, flat.seconds_per_unit) == (0, pytest.approx(0.001 / 8))
    # a slope steeper than the narrow call's own time: a fixed part below 0, held at 0
    steep = DecodeCost.from_timings((2, 10, 0.001), (8, 10, 0.008))
    assert steep.step_overhead == 0.0
    assert steep.seconds_per_unit == pytest.approx(0.0007 / 6)


def test_the_decode_cost_follows_the_calls_forgetting_the_older_ones():
    cost = DecodeCost(0.002, step_overhead=1.0)  # as one unit at 2 ms
    cost.observe(0.3, rows=4, steps=10)  # 10 x (4 + 1) = 50 units
    assert cost.seconds_per_unit == pytest.approx((0.002 * 0.9 + 0.3) / (0.9 + 50), rel=1e-12)
    cost.observe(0.1, rows=1, steps=20)  # 40 units
    seconds = (0.002 * 0.9 + 0.3) * 0.9 + 0.1
    units = (0.9 + 50) * 0.9 + 40
    assert cost.seconds_per_unit == pytest.approx(seconds / units, rel=1e-12)


def test_hosts_and_info_detail_are_checked_with_their_messages(tiny_checkpoint):  # noqa: F811
    with pytest.raises(
        ConfigError, match=r"^allowed_hosts must name at least one host \(or '\*'\)$"
    ):
        ServiceConfig(checkpoint=tiny_checkpoint, allowed_hosts=" , ")
    with pytest.raises(
        ConfigError, match=r'^info_detail: got "most"; allowed: one of basic, full$'
    ):
        ServiceConfig(checkpoint=tiny_checkpoint, info_detail="most")


@pytest.mark.parametrize(
    "field", ["timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s"]
)
def test_times_must_be_above_zero(tiny_checkpoint, field):  # noqa: F811
    assert getattr(ServiceConfig(checkpoint=tiny_checkpoint, **{field: 0.001}), field) == 0.001
    with pytest.raises(ConfigError, match=field):
        ServiceConfig(checkpoint=tiny_checkpoint, **{field: 0})


# --- BodyLimitMiddleware at the ASGI level, in the test's own thread ----------------------
# (The tests above go through Starlette's test client, which runs the app in another thread;
# these call the middleware directly, so mutmut also maps them to it.)

LIMIT = 10


async def answer_ok(send) -> None:
    """An ASGI app's answer: 200, body "ok"."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class Connection:
    """A client's side of one request: the messages it sends (``None``: it stalls for ever),
    and what the middleware and the app did with them. Reading past them fails the test."""

    def __init__(self, messages, headers=(), path="/respond", client=None):
        self.messages = list(messages)
        self.headers = [(k.encode(), v.encode()) for k, v in headers]
        self.path, self.client = path, client
        self.received = 0  # messages the middleware took from the client
        self.app_saw: list[dict] | None = None  # messages the inner app received
        self.sent: list[dict] = []

    async def receive(self):
        assert self.messages, "read past what the client sent"
        message = self.messages.pop(0)
        if message is None:
            await asyncio.Event().wait()  # the client stalls
        self.received += 1
        return message

    async def send(self, message):
        self.sent.append(message)

    async def app(self, scope, receive, send):
        self.app_saw = []
        while True:
            message = await receive()
            self.app_saw.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        await answer_ok(send)

    def run(self, timeout_s: float = 5.0, scope_type: str = "http") -> None:
        scope = {"type": scope_type, "path": self.path, "headers": self.headers}
        if self.client is not None:
            scope["client"] = self.client
        middleware = BodyLimitMiddleware(self.app, max_bytes=LIMIT, timeout_s=timeout_s)
        # a middleware that waits for ever fails here instead of hanging the suite
        asyncio.run(asyncio.wait_for(middleware(scope, self.receive, self.send), 10))

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def reply(self) -> dict:
        return json.loads(self.sent[1]["body"])


def chunk(body: bytes, more: bool = True) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_at_the_limit_reaches_the_app_as_one_message(declared):
    headers = [("content-length", str(LIMIT))] if declared else [("transfer-encoding", "chunked")]
    conn = Connection([chunk(b"a" * 4), chunk(b""), chunk(b"b" * 6, more=False)], headers)
    conn.run()
    assert conn.status == 200 and conn.received == 3
    assert conn.app_saw == [{"type": "http.request", "body": b"aaaabbbbbb", "more_body": False}]


def test_chunks_without_body_or_more_body_keys_are_read_as_asgi_defines_them():
    # ASGI: "body" defaults to b"", "more_body" to False
    conn = Connection(
        [{"type": "http.request", "more_body": True}, {"type": "http.request", "body": b"ab"}],
        [("transfer-encoding", "chunked")],
    )
    conn.run()
    assert conn.app_saw == [{"type": "http.request", "body": b"ab", "more_body": False}]
    full = Connection(
        [{"type": "http.request", "more_body": True}, chunk(b"a" * 10, more=False)],
        [("transfer-encoding", "chunked")],
    )
    full.run()
    assert full.status == 200  # the chunk without a body counted 0 bytes


def test_one_byte_past_the_limit_is_refused_at_the_chunk_that_crosses_it():
    conn = Connection(
        [chunk(b"a" * 10), chunk(b"b"), chunk(b"c", more=False)], [("transfer-encoding", "x")]
    )
    conn.run()
    assert (conn.status, conn.app_saw, conn.received) == (413, None, 2)
    assert conn.reply == {"detail": "request body larger than 10 bytes"}
    assert (b"connection", b"close") in conn.sent[0]["headers"]


def test_a_refusal_on_the_openai_api_has_its_error_shape():
    conn = Connection(
        [chunk(b"a" * 11)], [("transfer-encoding", "chunked")], path="/v1/chat/completions"
    )
    conn.run()
    assert conn.status == 413
    assert conn.reply["error"]["message"] == "request body larger than 10 bytes"


@pytest.mark.parametrize(
    "length, status, detail",
    [
        (str(LIMIT + 1), 413, "request body larger than 10 bytes"),
        ("ten", 400, "invalid Content-Length header"),
    ],
)
def test_a_declared_length_is_judged_before_anything_is_read(length, status, detail):
    conn = Connection([chunk(b"a", more=False)], [("content-length", length)])
    conn.run()
    assert (conn.status, conn.reply, conn.received, conn.app_saw) == (
        status,
        {"detail": detail},
        0,
        None,
    )
    assert (b"connection", b"close") in conn.sent[0]["headers"]


def test_a_request_without_a_body_goes_straight_to_the_app():
    conn = Connection([{"type": "http.disconnect"}], [("accept", "*/*")])
    conn.run(timeout_s=0.001)  # no read under the deadline: the app reads the connection itself
    assert conn.status == 200 and conn.app_saw == [{"type": "http.disconnect"}]
    for scope_type in ("lifespan", "websocket"):
        other = Connection([{"type": "lifespan.startup"}])
        other.run(scope_type=scope_type)
        assert other.app_saw == [{"type": "lifespan.startup"}]


def test_a_client_that_leaves_mid_body_is_replayed_as_it_happened():
    conn = Connection(
        [chunk(b"ab"), chunk(b"c"), {"type": "http.disconnect"}, {"type": "http.disconnect"}],
        [("transfer-encoding", "chunked")],
    )
    conn.run()
    assert conn.app_saw == [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert conn.received == 3  # the app's further reads would go to the connection


@pytest.mark.parametrize("client, shown", [(("10.1.2.3", 4567), "10.1.2.3:4567"), (None, "?:0")])
def test_a_body_stalled_past_the_deadline_gets_408(caplog, client, shown):
    conn = Connection([chunk(b"abc"), None], [("content-length", "5")], client=client)
    with caplog.at_level("WARNING"):
        conn.run(timeout_s=0.05)
    assert (conn.status, conn.app_saw) == (408, None)
    assert conn.reply == {"detail": "request body not received within 0.05 s"}
    assert caplog.messages == [
        f"closed the connection from {shown}: request body not received within 0.05 s"
    ]


# --- LimitedHttpToolsProtocol in the test's own thread ---------------------------------------
# (The header tests above go through a real server in another thread; these drive the protocol
# with a scripted transport, as uvicorn's own tests do, so mutmut also maps them to it.)


@pytest.fixture(autouse=True)
def fresh_log_limits(monkeypatch):
    """Each test's warnings counted afresh: the rate limit of the shed and slow-body logs (10 a
    second for the whole process) would otherwise hold back a test's lines after another's."""
    monkeypatch.setattr(service.server, "shed_log", RateLimitedLog(service.server.log))
    monkeypatch.setattr(service.app, "slow_body_log", RateLimitedLog(service.app.log))


class ScriptedTransport:
    """A socket's transport: what was written, whether it was closed; closing it tells the
    protocol in the loop's next step, as asyncio's transports do."""

    def __init__(self, port: int | None):
        self.port, self.written, self.closed = port, b"", False
        self.protocol: LimitedHttpToolsProtocol | None = None

    def get_extra_info(self, name):
        peer = None if self.port is None else ("10.0.0.1", self.port)
        return {"sockname": ("127.0.0.1", 8000), "peername": peer}.get(name)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        if not self.closed and self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Connections:
    """Connections to one LimitedHttpToolsProtocol server, made in the running event loop."""

    def __init__(self, app=None, **limits):
        async def answer(scope, receive, send):
            while (await receive()).get("more_body"):
                pass  # the body, read to its end
            await answer_ok(send)

        settings = {"header_timeout_s": 5.0, "max_header_bytes": 64, "max_connections": 2}
        self.cls = type(
            "Protocol", (LimitedHttpToolsProtocol,), {**settings, **limits, "by_age": {}}
        )
        self.config = uvicorn.Config(
            app or answer, http=self.cls, ws="none", limit_concurrency=None, log_level="warning"
        )
        self.config.load()
        self.state = ServerState()
        self.opened = 0

    def open(self, peer: bool = True) -> tuple[LimitedHttpToolsProtocol, ScriptedTransport]:
        self.opened += 1
        protocol = self.cls(
            config=self.config,
            server_state=self.state,
            app_state=LifespanOff(self.config).state,
            _loop=asyncio.get_running_loop(),
        )
        transport = ScriptedTransport(5000 + self.opened if peer else None)
        transport.protocol = protocol
        protocol.connection_made(transport)
        return protocol, transport


def get_of(header_bytes: int, path: str = "/x", head: bool = False) -> bytes:
    """A GET (or HEAD) whose request line and headers, blank line included, are
    ``header_bytes`` long."""
    head = f"{'HEAD' if head else 'GET'} {path} HTTP/1.1\r\nHost: a\r\nX-Pad: ".encode()
    pad = header_bytes - len(head) - 4
    assert pad >= 0
    return head + b"a" * pad + b"\r\n\r\n"


def status_of(written: bytes) -> int:
    return int(written.split(b" ", 2)[1]) if written else 0


def test_protocol_headers_at_the_limit_are_read_and_one_byte_more_get_431(caplog):
    async def run():
        server = Connections()
        at, at_t = server.open()
        at.data_received(get_of(64))
        past, past_t = server.open()
        past.data_received(get_of(65))
        # the blank line split across two reads is counted the same
        split, split_t = server.open()
        whole = get_of(65)
        split.data_received(whole[:-2])
        split.data_received(whole[-2:])
        await asyncio.sleep(0.01)
        return at_t, past_t, split_t

    with caplog.at_level("WARNING"):
        at_t, past_t, split_t = asyncio.run(run())
    assert status_of(at_t.written) == 200 and not at_t.closed
    for refused in (past_t, split_t):
        assert status_of(refused.written) == 431 and refused.closed
        assert b"request headers larger than 64 bytes" in refused.written
    assert "closed the connection from 10.0.0.1:5002: request headers larger than 64 bytes" in (
        caplog.messages
    )


def test_protocol_counts_each_kept_alive_requests_headers_afresh():
    async def run():
        server = Connections()
        protocol, transport = server.open()
        for _ in range(3):
            protocol.data_received(get_of(64))
            await asyncio.sleep(0.01)
        return transport

    transport = asyncio.run(run())
    assert transport.written.count(b"HTTP/1.1 200 OK") == 3 and not transport.closed


def test_protocol_closes_a_connection_without_headers_in_time(caplog):
    async def run():
        server = Connections(header_timeout_s=0.05, max_connections=10)
        silent, silent_t = server.open()
        prompt, prompt_t = server.open()
        prompt.data_received(get_of(40))
        slow, slow_t = server.open()
        slow.data_received(b"GET /x HTTP/1.1\r\n")  # and nothing more
        server.open(peer=False)  # (a socket whose peer address is unknown)
        await asyncio.sleep(0.2)
        return silent_t, prompt_t, slow_t

    with caplog.at_level("WARNING"):
        silent_t, prompt_t, slow_t = asyncio.run(run())
    assert silent_t.closed and slow_t.closed and not prompt_t.closed
    assert status_of(prompt_t.written) == 200
    assert sorted(caplog.messages) == [
        f"closed the connection from {who}: no request headers within 0.05 s"
        for who in ("10.0.0.1:5001", "10.0.0.1:5003", "?:0")
    ]


def test_protocol_makes_room_by_closing_the_oldest_idle_connection(caplog):
    async def run():
        server = Connections(max_connections=2)
        first, first_t = server.open()
        second, second_t = server.open()
        third, third_t = server.open()  # one past: the oldest idle one goes
        # counted out at once, before the transport reports the connection lost
        assert first not in server.state.connections and third in server.state.connections
        return server, (first, first_t), (second, second_t), (third, third_t)

    with caplog.at_level("WARNING"):
        server, first, second, third = asyncio.run(run())
    assert first[1].closed and not second[1].closed and not third[1].closed
    assert list(server.cls.by_age) == [second[0], third[0]]
    assert caplog.messages == [
        "closed the connection from 10.0.0.1:5001: making room for a new connection (3 open)"
    ]


def test_protocol_sheds_a_stalled_body_before_it_touches_a_request_being_answered():
    release = None

    async def slow_app(scope, receive, send):
        if scope["path"] == "/busy":
            await release.wait()
        else:
            while (await receive()).get("more_body"):
                pass
        await answer_ok(send)

    async def run():
        nonlocal release
        release = asyncio.Event()
        server = Connections(slow_app, max_connections=2)
        busy, busy_t = server.open()
        busy.data_received(b"GET /busy HTTP/1.1\r\nHost: a\r\n\r\n")
        body, body_t = server.open()
        body.data_received(b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(0.01)
        newcomer, newcomer_t = server.open()
        closed = [t.closed for t in (busy_t, body_t, newcomer_t)]
        release.set()
        await asyncio.sleep(0.01)
        return closed, busy_t

    closed, busy_t = asyncio.run(run())
    assert closed == [False, True, False]  # the stalled body went, the busy one stayed
    assert status_of(busy_t.written) == 200


def test_protocol_keeps_a_reserve_for_the_probes_and_closes_past_it(caplog):
    release = None

    async def hold(scope, receive, send):
        await release.wait()  # every request is being answered: none can be shed
        await answer_ok(send)

    async def run():
        nonlocal release
        release = asyncio.Event()
        server = Connections(hold, max_connections=1)
        busy, _ = server.open()
        busy.data_received(get_of(50))
        await asyncio.sleep(0.01)
        other, other_t = server.open()  # in the reserve: only a probe is answered
        other.data_received(get_of(50))
        await asyncio.sleep(0.01)  # answered 503, closed, gone
        probes = []
        for i in range(PROBE_CONNECTIONS):
            probe, probe_t = server.open()
            probe.data_received(get_of(50, path="/health" if i % 2 else "/ready", head=i < 2))
            probes.append(probe_t)
        await asyncio.sleep(0.01)
        held = [t.written == b"" and not t.closed for t in probes]  # the app holds them
        past, past_t = server.open()
        by_age = len(server.cls.by_age)
        release.set()  # then every held request is answered
        await asyncio.sleep(0.01)
        return held, probes, other_t, past_t, by_age

    with caplog.at_level("WARNING"):
        held, probes, other_t, past_t, by_age = asyncio.run(run())
    assert held == [True] * PROBE_CONNECTIONS
    assert all(status_of(t.written) == 200 for t in probes)
    assert sum(t.written.startswith(b"HTTP/1.1 200") for t in probes[:2]) == 2  # HEAD too
    assert status_of(other_t.written) == 503 and b"retry-after: 1" in other_t.written
    assert past_t.closed and past_t.written == b""
    assert by_age == 1 + PROBE_CONNECTIONS
    assert caplog.messages == [
        f"closed the connection from 10.0.0.1:{5003 + PROBE_CONNECTIONS}: 1 connections and the "
        "probes' reserve in use"
    ]


def post_of(header_bytes: int, body: bytes) -> tuple[bytes, bytes]:
    """A POST's headers of ``header_bytes`` (blank line included) and its body."""
    head = f"POST /x HTTP/1.1\r\nContent-Length: {len(body)}\r\nX-Pad: ".encode()
    return head + b"a" * (header_bytes - len(head) - 4) + b"\r\n\r\n", body


@pytest.mark.parametrize("header_bytes, status", [(64, 200), (65, 431)])
def test_protocol_counts_headers_up_to_the_blank_line_whatever_the_reads(header_bytes, status):
    """The body, a pipelined request or the rest of a read after the blank line are not
    headers: only the bytes up to it count, however the reads cut them."""

    async def run():
        server = Connections()
        headers, body = post_of(header_bytes, b"b" * 100)  # more than the headers' limit
        cases = {
            "with its body": [headers + body],
            "blank line's last byte with the body": [headers[:-1], headers[-1:] + body],
            "blank line's last 3 bytes with the body": [headers[:-3], headers[-3:] + body],
            "body later": [headers, body[:50], body[50:]],
        }
        written = {}
        for name, reads in cases.items():
            protocol, transport = server.open()
            for data in reads:
                if transport.closed:
                    break  # (a closed socket delivers nothing more)
                protocol.data_received(data)
                await asyncio.sleep(0.01)
            written[name] = transport.written
        return written

    for name, written in asyncio.run(run()).items():
        assert status_of(written) == status, name


def test_protocol_counts_the_first_of_two_pipelined_requests_alone():
    async def run():
        server = Connections()
        protocol, transport = server.open()
        protocol.data_received(get_of(40) + get_of(40))  # 80 bytes of headers in one read
        await asyncio.sleep(0.01)
        return transport

    transport = asyncio.run(run())
    assert transport.written.startswith(b"HTTP/1.1 200") and not transport.closed
