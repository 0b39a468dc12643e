"""Reliability suite: a real server under hostile input, overload and slow clients.

Starts ``python -m service`` (the shipped checkpoint by default) on a free loopback port with
``benchmarks/service_load.py``'s ``Server`` and runs, one after another:

* flood: malformed requests of every kind the API must refuse with a 4xx: lone UTF-16
  surrogates (in a text, a speaker, the responder, a key), bodies that are not UTF-8 under
  several content types, wrong types, NaN/Infinity, out-of-range and unrepresentable seeds,
  invalid and deeply nested JSON, bodies over and just under the size limit (declared and
  chunked), garbage at the HTTP level; with a few valid requests mixed in;
* undisturbed: 4 clients sending the heaviest request the API allows (32 samples x 60 words):
  the throughput the floods are compared with;
* overload / rude: 600 clients sending it, honouring Retry-After / retrying at once after a 503;
* mix: 600 clients, a third each sending 1, 5 and 32 samples; stream: streamed chat
  completions, n=32; abandon: 40 streamed requests whose clients leave after 0.5 s;
* slow: many sockets that stall: idle, partial headers, partial bodies, headers and bodies
  dripped a byte at a time, idle keep-alive connections; exhaust: more connections than the
  server's open-file limit, each stalled in a request body.

Per run it prints the requests sent, status counts, goodput (answered/s), 504s and other 5xx,
the engine's counters, /health and /ready latency during the run (a fresh connection every
100 ms, from a process of its own) and the server's RSS and CPU time; --check exits 1 when a target is missed (summary).
Every run is bounded in requests and time and stops by itself; all traffic goes to 127.0.0.1.

    python benchmarks/stress.py --check    # full size, about 6 minutes
    python benchmarks/stress.py --quick    # smaller, about 4 minutes
    python benchmarks/stress.py --runs flood --flood-requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
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
from typing import Any

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


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Probes:
    """One probe path's results: (status or exception name, seconds, sent at: seconds since
    the prober started) of each probe."""

    results: list[tuple[int | str, float, float]] = field(default_factory=list)

    def ok_within(self, seconds: float) -> int:
        """Probes answered 200 within ``seconds``."""
        return sum(s == 200 and t <= seconds for s, t, _ in self.results)

    def answered_within(self, seconds: float) -> int:
        """Probes answered (any HTTP status) within ``seconds``."""
        return sum(isinstance(s, int) and t <= seconds for s, t, _ in self.results)

    def line(self, path: str) -> str:
        n = len(self.results)
        times = [t for s, t, _ in self.results if isinstance(s, int)]
        statuses = Counter(s for s, _, _ in self.results)
        # When the slowest answered probe was sent tells which phase of a run stalled the server.
        answered = [r for r in self.results if isinstance(r[0], int)]
        slowest = max(answered, key=lambda r: r[1], default=None)
        when = f" (sent {slowest[2]:.1f} s into the run)" if slowest else ""
        return (
            f"{path} during the run: {n} probes, 200 within 1 s: {self.ok_within(1.0)}/{n}, "
            f"answered within 1 s: {self.answered_within(1.0)}/{n} ({status_line(statuses)}); "
            f"p50 {percentile(times, 0.5) * 1e3:.1f} ms, p99 {percentile(times, 0.99) * 1e3:.1f}"
            f" ms, max {max(times, default=float('nan')) * 1e3:.1f} ms{when}"
        )


@dataclass
class Monitor:
    """While a run lasts: /health and /ready every ``interval`` s, each on a fresh connection as
    a Kubernetes probe makes it (1 s timeout counted, 5 s allowed), and the server's RSS.

    The probes are made by a process of their own, as a kubelet's are: probing from this
    process's event loop, which also drives the run's thousands of sockets, timed that loop's
    own lag (a probe "took" 1.3 s while the run's client handled a thousand closed sockets)."""

    url: str
    pid: int
    interval: float = 0.1
    probes: dict[str, Probes] = field(
        default_factory=lambda: {"/health": Probes(), "/ready": Probes()}
    )
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds during the run
    wall: float = 0.0
    _tasks: list = field(default_factory=list)
    _prober: multiprocessing.process.BaseProcess | None = None
    _stop: Any = None
    _results: Any = None

    async def __aenter__(self):
        self.rss_before = self.rss_peak = rss_mb(self.pid)
        self.cpu, self.wall = -cpu_seconds(self.pid), -time.perf_counter()
        spawn = multiprocessing.get_context("spawn")
        self._stop, started = spawn.Event(), spawn.Event()
        self._results, sender = spawn.Pipe(duplex=False)
        self._prober = spawn.Process(
            target=probe_until_stopped,
            args=(self.url, list(self.probes), self.interval, started, self._stop, sender),
            daemon=True,
        )
        self._prober.start()
        await asyncio.to_thread(started.wait, 60)
        self._tasks = [asyncio.create_task(self._rss())]
        return self

    async def __aexit__(self, *exc):
        self.cpu += cpu_seconds(self.pid)
        self.wall += time.perf_counter()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._stop.set()
        for path, results in (await asyncio.to_thread(self._results.recv)).items():
            self.probes[path].results.extend(results)
        assert self._prober is not None
        await asyncio.to_thread(self._prober.join, 10)

    async def settle(self, seconds: float) -> None:
        """After the run: let the server shed what is left, then read the RSS."""
        await asyncio.sleep(seconds)
        self.rss_after = rss_mb(self.pid)

    async def _rss(self):
        while True:
            self.rss_peak = max(self.rss_peak, rss_mb(self.pid))
            await asyncio.sleep(0.1)

    def report(self) -> str:
        lines = [probes.line(path) for path, probes in self.probes.items()]
        lines.append(
            f"server RSS: before {self.rss_before:.0f} MB, peak {self.rss_peak:.0f} MB, "
            f"after {self.rss_after:.0f} MB; CPU {self.cpu:.1f} s in {self.wall:.1f} s"
        )
        return "\n".join(lines)


def probe_until_stopped(url: str, paths: list[str], interval: float, started, stop, sender):
    """The prober process: GET each of ``paths`` every ``interval`` s on a fresh connection
    until ``stop`` is set; then sends {path: [(status or exception name, seconds, sent at), ...]}
    (sent at: seconds since the probing started)."""

    async def probe(http: aiohttp.ClientSession, path: str, results: list, began: float) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                async with http.get(f"{url}{path}") as r:
                    await r.read()
                    status: int | str = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                status = type(e).__name__
            results.append((status, time.perf_counter() - start, start - began))
            await asyncio.sleep(interval)

    async def run() -> dict[str, list]:
        results: dict[str, list] = {path: [] for path in paths}
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            started.set()
            began = time.perf_counter()
            await asyncio.gather(*(probe(http, path, results[path], began) for path in paths))
        return results

    sender.send(asyncio.run(run()))


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


async def flood(server: Server, requests: int, concurrency: int, budget: float) -> Outcome:
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
    valid = [by_case[c.name] for c in cases if c.name.startswith("valid")]
    answered, refused = sum(v[200] for v in valid), sum(v[503] for v in valid)
    print(f"valid requests: {answered} answered, {refused} refused as overloaded (503)")
    # A 503 (with Retry-After: an overloaded engine's, or, when it would refuse anything, its
    # refusal of a request before parsing it) is a correct answer; any other 5xx is not.
    out = Outcome()
    other = count_5xx(statuses) - statuses[503]
    out.expect(other == 0, f"{other} x 5xx other than 503")
    return out


HEAVY = {"conversation": CONVERSATION, "num_samples": 32, "max_length": 60, "decoding": "sample"}


@dataclass
class Load:
    """What the clients of a load run saw."""

    sent: int = 0
    elapsed: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    answered: list[float] = field(default_factory=list)  # seconds, per 200 with a whole answer
    first_byte: list[float] = field(default_factory=list)  # seconds, streamed answers
    no_retry_after: int = 0  # 503s without a Retry-After

    @property
    def goodput(self) -> float:
        return len(self.answered) / self.elapsed if self.elapsed else 0.0

    def other_5xx(self) -> int:
        return count_5xx(self.statuses) - self.statuses[503]


def chat_payload(model: str, n: int = 32, max_tokens: int = 60, stream: bool = True) -> dict:
    """A chat completion of the stress conversation: ``n`` choices, sampled at temperature 1."""
    messages = [
        {"role": "user" if t["speaker"] == "A" else "assistant", "content": t["text"]}
        for t in CONVERSATION
    ]
    return {
        "model": model,
        "messages": messages,
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "stream": stream,
    }


async def post_one(http, url: str, body: bytes, stream: bool, load: Load):
    """One request; its status (or exception name) and Retry-After; a 200 counts as answered
    only with its whole answer (streamed: up to ``data: [DONE]``). Sent again, once, when a
    kept-alive connection turns out closed (the server's keep-alive timeout), as clients do."""
    start = time.perf_counter()
    for attempt in range(2):
        try:
            async with http.post(url, data=body, headers=JSON) as r:
                status, retry_after = r.status, r.headers.get("Retry-After")
                if status == 200 and stream:
                    first, data = None, b""
                    async for chunk in r.content.iter_any():
                        first = first or time.perf_counter() - start
                        data += chunk
                    if data.rstrip().endswith(b"data: [DONE]"):
                        load.first_byte.append(first)
                    else:
                        status = "torn stream"
                else:
                    await r.read()
            break
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
            status, retry_after = type(e).__name__, None
            if attempt == 0:
                continue
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status, retry_after = type(e).__name__, None
            break
    load.statuses[status] += 1
    if status == 200:
        load.answered.append(time.perf_counter() - start)
    if status == 503 and retry_after is None:
        load.no_retry_after += 1
    return status, retry_after


async def load_run(
    url: str,
    bodies: list[bytes],
    clients: int,
    seconds: float,
    honour_retry_after: bool,
    stream: bool = False,
) -> Load:
    """``clients`` clients, client i sending ``bodies[i % len(bodies)]`` again and again for
    ``seconds``; after a 503 each waits Retry-After (``honour_retry_after``) or retries at once."""
    load = Load()
    deadline = time.perf_counter() + seconds

    async def client(http, body):
        while time.perf_counter() < deadline:
            load.sent += 1
            status, retry_after = await post_one(http, url, body, stream, load)
            if retry_after is not None and honour_retry_after:
                wait = min(float(retry_after), deadline - time.perf_counter())
                await asyncio.sleep(max(0.0, wait))
            elif not isinstance(status, int):  # refused at the socket: not a busy loop
                await asyncio.sleep(0.01)

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(client(http, bodies[i % len(bodies)]) for i in range(clients)))
    load.elapsed = time.perf_counter() - start
    return load


def print_load(load: Load, what: str, engine: dict | None) -> None:
    print(f"sent {load.sent} requests ({what}) in {load.elapsed:.1f} s")
    print(f"status: {status_line(load.statuses)}")
    print(
        f"answered (200): {len(load.answered)}, goodput {load.goodput:.2f} answered/s, latency "
        f"p50 {percentile(load.answered, 0.5):.2f} s, p99 {percentile(load.answered, 0.99):.2f} s"
    )
    if load.first_byte:
        print(
            f"streamed: first byte p50 {percentile(load.first_byte, 0.5):.2f} s, "
            f"p99 {percentile(load.first_byte, 0.99):.2f} s"
        )
    print(
        f"504: {load.statuses[504]}; 5xx other than 503: {load.other_5xx()}; "
        f"503 without Retry-After: {load.no_retry_after}"
    )
    if engine:
        print("engine: " + ", ".join(f"{k} {v}" for k, v in engine.items()))


ENGINE_COUNTERS = (
    "requests",
    "rejected",
    "timeouts",
    "batches",
    "batched_contexts",
    "abandoned_queued",
    "abandoned_decoding",
    "stopped_calls",
    "shed",
    "model_seconds",
)


def engine_diff(before: dict | None, after: dict | None) -> dict | None:
    """The engine's counters over a run (those its /info shows)."""
    if not before or not after:
        return None
    return {
        k: round(after[k] - before[k], 2) for k in ENGINE_COUNTERS if k in before and k in after
    }


async def measured(server: Server, run) -> tuple[Load, dict | None]:
    before = engine_stats(server.url)
    load = await run
    await asyncio.sleep(0.5)  # the last answers' counters
    return load, engine_diff(before, engine_stats(server.url))


@dataclass
class Outcome:
    """A run's failures against the targets (for --check) and the figures other runs use."""

    failures: list[str] = field(default_factory=list)
    goodput: float = 0.0

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)


def load_outcome(load: Load) -> Outcome:
    out = Outcome(goodput=load.goodput)
    out.expect(load.statuses[504] == 0, f"{load.statuses[504]} x 504 for admitted requests")
    out.expect(load.other_5xx() == 0, f"{load.other_5xx()} x 5xx other than 503")
    return out


async def undisturbed(server: Server, clients: int, seconds: float) -> Outcome:
    load, engine = await measured(
        server,
        load_run(f"{server.url}/respond", [json.dumps(HEAVY).encode()], clients, seconds, True),
    )
    print_load(load, f"32 samples x 60 words, sampled, from {clients} clients, no flood", engine)
    return load_outcome(load)


async def overload(server: Server, clients: int, seconds: float, honour: bool) -> Outcome:
    load, engine = await measured(
        server,
        load_run(f"{server.url}/respond", [json.dumps(HEAVY).encode()], clients, seconds, honour),
    )
    how = "each waiting Retry-After after a 503" if honour else "each retrying at once after a 503"
    print_load(load, f"32 samples x 60 words, sampled, from {clients} clients, {how}", engine)
    return load_outcome(load)


async def mix(server: Server, clients: int, seconds: float) -> Outcome:
    sizes = (1, 5, 32)
    bodies = [json.dumps({**HEAVY, "num_samples": n}).encode() for n in sizes]
    load, engine = await measured(
        server, load_run(f"{server.url}/respond", bodies, clients, seconds, True)
    )
    print_load(
        load, f"a third each of 1, 5 and 32 samples x 60 words, from {clients} clients", engine
    )
    return load_outcome(load)


async def stream(server: Server, clients: int, seconds: float) -> Outcome:
    body = json.dumps(chat_payload(model_name(server.url))).encode()
    url = f"{server.url}/v1/chat/completions"
    load, engine = await measured(server, load_run(url, [body], clients, seconds, True, True))
    print_load(load, f"streamed chat completions, n=32 x 60 tokens, from {clients} clients", engine)
    return load_outcome(load)


def model_name(url: str) -> str:
    return httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]


async def abandon(server: Server, requests: int, patience: float) -> Outcome:
    """``requests`` streamed requests (8 choices x 60 tokens: enough of them are admitted to
    fill the queue) at once, whose clients all leave after ``patience`` seconds: how much of
    their decoding the engine still does, and for how long."""
    body = json.dumps(chat_payload(model_name(server.url), n=8)).encode()
    url = f"{server.url}/v1/chat/completions"
    load = Load()
    before = engine_stats(server.url)

    async def client(http):
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(post_one(http, url, body, True, load), patience)

    connector = aiohttp.TCPConnector(limit=requests, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(http) for _ in range(requests)))
    left = time.perf_counter()
    at_leaving = engine_stats(server.url)
    busy_after = float("nan")
    while time.perf_counter() - left < 60:
        info = engine_info(server.url)
        if info and info["queue_depth"] == 0 and info["backlog_s"] == 0:
            busy_after = time.perf_counter() - left
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    after = engine_stats(server.url)
    out = Outcome()
    print(
        f"sent {requests} streamed chat completions (n=8 x 60 tokens) at once; every client "
        f"left after {patience:g} s; answered before that: {len(load.answered)}"
    )
    diff = engine_diff(before, after)
    if diff:
        print("engine over the run: " + ", ".join(f"{k} {v}" for k, v in diff.items()))
        late = engine_diff(at_leaving, after)
        assert late is not None
        stopped = late.get("stopped_calls")
        print(
            f"after the clients left: {late['batches']} model calls ended "
            + ("" if stopped is None else f"({stopped} of them stopped early) ")
            + f"with {late['batched_contexts']} of the requests; the engine was busy "
            f"{busy_after:.2f} s more"
        )
        queued_left = diff.get("abandoned_queued")
        print(
            "left the queue without a model call: "
            + ("not counted by this server" if queued_left is None else str(queued_left))
            + "; decoding stopped early: "
            + str(diff.get("abandoned_decoding", "not counted by this server"))
        )
        # Those whose decoding had started when the clients left may finish it (if they share
        # the batch with others) but no model call may start for them afterwards.
        out.expect(
            diff["requests"] == len(load.answered),
            f"{diff['requests'] - len(load.answered)} requests decoded for clients that left",
        )
    else:
        out.failures.append("no engine counters in /info")
    return out


def engine_info(url: str) -> dict | None:
    try:
        return httpx.get(f"{url}/info", timeout=30).json()["engine"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


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


async def slow(server: Server, sockets: int, hold: float) -> Outcome:
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
    out = Outcome()
    other = count_5xx(statuses) - statuses[503]
    out.expect(other == 0, f"{other} x 5xx other than 503")
    return out


async def exhaust(server: Server, sockets: int, hold: float) -> Outcome:
    """``sockets`` connections (more than the server's connection cap), each stalled in the
    middle of a request body: what slow clients do to a server's connection slots."""
    hold_until = time.perf_counter() + hold
    socks = [SlowSocket("partial body") for _ in range(sockets)]
    opening = asyncio.Semaphore(100)

    async def one(sock):
        async with opening:
            await asyncio.sleep(0)
        await slow_socket(server.port, sock, hold_until)

    await asyncio.gather(*(one(s) for s in socks))
    connected = sum(s.connected for s in socks)
    closed = [s.closed_after for s in socks if s.closed_after is not None]
    statuses = Counter(s.status for s in socks if s.status is not None)
    print(
        f"opened {sockets} connections stalled in a request body ({connected} connected), "
        f"held for up to {hold:g} s"
    )
    print(
        f"closed by the server: {len(closed)} (after p50 {percentile(closed, 0.5):.1f} s); "
        f"replies: {status_line(statuses) or 'none'}"
    )
    out = Outcome()
    other = count_5xx(statuses) - statuses[503]
    out.expect(other == 0, f"{other} x 5xx other than 503")
    return out


RUNS = ("flood", "undisturbed", "overload", "rude", "mix", "stream", "abandon", "slow", "exhaust")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help=f"default: {DEFAULT_CHECKPOINT}")
    p.add_argument("--quick", action="store_true", help="smaller runs (about 3 minutes)")
    p.add_argument("--runs", nargs="+", choices=RUNS, help="default: all, in this order")
    p.add_argument("--flood-requests", type=int, help="default 10000 (--quick: 2000)")
    p.add_argument("--flood-clients", type=int, default=32)
    p.add_argument(
        "--clients",
        type=int,
        help="of the overload, rude, mix runs; default 600 (--quick: 200); the stream run: 1/6",
    )
    p.add_argument("--seconds", type=float, help="of each load run; default 30 (--quick: 15)")
    p.add_argument("--undisturbed-clients", type=int, default=4)
    p.add_argument("--abandon-requests", type=int, default=40)
    p.add_argument("--slow-sockets", type=int, help="default 2000 (--quick: 500)")
    p.add_argument("--slow-hold", type=float, help="seconds; default 35 (--quick: 25)")
    p.add_argument(
        "--exhaust-sockets",
        type=int,
        help="default: the server's file-descriptor limit + 200",
    )
    p.add_argument("--timeout-s", type=float, default=10.0, help="the server's (default 10)")
    p.add_argument("--torch-threads", type=int, default=1, help="the server's (default 1)")
    p.add_argument("--port", type=int, default=0, help="the server's (default: a free one)")
    p.add_argument(
        "--fd-limit",
        type=int,
        default=1024,
        help="the server's open-file limit (default 1024, a common default; the slow and "
        "exhaust runs open more sockets than that)",
    )
    p.add_argument("--server-args", default="", help="more server options")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a target is missed (see the summary) or the server dies",
    )
    args = p.parse_args(argv)

    def pick(value, full, quick):
        return value if value is not None else (quick if args.quick else full)

    flood_requests = pick(args.flood_requests, 10_000, 2_000)
    clients = pick(args.clients, 600, 200)
    seconds = pick(args.seconds, 30.0, 15.0)
    slow_sockets = pick(args.slow_sockets, 2_000, 500)
    slow_hold = pick(args.slow_hold, 35.0, 25.0)
    exhaust_sockets = args.exhaust_sockets or args.fd_limit + 200
    checkpoint = args.checkpoint or REPO / DEFAULT_CHECKPOINT
    if not checkpoint.is_dir():
        p.error(f"no checkpoint at {checkpoint}; pass --checkpoint DIR")
    extra = ["--timeout-s", str(args.timeout_s), *shlex.split(args.server_args)]

    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="bncvae-stress-") as tmp:
        server = Server(
            checkpoint,
            "cpu",
            True,
            args.torch_threads,
            "auto",
            Path(tmp),
            extra,
            port=args.port,
            fd_limit=args.fd_limit,
        )
        try:
            server.wait_ready()
            print(
                f"server: python -m service --checkpoint {checkpoint.name} --torch-threads "
                f"{args.torch_threads} {' '.join(extra)} on {server.url}, open-file limit "
                f"{args.fd_limit}; {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            runs = {
                "flood": lambda: flood(server, flood_requests, args.flood_clients, 300),
                "undisturbed": lambda: undisturbed(server, args.undisturbed_clients, seconds),
                "overload": lambda: overload(server, clients, seconds, honour=True),
                "rude": lambda: overload(server, clients, seconds, honour=False),
                "mix": lambda: mix(server, clients, seconds),
                "stream": lambda: stream(server, max(1, clients // 6), seconds),
                "abandon": lambda: abandon(server, args.abandon_requests, 0.5),
                "slow": lambda: slow(server, slow_sockets, slow_hold),
                "exhaust": lambda: exhaust(server, exhaust_sockets, slow_hold),
            }
            for name in args.runs or RUNS:
                print(f"\n== {name} ==", flush=True)

                async def run(name=name):
                    async with Monitor(server.url, server.proc.pid) as monitor:
                        outcome = await runs[name]()
                    await monitor.settle(3.0)
                    print(monitor.report())
                    if name in ("slow", "exhaust"):  # a probe must never restart the pod
                        health, ready = monitor.probes["/health"], monitor.probes["/ready"]
                        n = len(health.results)
                        outcome.expect(
                            health.ok_within(1.0) == n,
                            f"/health: {n - health.ok_within(1.0)} of {n} probes not 200 in 1 s",
                        )
                        n = len(ready.results)
                        outcome.expect(
                            ready.answered_within(1.0) == n,
                            f"/ready: {n - ready.answered_within(1.0)} of {n} not answered in 1 s",
                        )
                    return outcome

                outcomes[name] = asyncio.run(run())
                alive = server.proc.poll() is None
                print(f"server alive after the run: {'yes' if alive else 'NO'}", flush=True)
                if not alive:
                    outcomes[name].failures.append("the server died")
                    break
        finally:
            server.stop()
            log = server.log.read_text(errors="replace").splitlines()
            warnings = [line for line in log if re.search(r"\b(WARNING|ERROR)\b", line)]
            print(f"\nserver log: {len(log)} lines, {len(warnings)} warnings/errors; the last:")
            for line in warnings[-5:]:
                print(f"  {line[:160]}")

    if "undisturbed" in outcomes and "rude" in outcomes:
        base, rude = outcomes["undisturbed"].goodput, outcomes["rude"].goodput
        share = rude / base if base else float("nan")
        print(
            f"\ngoodput under the flood that ignores Retry-After: {rude:.2f}/s, {share:.0%} of "
            f"the undisturbed {base:.2f}/s for the same requests (target: at least 50%)"
        )
        outcomes["rude"].expect(share >= 0.5, f"goodput {share:.0%} of undisturbed (< 50%)")
    print("\n== summary ==")
    for name, outcome in outcomes.items():
        print(f"  {name:<12} " + ("ok" if not outcome.failures else "; ".join(outcome.failures)))
    failed = any(outcome.failures for outcome in outcomes.values())
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
