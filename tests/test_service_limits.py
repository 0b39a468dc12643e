"""The service under overload and slow clients, and at start-up with a bad checkpoint (issue 12)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from benchmarks.service_load import Server
from benchmarks.service_process import free_port, service_env
from service import overload
from service.config import ConfigError, ServiceConfig, default_max_connections
from service.engine import DecodeCost
from tests.test_service import (  # noqa: F401 (tiny_checkpoint: a fixture)
    REPO,
    Gate,
    body,
    run_in_app,
    tiny_checkpoint,
    wait_until,
)


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["config", "weights"])
def test_cli_exits_non_zero_naming_the_file_when_the_checkpoint_fails_to_load(
    tiny_checkpoint,  # noqa: F811
    tmp_path,
    broken,
):
    directory = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, directory)
    if broken == "config":
        config = json.loads((directory / "config.json").read_text())
        config["model"]["latent_dim"] = -1
        (directory / "config.json").write_text(json.dumps(config))
        bad_file = directory / "config.json"
    else:
        bad_file = directory / "model.safetensors"
        bad_file.write_bytes(b"not safetensors")
    proc = subprocess.run(
        [sys.executable, "-m", "service", "--checkpoint", str(directory)]
        + ["--port", str(free_port()), "--device", "cpu"],
        cwd=REPO,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m service: error: ") and str(bad_file) in last, proc.stderr
    assert "Traceback" not in proc.stderr


# --- slow and idle clients: a real server with small limits ---------------------------------

LIMITS = {
    "--header-timeout-s": "2",
    "--body-timeout-s": "2",
    "--keep-alive-s": "1",
    "--max-connections": "20",
    "--max-header-bytes": "4096",
}


@pytest.fixture(scope="module")
def limited_server(tiny_checkpoint, tmp_path_factory):  # noqa: F811
    extra = [x for flag_value in LIMITS.items() for x in flag_value]
    log_dir = tmp_path_factory.mktemp("limited-server")
    server = Server(tiny_checkpoint, "cpu", True, 1, "auto", log_dir, extra)
    try:
        server.wait_ready(timeout=120)
        yield server
    finally:
        server.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=15)


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.monotonic() - start


@pytest.mark.slow
def test_connections_that_do_not_send_their_headers_in_time_are_closed(limited_server):
    idle = connect(limited_server)
    partial = connect(limited_server)
    partial.sendall(b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    kept_alive = connect(limited_server)
    kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    for sock in (idle, partial, kept_alive):
        data, elapsed = read_until_closed(sock)
        assert elapsed < 12, elapsed
        assert data == b"" or data.startswith(b"HTTP/1.1 200"), data  # kept-alive: its answer
    assert "no request headers within 2 s" in limited_server.log.read_text()


@pytest.mark.slow
def test_a_stalled_body_gets_408_and_is_closed(limited_server):
    sock = connect(limited_server)
    head = "POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    sock.sendall(head.encode() + b"Content-Length: 1000\r\n\r\n" + b'{"conversation": [')
    data, elapsed = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"request body not received within 2 s" in data and elapsed < 12
    assert "request body not received within 2 s" in limited_server.log.read_text()


@pytest.mark.parametrize("end", [b"", b"\r\n\r\n"])  # still coming, or complete in one read
def test_oversized_headers_get_431(limited_server, end):
    sock = connect(limited_server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8000 + end)
    data, _ = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431"), data
    assert b"request headers larger than 4096 bytes" in data


def test_idle_connections_make_room_for_new_clients(limited_server):
    idle = [connect(limited_server) for _ in range(30)]  # more than --max-connections 20
    try:
        r = httpx.get(f"{limited_server.url}/health", timeout=15)
        assert r.status_code == 200  # not uvicorn's 503 for a server at its connection limit
        assert "making room for a new connection" in limited_server.log.read_text()
        closed = 0
        for sock in idle:  # the oldest, closed to keep at most 20 open
            sock.settimeout(0.5)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:  # still open
                pass
            except OSError:
                closed += 1
        assert closed >= 10
    finally:
        for sock in idle:
            sock.close()


def test_limits_are_configurable_and_checked(tmp_path):
    config = ServiceConfig.from_args(
        ["--checkpoint", str(tmp_path), *(x for item in LIMITS.items() for x in item)], {}
    )
    assert (config.header_timeout_s, config.body_timeout_s, config.keep_alive_s) == (2, 2, 1)
    assert (config.max_connections, config.max_header_bytes) == (20, 4096)
    assert 1 <= default_max_connections() <= 1000
    for bad in ({"header_timeout_s": 0}, {"max_connections": -1}, {"max_header_bytes": 10}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ServiceConfig(**bad)


# --- admission by queued work ------------------------------------------------------------


def test_admission_bounds_the_queued_work_with_a_retry_after_of_the_backlog(
    tiny_checkpoint,  # noqa: F811
    monkeypatch,
):
    # 40 steps x (5 rows + 1.25 for a step's fixed part) = 250 units (5 draws: no reranking),
    # 6 s at the cost set below; the time limit is 60 s, so that a busy machine's slower test
    # steps do not make the queued requests late
    six_seconds = body(num_samples=5, max_length=40, rerank="none")
    # every request comes from the same client here: its refusals are not held for ignoring
    # the Retry-After (tests/test_service_surface.py tests that)
    monkeypatch.setattr(overload, "MAX_HOLD_S", 0)

    async def scenario(client, engine):
        engine.cost = DecodeCost(seconds_per_unit=6 / 250, step_overhead=1.25)
        gate = Gate(engine.model)
        running = asyncio.create_task(client.post("/respond", json=six_seconds))
        await asyncio.to_thread(gate.entered.wait, 10)
        # timeout_s 60: admitted work must fit in 30 s; 6 s is being decoded, 4 more fit
        queued = [asyncio.create_task(client.post("/respond", json=six_seconds)) for _ in range(4)]
        await wait_until(lambda: engine.queue_depth() == 4)
        assert engine.backlog_seconds() == pytest.approx(30.0)
        refused = await client.post("/respond", json=six_seconds)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "30"
        assert "about 30.0 s of decoding queued" in refused.json()["detail"]
        tiny = await client.post("/respond", json=body(num_samples=1, max_length=1))
        assert tiny.status_code == 503  # even 0.048 s more (2 units) does not fit
        gate.release.set()
        for r in await asyncio.gather(running, *queued):
            assert r.status_code == 200, r.text
        assert engine.backlog_seconds() == 0  # exactly: nothing left over to refuse with
        assert engine.cost.seconds_per_unit != 6 / 250  # now from the measured model calls
        engine.cost = DecodeCost(seconds_per_unit=1.0)  # 200 s: alone, admitted
        assert (await client.post("/respond", json=six_seconds)).status_code == 200
        return engine.stats

    stats = run_in_app(tiny_checkpoint, scenario, timeout_s=60, queue_size=256)
    assert stats.rejected == 2 and stats.requests == 6


def test_a_lone_request_is_admitted_whatever_its_cost(tiny_checkpoint):  # noqa: F811
    async def scenario(client, engine):
        engine.cost = DecodeCost(seconds_per_unit=1.0)  # 200 s for 200 units
        r = await client.post("/respond", json=body(num_samples=5, max_length=40))
        assert r.status_code == 200, r.text

    run_in_app(tiny_checkpoint, scenario, timeout_s=10)


def test_decode_cost_separates_a_steps_fixed_part_and_follows_the_measured_calls():
    # 0.1 ms a row-step, and a step's fixed part worth 7 rows
    cost = DecodeCost.from_timings((1, 10, 0.008), (8, 20, 0.030))
    assert cost.seconds_per_unit == pytest.approx(1e-4)
    assert cost.units(5, 40) == 480  # whole units
    assert DecodeCost.from_timings((1, 10, 0.02), (8, 20, 0.01)).step_overhead == 0  # noisy
    for _ in range(50):  # the machine got 3 times slower
        cost.observe(3e-4 * cost.units(5, 40), 5, 40)
    assert cost.seconds_per_unit == pytest.approx(3e-4, rel=0.01)
