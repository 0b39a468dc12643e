"""The service's surface under hostile clients: the Host check and security headers, /info,
refusals before the body under overload, work dropped for clients that left, and the probes'
connection reserve."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from model.config import ModelConfig
from model.cvae import DialogCVAE
from model.vocab import Vocabulary
from service.app import create_app
from service.config import ServiceConfig, default_allowed_hosts
from service.engine import DecodeCost, EngineOverloaded, GenerationRequest, InferenceEngine
from service.security import host_allowed
from tests.servers import running_service

SENTENCES = ["hello there", "how are you", "i am fine thanks", "what about you", "good bye"]
CONVERSATION = [{"speaker": "A", "text": "hello there"}, {"speaker": "B", "text": "how are you"}]


def tiny_model() -> tuple[DialogCVAE, Vocabulary]:
    vocab = Vocabulary.build([s.split() for s in SENTENCES])
    torch.manual_seed(0)
    return DialogCVAE(ModelConfig.preset("tiny", variant="bn-cvae", vocab_size=len(vocab))), vocab


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from model.checkpoint import save_pretrained

    model, vocab = tiny_model()
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(model, vocab, directory, metadata={"note": "for tests"})
    return directory


def engine_with(metadata=None, **config) -> InferenceEngine:
    model, vocab = tiny_model()
    config = ServiceConfig(torch_threads=1, decode_dtype="float32", **config)
    return InferenceEngine(lambda: (model, vocab), config, metadata=metadata)


def wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


# --- /info ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [[1, 2], "a string", 7, None, {"loss": float("nan"), "nested": {"x": [float("inf")]}}],
)
def test_info_answers_whatever_the_checkpoint_metadata(metadata):
    with TestClient(create_app(engine_with(metadata, info_detail="full"))) as c:
        wait_ready(c)
        r = c.get("/info")
    assert r.status_code == 200, r.text
    shown = r.json()["metadata"]
    if isinstance(metadata, dict):
        assert shown == {"loss": "nan", "nested": {"x": ["inf"]}}
    else:
        assert shown == {}


def test_info_shows_no_absolute_path_and_engine_only_in_full_detail():
    metadata = {
        "step": 1500,
        "init_from": "/home/someone/runs/bn-cvae/last",
        "windows": "C:\\runs\\best",
        "train_config": {"out": "/srv/runs/x", "data": "runs/data/switchboard", "lr": 3e-4},
    }
    with TestClient(create_app(engine_with(metadata))) as c:
        wait_ready(c)
        basic = c.get("/info").json()
    assert basic["metadata"] == {"step": 1500, "init_from": "last", "windows": "best"}
    assert basic["engine"] is None and basic["checkpoint"] is None  # in-memory: no checkpoint
    with TestClient(create_app(engine_with(metadata, info_detail="full"))) as c:
        wait_ready(c)
        full = c.get("/info").json()
    assert full["metadata"]["train_config"] == {
        "out": "x",
        "data": "runs/data/switchboard",  # relative: the training's own reference, kept
        "lr": 3e-4,
    }
    assert set(full["engine"]["stats"]) >= {"abandoned_queued", "abandoned_decoding", "shed"}


# --- Host check and security headers ------------------------------------------------------


def test_host_patterns():
    loopback = ("localhost", "127.0.0.1", "::1")
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST."):
        assert host_allowed(host, loopback), host
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "", "127.0.0.2"):
        assert not host_allowed(host, loopback), host
    assert host_allowed("api.example.com", ("*.example.com",))
    assert not host_allowed("example.com.evil", ("*.example.com",))
    assert host_allowed("anything:1", ("*",))


def test_allowed_hosts_default_follows_the_bound_address():
    assert default_allowed_hosts("127.0.0.1") == "localhost,127.0.0.1,::1"
    assert default_allowed_hosts("::1") == "localhost,127.0.0.1,::1"
    assert default_allowed_hosts("localhost") == "localhost,127.0.0.1,::1"
    assert default_allowed_hosts("0.0.0.0") == "*"
    assert default_allowed_hosts("10.1.2.3") == "*"
    given = ServiceConfig.from_args(["--host", "0.0.0.0", "--allowed-hosts", "api.example.com"])
    assert given.host_patterns() == ("api.example.com",)
    assert (
        ServiceConfig.from_args(["--host", "127.0.0.1"]).allowed_hosts == "localhost,127.0.0.1,::1"
    )


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    options = ("--torch-threads", "1", "--max-connections", "20", "--body-timeout-s", "60")
    with running_service(tiny_checkpoint, log, *options) as base:
        yield base


@pytest.mark.slow
def test_a_foreign_host_gets_400_and_the_loopback_names_are_served(server):
    port = server.rsplit(":", 1)[1]
    body = {"conversation": CONVERSATION, "num_samples": 1, "max_length": 3}
    for host in ("evil.example", f"evil.example:{port}", "attacker.localhost.example"):
        r = httpx.post(f"{server}/respond", json=body, headers={"Host": host}, timeout=30)
        assert r.status_code == 400, host
        assert "not served here" in r.json()["detail"]
        assert httpx.get(f"{server}/", headers={"Host": host}).status_code == 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        r = httpx.post(f"{server}/respond", json=body, headers={"Host": host}, timeout=30)
        assert r.status_code == 200, (host, r.text)


@pytest.mark.slow
def test_pages_carry_the_security_headers(server):
    for path in ("/", "/docs", "/redoc"):
        r = httpx.get(f"{server}{path}")
        assert r.status_code == 200
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        policy = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy
    assert "'unsafe-inline'" not in httpx.get(f"{server}/").headers["content-security-policy"]
    r = httpx.post(f"{server}/respond", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.headers["x-content-type-options"] == "nosniff"


# --- probes under connection exhaustion -------------------------------------------------


@pytest.mark.slow
def test_probes_are_answered_while_stalled_bodies_fill_the_connections(server):
    """60 connections (the cap is 20) each stop half-way through a request body; /health and
    /ready on new connections are still answered 200 (how fast: benchmarks/stress.py), and the
    server keeps at most its cap open (it closes the oldest stalled ones)."""
    host, port = "127.0.0.1", int(server.rsplit(":", 1)[1])
    head = (
        f"POST /respond HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100000\r\n\r\n"
    ).encode()
    stalled = []
    for _ in range(60):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(head + b'{"conversation": [')
        stalled.append(s)
        time.sleep(0.01)
    try:
        for _ in range(10):
            for path in ("/health", "/ready"):
                assert httpx.get(f"{server}{path}", timeout=30).status_code == 200
        r = httpx.post(
            f"{server}/respond",
            json={"conversation": CONVERSATION, "num_samples": 1, "max_length": 3},
            timeout=30,
        )
        assert r.status_code == 200, r.text  # a real request makes room too
        time.sleep(0.5)
        open_ = 0
        for s in stalled:
            s.setblocking(False)
            try:
                open_ += s.recv(1) != b""
            except BlockingIOError:  # nothing to read: still open
                open_ += 1
            except OSError:
                pass
        assert open_ <= 20
    finally:
        for s in stalled:
            s.close()


# --- overload: refusals before the body, late requests shed ---------------------------------


def http_scope(path: str, body: bytes, port: int = 1) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", port),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def test_an_overloaded_engine_refuses_without_parsing_the_body():
    async def main():
        engine = engine_with()
        app = create_app(engine)
        await engine.start()
        await engine.wait_ready()
        try:
            assert engine.refusal() is None  # idle
            engine.cost = DecodeCost(seconds_per_unit=1.0)
            engine._backlog_units = 15  # 15 s queued: half the 30 s limit, no room for more
            assert engine.refusal().retry_after == 15
            sent = []

            async def receive():  # a body no route would accept: it is not parsed
                return {"type": "http.request", "body": b"\xff not json", "more_body": False}

            async def send(message):
                sent.append(message)

            for port, path in enumerate(("/respond", "/v1/chat/completions")):
                await app(http_scope(path, b"\xff not json", port), receive, send)
            starts = [m for m in sent if m["type"] == "http.response.start"]
            assert [m["status"] for m in starts] == [503, 503]
            assert all((b"retry-after", b"15") in m["headers"] for m in starts)
            assert engine.stats.rejected == 2
        finally:
            engine._backlog_units = 0
            await engine.stop()

    asyncio.run(asyncio.wait_for(main(), 120))  # a wait above that never ends fails, not hangs


def test_refusals_are_held_for_clients_that_ignore_retry_after(monkeypatch):
    from service import overload

    held = []

    async def sleep(seconds):
        held.append(seconds)

    monkeypatch.setattr(overload.asyncio, "sleep", sleep)
    clock = [1000.0]
    monkeypatch.setattr(overload.time, "monotonic", lambda: clock[0])

    async def refusing_app(scope, receive, send):
        headers = [(b"retry-after", b"3")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    pacing = overload.RefusalPacingMiddleware(refusing_app)

    async def request(port: int):
        async def send(message):
            pass

        await pacing(http_scope("/respond", b"{}", port), None, send)

    async def main():
        await request(1)  # first refusal: at once
        clock[0] += 3.0  # waited as told
        await request(1)
        await request(2)  # another client: at once
        clock[0] += 0.1
        await request(2)  # asked again 0.1 s after being told to wait 3 s: held 10 s
        for port in range(100, 130):  # past 20 refusals a second, every one is held
            await request(port)

    asyncio.run(main())
    # client 2's second request, then the 10 refusals past 20 in that second
    assert held == [10] + [3] * 10


def test_a_request_its_model_call_would_answer_late_is_shed_with_503():
    async def main():
        engine = engine_with(timeout_s=10)
        loop = asyncio.get_running_loop()
        engine.cost = DecodeCost(seconds_per_unit=1.0)  # 1 s per unit: 2 s for the call of two
        now = time.perf_counter()
        from service.engine import _Pending

        request = GenerationRequest(turns=[], num_samples=1, max_length=1)
        old = _Pending(request, "A", loop.create_future(), enqueued=now - 9, units=1)
        new = _Pending(request, "A", loop.create_future(), enqueued=now, units=1)
        engine._backlog_units = 2
        kept = engine._shed_late([new, old])
        assert kept == [new] and engine.stats.shed == 1 and engine._backlog_units == 1
        with pytest.raises(EngineOverloaded):
            old.future.result()
        assert engine._shed_late([old]) == [old]  # alone: decoded as fast as it can be

    asyncio.run(main())


# --- clients that leave -----------------------------------------------------------------


class Gate:
    """Holds the model's decoding in the worker thread until released."""

    def __init__(self, model):
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls = []
        # the engine's model calls draw through sample_given_context (model/reranking.py)
        original = model.sample_given_context
        names = inspect.signature(original).parameters

        def held(*args, **kwargs):
            self.calls.append({**dict(zip(names, args, strict=False)), **kwargs})
            self.entered.set()
            assert self.release.wait(30)
            return original(*args, **kwargs)

        model.sample_given_context = held


class Client:
    """An ASGI client of ``app`` that sends one request body and can then disconnect."""

    def __init__(self, app, path: str, payload: dict):
        self.body = json.dumps(payload).encode()
        self.left = asyncio.Event()
        self.status = None
        self.task = asyncio.create_task(app(http_scope(path, self.body), self.receive, self.send))

    async def receive(self):
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]


def test_requests_whose_clients_left_are_not_decoded_or_stop_decoding():
    async def main():
        engine = engine_with(info_detail="full")
        app = create_app(engine)
        await engine.start()
        await engine.wait_ready()
        try:
            engine.cost = DecodeCost(0.0)  # admit everything: not what is tested here
            gate = Gate(engine.model)
            payload = {"conversation": CONVERSATION, "num_samples": 2, "max_length": 20}
            decoding = Client(app, "/respond", payload)
            await asyncio.to_thread(gate.entered.wait, 10)
            chat = {
                "model": "in-memory",
                "messages": [{"role": "user", "content": "hello there"}],
                "n": 3,
                "stream": True,
            }
            queued = [Client(app, "/respond", payload), Client(app, "/v1/chat/completions", chat)]
            while engine.queue_depth() < 2:
                await asyncio.sleep(0.005)
            for client in (decoding, *queued):
                client.left.set()
            await asyncio.gather(*(c.task for c in (decoding, *queued)))
            assert engine.stats.abandoned_queued == 2 and engine.stats.abandoned_decoding == 1
            gate.release.set()
            while engine.stats.batches < 1:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.1)
            # the held call stopped at its first step; the queued requests had no model call
            assert len(gate.calls) == 1 and gate.calls[0]["stop"]() is True
            assert engine.stats.stopped_calls == 1 and engine.stats.requests == 0
            # and the engine serves on
            answered = Client(app, "/respond", payload)
            await answered.task
            assert answered.status == 200 and engine.stats.requests == 1
        finally:
            await engine.stop()

    asyncio.run(asyncio.wait_for(main(), 120))  # a wait above that never ends fails, not hangs
