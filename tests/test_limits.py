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
from fastapi.testclient import TestClient

from benchmarks.service_process import free_port
from service.app import create_app
from service.config import ConfigError, ServiceConfig
from service.engine import ADMIT_SHARE, DecodeCost, EngineOverloaded, GenerationRequest
from service.schemas import MAX_LENGTH, MAX_SAMPLES, MAX_SPEAKER_CHARS, MAX_TURN_CHARS
from service.server import build_server
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
    with pytest.raises(EngineOverloaded):
        engine._admit(request_of_work(60))


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


@pytest.mark.parametrize(
    "field", ["timeout_s", "header_timeout_s", "body_timeout_s", "keep_alive_s"]
)
def test_times_must_be_above_zero(tiny_checkpoint, field):  # noqa: F811
    assert getattr(ServiceConfig(checkpoint=tiny_checkpoint, **{field: 0.001}), field) == 0.001
    with pytest.raises(ConfigError, match=field):
        ServiceConfig(checkpoint=tiny_checkpoint, **{field: 0})
