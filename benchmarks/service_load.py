"""Load test of the HTTP service: latency and throughput with micro-batching on and off.

Starts the real server (``python -m service``, a subprocess on a free loopback port) twice, with
batching on and off, and sends the same request from 1, 4 and 16 concurrent clients; also times
the bare model call for that request in-process (``model.sample_responses``). Prints a table and
checks two targets:

* p50 latency at 1 client (batching on) <= 1.5 x the bare decode time;
* requests/s at 16 clients: batching on >= 3 x batching off.

Every load level is bounded in requests and in time; all traffic goes to 127.0.0.1.

    python benchmarks/service_load.py --random-preset cpu     # a random checkpoint, cpu dims
    python benchmarks/service_load.py --random-tiny           # quick smoke run
    python benchmarks/service_load.py --checkpoint DIR        # default: the shipped checkpoint
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import torch  # noqa: E402

from benchmarks.service_process import ServiceProcess  # noqa: E402
from model.batch import context_batch  # noqa: E402
from model.checkpoint import load_config, load_pretrained, save_pretrained  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.cvae import DECODE_DTYPES, DialogCVAE, decode_dtype  # noqa: E402
from model.decoding import READABLE  # noqa: E402
from model.reranking import RANKED, RERANK_METHODS, distinct_responses  # noqa: E402
from model.vocab import SPECIALS, Vocabulary  # noqa: E402
from service.config import DEFAULT_CHECKPOINT, default_torch_threads  # noqa: E402
from service.conversation import read_conversation  # noqa: E402

CONVERSATION = [
    {"speaker": "A", "text": "So do you have any pets at home?"},
    {"speaker": "B", "text": "Yeah, we have two dogs and uh a cat."},
    {"speaker": "A", "text": "Oh really? What kind of dogs are they?"},
]
WORDS = "so do you have any pets at home yeah we two dogs and a cat oh really what kind of are they"


def make_random_checkpoint(directory: Path, preset: str, vocab_size: int) -> Path:
    """A randomly initialised bn-cvae checkpoint with ``preset``'s dimensions."""
    n = vocab_size - len(SPECIALS)
    words = list(dict.fromkeys(WORDS.split()))
    words += [f"w{i}" for i in range(max(0, n - len(words)))]
    vocab = Vocabulary(list(SPECIALS) + words[:n])
    torch.manual_seed(0)
    model = DialogCVAE(ModelConfig.preset(preset, variant="bn-cvae", vocab_size=len(vocab)))
    save_pretrained(model, vocab, directory, metadata={"note": f"random init, preset {preset}"})
    return directory


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def bare_decode_ms(
    checkpoint: Path, device: str, dtype: str, payload: dict, repeats: int, contexts: int = 1
) -> float:
    """Median time of the model call alone for ``contexts`` copies of the request, in-process,
    set up as the engine sets it up (``dtype``: the vocabulary projection's, as --decode-dtype)
    and decoded as the service decodes it (``READABLE``, the payload's reranking: draws until
    the responses are distinct, candidates scored).
    """
    model, vocab = load_pretrained(checkpoint, device=device)
    model.eval().set_decode_dtype(decode_dtype(dtype, device))
    conversation = [(t["speaker"], t["text"]) for t in payload["conversation"]]
    turns = read_conversation(conversation, None, model, vocab).turns
    batch = context_batch([turns] * contexts, vocab, max_context=model.config.max_context)
    batch = batch.to(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(0)

    # the service's defaults (RANKED) for what the payload leaves out
    rerank = replace(RANKED, method=payload["rerank"], candidates=payload.get("candidates", 0))

    def call():
        distinct_responses(
            model,
            batch,
            payload["num_samples"],
            key=lambda ids: tuple(ids),
            rerank=rerank,
            max_length=payload["max_length"],
            decoding=payload["decoding"],
            generator=generator,
            options=READABLE,
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class Server(ServiceProcess):
    """``python -m service`` in a subprocess on a free loopback port, batching on or off."""

    def __init__(
        self,
        checkpoint: Path,
        device: str,
        batching: bool,
        threads: int,
        dtype: str,
        log_dir: Path,
        extra: Sequence[str] = (),
        port: int = 0,
        fd_limit: int = 0,
    ):
        # --info-detail full: /info shows the engine's counters (stats())
        options = ["--log-level", "warning", "--torch-threads", str(threads)]
        options += ["--info-detail", "full"]
        options += ["--decode-dtype", dtype, *([] if batching else ["--no-batching"]), *extra]
        log = log_dir / f"server-batching-{'on' if batching else 'off'}.log"
        super().__init__(checkpoint, log, *options, device=device, port=port, fd_limit=fd_limit)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/info", timeout=10).json()["engine"]["stats"]

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (Linux /proc; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def load(url: str, payload: dict, clients: int, requests: int, time_budget: float) -> dict:
    """``clients`` concurrent clients send ``requests`` requests in all (or stop at the budget).

    The clients share this process and one core with nothing else; aiohttp (a C HTTP parser)
    costs about a third of httpx's CPU per request, which would otherwise be taken from the
    server on a 2-core machine (the table reports both processes' CPU per request).
    """
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + time_budget
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json"}

    async def client(http: aiohttp.ClientSession):
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                async with http.post(f"{url}/respond", data=body, headers=headers) as r:
                    data = await r.read()
                    ok = r.status == 200
                    # (fewer than asked only if the draws ran out, which the response says)
                    ok = ok and len(json.loads(data)["responses"]) >= 1
                    key = None if ok else str(r.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                key = type(e).__name__
            if key is None:
                latencies.append(time.perf_counter() - start)
            else:
                errors[key] = errors.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "rps": len(latencies) / elapsed}


def measure(server: Server, payload: dict, clients: int, requests: int, budget: float) -> dict:
    """One load level against one server, with the engine's batch sizes and both CPU times."""
    before = server.stats()
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    result = asyncio.run(load(server.url, payload, clients, requests, budget))
    result["client_cpu"] = time.process_time() - client_cpu
    result["server_cpu"] = server.cpu_seconds() - server_cpu
    after = server.stats()
    result["batches"] = after["batches"] - before["batches"]
    result["contexts"] = after["batched_contexts"] - before["batched_contexts"]
    return result


def combine(results: list[dict]) -> dict:
    """The rounds of one level: pooled latencies, median req/s, CPU per answered request."""
    latencies = [x for r in results for x in r["latencies"]]
    done = max(len(latencies), 1)
    errors: dict[str, int] = {}
    for r in results:
        for key, n in r["errors"].items():
            errors[key] = errors.get(key, 0) + n
    batches = sum(r["batches"] for r in results)
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50": percentile(latencies, 0.5) * 1e3,
        "p99": percentile(latencies, 0.99) * 1e3,
        "rps": statistics.median(r["rps"] for r in results),
        "mean_batch": sum(r["contexts"] for r in results) / batches if batches else float("nan"),
        "server_cpu_ms": sum(r["server_cpu"] for r in results) / done * 1e3,
        "client_cpu_ms": sum(r["client_cpu"] for r in results) / done * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help=f"default: {DEFAULT_CHECKPOINT}")
    src.add_argument("--random-preset", choices=("tiny", "cpu", "paper"))
    src.add_argument("--random-tiny", action="store_const", const="tiny", dest="random_preset")
    p.add_argument(
        "--vocab-size", type=int, default=10_005, help="for --random-*, specials included"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument(
        "--requests-per-client", type=int, default=40, help="per level and round; at least 30"
    )
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all levels")
    p.add_argument("--time-budget", type=float, default=60.0, help="seconds per load level")
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--max-length", type=int, default=40)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="CPU threads per model call, in-process and in the servers (default 0: the "
        f"service's default: here {default_torch_threads()})",
    )
    p.add_argument(
        "--decode-dtype",
        default="auto",
        choices=("auto", *DECODE_DTYPES),
        help="the vocabulary projection's dtype, in-process and in the servers (default auto)",
    )
    p.add_argument("--server-args", default="", help='more server options, e.g. "--max-wait-ms 10"')
    p.add_argument(
        "--rerank",
        default=RANKED.method,
        choices=RERANK_METHODS,
        help=f"the requests' rerank (default {RANKED.method}, the service's; none: the first "
        "distinct responses drawn)",
    )
    p.add_argument(
        "--candidates", type=int, default=0, help="the requests' candidates (0: 2 x num_samples)"
    )
    p.add_argument(
        "--compare-rerank",
        action="store_true",
        help="instead of batching on/off: one server (batching on), requests with rerank none "
        "against requests with --rerank and --candidates; target: p50 at 1 client <= 2x none",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)

    payload = {
        "conversation": CONVERSATION,
        "num_samples": args.num_samples,
        "max_length": args.max_length,
        "decoding": "greedy",
        "rerank": args.rerank,
        "candidates": args.candidates,
    }
    if args.compare_rerank and args.rerank == "none":
        p.error("--compare-rerank needs a --rerank method to compare with none")
    with tempfile.TemporaryDirectory(prefix="bncvae-load-") as tmp:
        tmp = Path(tmp)
        if args.random_preset:
            checkpoint = make_random_checkpoint(
                tmp / f"random-{args.random_preset}", args.random_preset, args.vocab_size
            )
            source = f"random init, preset {args.random_preset}"
        else:
            checkpoint = args.checkpoint or REPO / DEFAULT_CHECKPOINT
            if not checkpoint.is_dir():
                p.error(f"no checkpoint at {checkpoint}; pass --checkpoint DIR or --random-preset")
            source = "trained"
        model_config = load_config(checkpoint)[0]
        print(
            f"checkpoint {checkpoint.name} ({source}: {model_config.variant}, vocab "
            f"{model_config.vocab_size}, dec_hidden {model_config.dec_hidden}), device "
            f"{args.device}, decode dtype {decode_dtype(args.decode_dtype, args.device)}, "
            f"torch threads {args.torch_threads or default_torch_threads()}, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"request: {len(CONVERSATION)} turns, num_samples {args.num_samples}, max_length "
            f"{args.max_length}, greedy (z sampled; a random model decodes all max_length steps), "
            f"rerank {args.rerank}, candidates {args.candidates}"
        )
        threads = args.torch_threads or default_torch_threads()
        torch.set_num_threads(threads)
        bare = bare_decode_ms(checkpoint, args.device, args.decode_dtype, payload, repeats=20)
        print(
            f"bare decode (in-process model.reranking.distinct_responses): {bare:.1f} ms (median of 20)"
        )
        most = max(args.clients)
        bare_many = bare_decode_ms(
            checkpoint, args.device, args.decode_dtype, payload, repeats=5, contexts=most
        )
        print(
            f"bare decode of {most} such contexts in one call: {bare_many:.1f} ms, i.e. at most "
            f"{most * bare / bare_many:.2f}x the throughput of {most} single calls\n"
        )

        # Both servers run side by side (the idle one uses no CPU) and the measurements are
        # interleaved, level by level, for --rounds rounds: slow drifts of a shared machine then
        # hit batching on and off alike. Latencies are pooled over the rounds; req/s is the
        # median of the rounds'.
        # variant -> (server, payload): batching on and off (same requests), or rerank none
        # and --rerank (one server, batching on).
        servers = {
            batching: Server(
                checkpoint,
                args.device,
                batching,
                threads,
                args.decode_dtype,
                tmp,
                shlex.split(args.server_args),
            )
            for batching in ((True,) if args.compare_rerank else (True, False))
        }
        if args.compare_rerank:
            variants = {
                "none": (servers[True], {**payload, "rerank": "none"}),
                args.rerank: (servers[True], payload),
            }
        else:
            variants = {batching: (server, payload) for batching, server in servers.items()}
        runs: dict[tuple[object, int], list[dict]] = {}
        try:
            for server in servers.values():
                server.wait_ready()
            for server, body in variants.values():
                asyncio.run(load(server.url, body, 1, 5, 30))  # warm-up
            for _ in range(args.rounds):
                for clients in args.clients:
                    for variant, (server, body) in variants.items():
                        requests = max(30, args.requests_per_client * clients)
                        result = measure(server, body, clients, requests, args.time_budget)
                        runs.setdefault((variant, clients), []).append(result)
        finally:
            for server in servers.values():
                server.stop()
        rows = [
            {"batching": variant, "clients": clients, **combine(runs[variant, clients])}
            for variant in variants
            for clients in args.clients
        ]

        column = "rerank" if args.compare_rerank else "batching"
        header = (
            f"{column:>10} {'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'req/s':>7} {'mean batch':>10} {'server CPU':>10} {'client CPU':>10}"
        )
        print(header)
        print("-" * len(header))
        for r in rows:
            errors = sum(r["errors"].values())
            name = r["batching"] if args.compare_rerank else "on" if r["batching"] else "off"
            print(
                f"{name:>10} {r['clients']:>7} {r['requests']:>8} "
                f"{errors:>6} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['rps']:>7.1f} "
                f"{r['mean_batch']:>10.2f} {r['server_cpu_ms']:>7.2f} ms {r['client_cpu_ms']:>7.2f} ms"
            )
            if r["errors"]:
                print(f"{'':>17} errors: {r['errors']}")

        def row(batching: object, clients: int) -> dict | None:
            return next(
                (r for r in rows if r["batching"] == batching and r["clients"] == clients), None
            )

        ok = True
        print()
        if args.compare_rerank:
            plain, ranked = row("none", 1), row(args.rerank, 1)
            if plain and ranked:
                passed = ranked["p50"] <= 2 * plain["p50"]
                ok &= passed
                print(
                    f"target: p50 at 1 client, rerank {args.rerank} {ranked['p50']:.1f} ms <= 2 x "
                    f"none ({2 * plain['p50']:.1f} ms): {'PASS' if passed else 'MISS'}"
                )
            for variant in variants:
                top = row(variant, max(args.clients))
                if top:
                    print(
                        f"rerank {variant}: {top['rps']:.1f} req/s at {max(args.clients)} clients"
                    )
        single = None if args.compare_rerank else row(True, 1)
        if single:
            passed = single["p50"] <= 1.5 * bare
            ok &= passed
            print(
                f"target: p50 at 1 client {single['p50']:.1f} ms <= 1.5 x bare decode "
                f"({1.5 * bare:.1f} ms): {'PASS' if passed else 'MISS'}"
            )
        on, off = row(True, 16), row(False, 16)
        if on and off and not args.compare_rerank:
            ratio = on["rps"] / off["rps"]
            passed = ratio >= 3
            ok &= passed
            print(
                f"target: req/s at 16 clients, batching on {on['rps']:.1f} / off {off['rps']:.1f}"
                f" = {ratio:.2f}x >= 3x: {'PASS' if passed else 'MISS'}"
            )
        if any(r["errors"] for r in rows):
            ok = False
            print("some requests failed")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
