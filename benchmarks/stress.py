"""Reliability suite: a real server under hostile input, overload and slow clients.

Starts ``python -m service`` (the shipped checkpoint by default) on a free loopback port with
``benchmarks/service_load.py``'s ``Server`` and runs, one after another:

* flood: malformed requests of every kind the API must refuse with a 4xx: lone UTF-16
  surrogates (in a text, a speaker, the responder, a key), bodies that are not UTF-8 under
  several content types, wrong types, NaN/Infinity, out-of-range and unrepresentable seeds,
  invalid and deeply nested JSON, bodies over and just under the size limit (declared and
  chunked), garbage at the HTTP level; with a few valid requests mixed in;
* overload: more clients than the queue admits, each sending the heaviest request the API
  allows (32 samples x 60 words) and honouring Retry-After;
* slow: many sockets that stall: idle, partial headers, partial bodies, headers and bodies
  dripped a byte at a time, idle keep-alive connections.

Per run it prints the requests sent, status counts, the 5xx count (must be 0), /health latency
during the run (a fresh connection every 100 ms) and the server's RSS before / peak / after.
Every run is bounded in requests and time and stops by itself; all traffic goes to 127.0.0.1.

    python benchmarks/stress.py            # full size, about 4 minutes
    python benchmarks/stress.py --quick    # smaller, about 1.5 minutes
    python benchmarks/stress.py --runs flood --flood-requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from benchmarks.service_load import CONVERSATION, Server, percentile  # noqa: E402
from service.config import DEFAULT_CHECKPOINT  # noqa: E402

HOST = "127.0.0.1"
JSON = {"Content-Type": "application/json"}
NOT_UTF8 = b'\xff\xfe\x80{"conversation": []}'
BODY_LIMIT = 256 * 1024  # the service's default --max-body-bytes


# --- the flood's cases ----------------------------------------------------------------------


@dataclass
class Case:
    """One kind of request: sent with aiohttp (``raw`` None) or as raw bytes on a new socket."""

    name: str
    body: bytes | Callable | None = None  # a callable: an async generator, sent chunked
    headers: dict | None = None  # None: application/json
    method: str = "POST"
    path: str = "/respond"
    no_content_type: bool = False
    raw: bytes | None = None


def _j(text: str) -> bytes:
    """A JSON body written by hand (so that it can hold what json.dumps would not write)."""
    return text.encode()


def _conv(turn: str) -> bytes:
    return _j('{"conversation": [' + turn + "]}")


def _chunked_over_limit():
    async def gen():
        yield b'{"conversation": [], "pad": "'
        for _ in range(BODY_LIMIT // 16384 + 2):
            yield b"x" * 16384
        yield b'"}'

    return gen()


def _raw(request_head: str, body: bytes = b"") -> bytes:
    return request_head.encode("latin-1") + b"\r\n\r\n" + body


def flood_cases() -> list[Case]:
    ok = {"conversation": CONVERSATION, "num_samples": 1, "max_length": 5}
    cases = [
        # lone UTF-16 surrogates (json.loads turns the escapes into unencodable str)
        Case("surrogate in text", _conv('{"speaker": "A", "text": "\\ud800"}')),
        Case("surrogate in text, low", _conv('{"speaker": "A", "text": "hi \\udfff there"}')),
        Case("surrogate in speaker", _conv('{"speaker": "\\ud800", "text": "hi"}')),
        Case("surrogate responder", _j('{"conversation": [], "responder": "\\udc00"}')),
        Case("surrogate key", _j('{"conversation": [], "\\ud800": 1}')),
        Case("surrogate key in turn", _conv('{"speaker": "A", "text": "hi", "\\ud83d": 2}')),
        Case("surrogate decoding", _j('{"conversation": [], "decoding": "\\ud800"}')),
        # bodies that are not UTF-8, under several content types
        Case("not utf-8, json", NOT_UTF8),
        Case("not utf-8, text/plain", NOT_UTF8, {"Content-Type": "text/plain"}),
        Case(
            "not utf-8, text/plain utf-8", NOT_UTF8, {"Content-Type": "text/plain; charset=utf-8"}
        ),
        Case("not utf-8, empty type", NOT_UTF8, {"Content-Type": ""}),
        Case("not utf-8, no type", NOT_UTF8, {}, no_content_type=True),
        Case("not utf-8, form", NOT_UTF8, {"Content-Type": "application/x-www-form-urlencoded"}),
        Case("not utf-8, octet-stream", NOT_UTF8, {"Content-Type": "application/octet-stream"}),
        Case("not utf-8, multipart", NOT_UTF8, {"Content-Type": "multipart/form-data"}),
        Case(
            "not utf-8, latin-1 json",
            NOT_UTF8,
            {"Content-Type": "application/json; charset=latin-1"},
        ),
        Case("not utf-8, problem+json", NOT_UTF8, {"Content-Type": "application/problem+json"}),
        Case("json as text/plain", json.dumps(ok).encode(), {"Content-Type": "text/plain"}),
        Case("json, no type", json.dumps(ok).encode(), {}, no_content_type=True),
        # wrong types and values
        Case("num_samples string", _j('{"conversation": [], "num_samples": "5"}')),
        Case("num_samples bool", _j('{"conversation": [], "num_samples": true}')),
        Case("num_samples 2.5", _j('{"conversation": [], "num_samples": 2.5}')),
        Case("num_samples 33", _j('{"conversation": [], "num_samples": 33}')),
        Case("max_length 0", _j('{"conversation": [], "max_length": 0}')),
        Case("num_samples 1e400", _j('{"conversation": [], "num_samples": 1e400}')),
        Case("conversation string", _j('{"conversation": "hello"}')),
        Case("conversation null", _j('{"conversation": null}')),
        Case("text number", _conv('{"speaker": "A", "text": 5}')),
        Case("turn list", _conv('["A", "hi"]')),
        Case("text too long", _conv('{"speaker": "A", "text": "' + "a" * 5000 + '"}')),
        Case("51 turns", _j(json.dumps({"conversation": [{"speaker": "A", "text": "x"}] * 51}))),
        Case("20k bad turns", _j('{"conversation": [' + ",".join(["1"] * 20000) + "]}")),
        Case("50 bad turns", _j(json.dumps({"conversation": [{"speaker": 5, "text": 5}] * 50}))),
        Case("decoding beam", _j('{"conversation": [], "decoding": "beam"}')),
        Case("extra field", _j('{"conversation": [], "mood": "happy"}')),
        Case(
            "NaN temperature", _j('{"conversation": [], "decoding": "sample", "temperature": NaN}')
        ),
        Case("Infinity samples", _j('{"conversation": [], "num_samples": Infinity}')),
        Case("-Infinity seed", _j('{"conversation": [], "seed": -Infinity}')),
        # seeds
        Case("seed -1", _j('{"conversation": [], "seed": -1}')),
        Case("seed 2^63", _j('{"conversation": [], "seed": 9223372036854775808}')),
        Case("seed 1e300", _j('{"conversation": [], "seed": 1e300}')),
        Case("seed string", _j('{"conversation": [], "seed": "42"}')),
        Case("seed 9.3e18", _j('{"conversation": [], "seed": 9.3e18}')),
        Case("seed 30 digits", _j('{"conversation": [], "seed": 123456789012345678901234567890}')),
        # invalid JSON
        Case("empty body", b""),
        Case("open brace", b"{"),
        Case("array", b"[]"),
        Case("null", b"null"),
        Case("trailing garbage", b'{"conversation": []} xyz'),
        Case("nul bytes", b'{"conversation": [\x00]}'),
        Case("nested 100k", b"[" * 100_000),
        Case("nested turn", b'{"conversation": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
        # sizes
        Case("over limit", b'{"conversation": [], "pad": "' + b"x" * BODY_LIMIT + b'"}'),
        Case("over limit, chunked", _chunked_over_limit),
        Case("under limit, huge echo", b'{"conversation": [], "pad": "' + b"x" * 250_000 + b'"}'),
        # other routes and methods
        Case("GET /respond", None, {}, method="GET"),
        Case("POST /nope", b"{}", path="/nope"),
        Case("bad path bytes", b"{}", path="/respond%ff%ED%A0%80"),
        Case("OPTIONS", None, {}, method="OPTIONS"),
        Case("GET /openapi.json", None, {}, method="GET", path="/openapi.json"),
        # garbage at the HTTP level, on a raw socket
        Case("bad content-length", raw=_raw(_head("Content-Length: abc"), b"{}")),
        Case("negative content-length", raw=_raw(_head("Content-Length: -1"), b"{}")),
        Case("CL and TE", raw=_raw(_head("Content-Length: 2", "Transfer-Encoding: chunked"))),
        Case("garbage line", raw=b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n"),
        Case("header 0xff bytes", raw=_raw(_head("Content-Length: 2", "X-Junk: \xff\xfe"), b"{}")),
        Case(
            "header 100 KB", raw=_raw(_head("Content-Length: 2", "X-Big: " + "a" * 100_000), b"{}")
        ),
        Case("HTTP/1.0 no host", raw=b"GET /health HTTP/1.0\r\n\r\n"),
        # valid requests, to see that they keep being answered
        Case("valid", json.dumps(ok).encode()),
        Case("valid, seed 2^63-1", json.dumps({**ok, "seed": 2**63 - 1}).encode()),
    ]
    return cases


def _head(*headers: str) -> str:
    lines = ["POST /respond HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"]
    return "\r\n".join([*lines, *headers, "Connection: close"])


# --- measuring: /health latency and the server's RSS ----------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Monitor:
    """While a run lasts: /health every ``interval`` s on a fresh connection, and the RSS."""

    url: str
    pid: int
    interval: float = 0.1
    health: list[float] = field(default_factory=list)  # seconds, answered 200
    health_failed: Counter = field(default_factory=Counter)
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    _tasks: list = field(default_factory=list)

    async def __aenter__(self):
        self.rss_before = self.rss_peak = rss_mb(self.pid)
        self._tasks = [asyncio.create_task(self._probe()), asyncio.create_task(self._rss())]
        return self

    async def __aexit__(self, *exc):
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def settle(self, seconds: float) -> None:
        """After the run: let the server shed what is left, then read the RSS."""
        await asyncio.sleep(seconds)
        self.rss_after = rss_mb(self.pid)

    async def _probe(self):
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            while True:
                start = time.perf_counter()
                try:
                    async with http.get(f"{self.url}/health") as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    status = type(e).__name__
                if status == 200:
                    self.health.append(time.perf_counter() - start)
                else:
                    self.health_failed[status] += 1
                await asyncio.sleep(self.interval)

    async def _rss(self):
        while True:
            self.rss_peak = max(self.rss_peak, rss_mb(self.pid))
            await asyncio.sleep(0.1)

    def report(self) -> str:
        h = self.health
        failed = sum(self.health_failed.values())
        lines = [
            f"/health during the run: {len(h) + failed} probes, p50 {percentile(h, 0.5) * 1e3:.1f}"
            f" ms, p99 {percentile(h, 0.99) * 1e3:.1f} ms, max {max(h, default=float('nan')) * 1e3:.1f}"
            f" ms; failed {failed}" + (f" {dict(self.health_failed)}" if failed else ""),
            f"server RSS: before {self.rss_before:.0f} MB, peak {self.rss_peak:.0f} MB, "
            f"after {self.rss_after:.0f} MB",
        ]
        return "\n".join(lines)


def status_line(statuses: Counter) -> str:
    def order(key):
        return (isinstance(key, str), str(key))

    return ", ".join(f"{k} x{statuses[k]}" for k in sorted(statuses, key=order))


def count_5xx(statuses: Counter) -> int:
    return sum(n for k, n in statuses.items() if isinstance(k, int) and k >= 500)


# --- the runs -------------------------------------------------------------------------------


async def send_raw(port: int, data: bytes, timeout: float = 10) -> tuple[int | str, int]:
    """Send ``data`` on a new socket; the status and size of the reply (read until EOF)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        return type(e).__name__, 0
    try:
        writer.write(data)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(1 << 20), timeout)
        if not reply:
            return "closed", 0
        parts = reply.split(b" ", 2)
        return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else "garbled"), len(reply)
    except (OSError, asyncio.TimeoutError) as e:
        return type(e).__name__, 0
    finally:
        writer.close()


async def send(http: aiohttp.ClientSession, method: str, url: str, body=None, **kwargs):
    """The status (or the exception's name), body and headers of the reply; ``body`` may be a
    callable that makes it (a generator, sent chunked)."""
    error = ""
    for _ in range(2):  # once more if a kept-alive connection was closed under the request
        data = body() if callable(body) else body
        try:
            async with http.request(method, url, data=data, **kwargs) as r:
                return r.status, await r.read(), r.headers
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
            error = type(e).__name__
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return type(e).__name__, b"", {}
    return error, b"", {}


async def send_case(http: aiohttp.ClientSession, server: Server, case: Case):
    """The status (or the exception's name) and the size of the reply."""
    if case.raw is not None:
        return await send_raw(server.port, case.raw)
    status, reply, _ = await send(
        http,
        case.method,
        server.url + case.path,
        case.body,
        headers=JSON if case.headers is None else case.headers,
        skip_auto_headers=("Content-Type",) if case.no_content_type else (),
    )
    return status, len(reply)


async def flood(server: Server, requests: int, concurrency: int, budget: float) -> int:
    cases = flood_cases()
    by_case: dict[str, Counter] = {c.name: Counter() for c in cases}
    largest = (0, "")
    sent = 0
    deadline = time.perf_counter() + budget

    async def worker(http):
        nonlocal sent, largest
        while sent < requests and time.perf_counter() < deadline:
            case = cases[sent % len(cases)]
            sent += 1
            status, size = await send_case(http, server, case)
            by_case[case.name][status] += 1
            largest = max(largest, (size, case.name))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    statuses = sum(by_case.values(), Counter())
    print(
        f"sent {sent} requests ({len(cases)} kinds) in {elapsed:.1f} s from {concurrency} clients"
    )
    print(f"status: {status_line(statuses)}")
    print(f"5xx: {count_5xx(statuses)}")
    print(f"largest response: {largest[0]:,} bytes ({largest[1]})")
    print("by kind (status counts):")
    for name, counts in by_case.items():
        flag = "  <-- 5xx" if count_5xx(counts) else ""
        print(f"  {name:<28} {status_line(counts)}{flag}")
    return count_5xx(statuses)


async def overload(server: Server, clients: int, seconds: float) -> int:
    payload = {
        "conversation": CONVERSATION,
        "num_samples": 32,
        "max_length": 60,
        "decoding": "sample",
    }
    body = json.dumps(payload).encode()
    statuses: Counter = Counter()
    answered: list[float] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(http):
        nonlocal sent
        while time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            status, _, headers = await send(
                http, "POST", f"{server.url}/respond", body, headers=JSON
            )
            retry_after = headers.get("Retry-After")
            statuses[status] += 1
            if status == 200:
                answered.append(time.perf_counter() - start)
            if retry_after is not None:  # as a well-behaved client does
                wait = min(float(retry_after), deadline - time.perf_counter())
                await asyncio.sleep(max(0.0, wait))

    before = engine_stats(server.url)
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    after = engine_stats(server.url)
    print(
        f"sent {sent} requests (32 samples x 60 words, sampled) in {elapsed:.1f} s from "
        f"{clients} clients, each waiting Retry-After after a 503"
    )
    print(f"status: {status_line(statuses)}")
    print(
        f"5xx other than 503 (overloaded, with Retry-After): {count_5xx(statuses) - statuses[503]}"
    )
    print(
        f"answered (200): {len(answered)}, latency p50 {percentile(answered, 0.5):.2f} s, "
        f"p99 {percentile(answered, 0.99):.2f} s, {len(answered) / elapsed:.1f}/s"
    )
    if before and after:
        diff = {k: after[k] - before[k] for k in ("requests", "rejected", "timeouts", "batches")}
        print(
            f"engine: answered {diff['requests']}, refused {diff['rejected']}, timed out "
            f"{diff['timeouts']}, model calls {diff['batches']}"
        )
    return count_5xx(statuses) - statuses[503]


def engine_stats(url: str) -> dict | None:
    try:
        return httpx.get(f"{url}/info", timeout=30).json()["engine"]["stats"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


SLOW_KINDS = ("idle", "partial headers", "partial body", "drip headers", "drip body", "keep-alive")


@dataclass
class SlowSocket:
    kind: str
    connected: bool = False
    status: int | str | None = None  # of a reply, if the server sent one
    closed_after: float | None = None  # seconds until the server closed it


async def slow_socket(port: int, sock: SlowSocket, hold_until: float) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    except (OSError, asyncio.TimeoutError) as e:
        sock.status = type(e).__name__
        return
    sock.connected = True
    opened = time.perf_counter()
    body_head = _head("Content-Length: 250000").replace(
        "Connection: close", "Connection: keep-alive"
    )
    drip = drip_task = None
    try:
        if sock.kind == "partial headers":
            writer.write(b"POST /respond HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        elif sock.kind == "partial body":
            writer.write(_raw(body_head, b'{"conversation": [], "pad": "' + b"x" * 200_000))
        elif sock.kind == "drip headers":
            writer.write(b"POST /respond HTTP/1.1\r\n")
            drip = b"X-Slow: " + b"a" * 10_000
        elif sock.kind == "drip body":
            writer.write(_raw(body_head, b'{"conversation": [], "pad": "'))
            drip = b"x" * 250_000
        elif sock.kind == "keep-alive":
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await asyncio.wait_for(writer.drain(), max(0.1, hold_until - time.perf_counter()))

        async def dripping():
            with contextlib.suppress(OSError):  # the server closed it
                for i in range(len(drip)):
                    await asyncio.sleep(2)
                    writer.write(drip[i : i + 1])
                    await writer.drain()

        if drip:
            drip_task = asyncio.create_task(dripping())
        while True:
            remaining = hold_until - time.perf_counter()
            if remaining <= 0:
                break
            data = await asyncio.wait_for(reader.read(65536), remaining)
            if not data:
                sock.closed_after = time.perf_counter() - opened
                break
            if data.startswith(b"HTTP/1.") and sock.status is None:
                sock.status = int(data.split(b" ", 2)[1])
    except asyncio.TimeoutError:
        pass
    except OSError:  # reset by the server
        sock.closed_after = time.perf_counter() - opened
    finally:
        if drip_task:
            drip_task.cancel()
        writer.close()


async def slow(server: Server, sockets: int, hold: float) -> int:
    hold_until = time.perf_counter() + hold
    socks = [SlowSocket(SLOW_KINDS[i % len(SLOW_KINDS)]) for i in range(sockets)]
    opening = asyncio.Semaphore(100)

    async def one(sock):
        async with opening:  # open them quickly, not all in the same instant
            await asyncio.sleep(0)
        await slow_socket(server.port, sock, hold_until)

    await asyncio.gather(*(one(s) for s in socks))
    connected = sum(s.connected for s in socks)
    closed = [s.closed_after for s in socks if s.closed_after is not None]
    statuses = Counter(s.status for s in socks if s.status is not None)
    print(f"opened {sockets} stalling sockets ({connected} connected), held for up to {hold:g} s")
    print(
        f"closed by the server: {len(closed)} (after p50 {percentile(closed, 0.5):.1f} s, max "
        f"{max(closed, default=float('nan')):.1f} s); still open at the end: "
        f"{connected - len(closed)}"
    )
    print(f"replies: {status_line(statuses) or 'none'}")
    print(f"5xx: {count_5xx(statuses)}")
    print("by kind: sockets / closed by the server / replies")
    for kind in SLOW_KINDS:
        mine = [s for s in socks if s.kind == kind]
        replies = Counter(s.status for s in mine if s.status is not None)
        n_closed = sum(s.closed_after is not None for s in mine)
        print(f"  {kind:<16} {len(mine):>5} {n_closed:>6}   {status_line(replies) or '-'}")
    return count_5xx(statuses)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help=f"default: {DEFAULT_CHECKPOINT}")
    p.add_argument("--quick", action="store_true", help="smaller runs (about 1.5 minutes)")
    p.add_argument("--runs", nargs="+", choices=("flood", "overload", "slow"))
    p.add_argument("--flood-requests", type=int, help="default 10000 (--quick: 2000)")
    p.add_argument("--flood-clients", type=int, default=32)
    p.add_argument("--overload-clients", type=int, help="default 600 (--quick: 200)")
    p.add_argument("--overload-seconds", type=float, help="default 30 (--quick: 15)")
    p.add_argument("--slow-sockets", type=int, help="default 2000 (--quick: 500)")
    p.add_argument("--slow-hold", type=float, help="seconds; default 35 (--quick: 25)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="the server's (default 10)")
    p.add_argument("--torch-threads", type=int, default=1, help="the server's (default 1)")
    p.add_argument("--server-args", default="", help="more server options")
    p.add_argument(
        "--check", action="store_true", help="exit 1 on a 5xx (but overload's 503s) or a crash"
    )
    args = p.parse_args(argv)

    def pick(value, full, quick):
        return value if value is not None else (quick if args.quick else full)

    flood_requests = pick(args.flood_requests, 10_000, 2_000)
    overload_clients = pick(args.overload_clients, 600, 200)
    overload_seconds = pick(args.overload_seconds, 30.0, 15.0)
    slow_sockets = pick(args.slow_sockets, 2_000, 500)
    slow_hold = pick(args.slow_hold, 35.0, 25.0)
    checkpoint = args.checkpoint or REPO / DEFAULT_CHECKPOINT
    if not checkpoint.is_dir():
        p.error(f"no checkpoint at {checkpoint}; pass --checkpoint DIR")
    extra = ["--timeout-s", str(args.timeout_s), *shlex.split(args.server_args)]

    failures = 0
    with tempfile.TemporaryDirectory(prefix="bncvae-stress-") as tmp:
        server = Server(checkpoint, "cpu", True, args.torch_threads, "auto", Path(tmp), extra)
        try:
            server.wait_ready()
            print(
                f"server: python -m service --checkpoint {checkpoint.name} --torch-threads "
                f"{args.torch_threads} {' '.join(extra)} on {server.url}; {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            runs = {
                "flood": lambda: flood(server, flood_requests, args.flood_clients, 300),
                "overload": lambda: overload(server, overload_clients, overload_seconds),
                "slow": lambda: slow(server, slow_sockets, slow_hold),
            }
            for name in args.runs or runs:
                print(f"\n== {name} ==")

                async def run(name=name):
                    async with Monitor(server.url, server.proc.pid) as monitor:
                        bad = await runs[name]()
                    await monitor.settle(3.0)
                    print(monitor.report())
                    return bad

                failures += asyncio.run(run())
                alive = server.proc.poll() is None
                print(f"server alive after the run: {'yes' if alive else 'NO'}")
                if not alive:
                    failures += 1
                    break
        finally:
            server.stop()
            log = server.log.read_text(errors="replace").splitlines()
            warnings = [line for line in log if re.search(r"\b(WARNING|ERROR)\b", line)]
            print(f"\nserver log: {len(log)} lines, {len(warnings)} warnings/errors; the last:")
            for line in warnings[-5:]:
                print(f"  {line[:160]}")
    return 1 if failures and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
