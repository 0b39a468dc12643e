"""Cold start of the service: from ``python -m service`` to ``/health`` and ``/ready`` answering.

Starts the real server (benchmarks/service_process.py) ``--runs`` times, one after the other,
polls ``/health`` and ``/ready`` every ``--poll-ms`` from the moment the process is spawned, and
prints, for each start, the seconds to the first 200 of each, and the phases of the service's
``startup:`` log line (service/startup.py: where the time went inside the process). Then the
median of every column. The checkpoint's files are in the page cache after the first start.

    python benchmarks/service_startup.py [--runs 5] [--checkpoint DIR] [-- --no-verify ...]

Everything after ``--`` is passed to ``python -m service`` (e.g. ``--no-verify``,
``--torch-threads 1``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.service_process import ServiceProcess  # noqa: E402
from service.config import DEFAULT_CHECKPOINT  # noqa: E402
from training.backend import cpu_description  # noqa: E402

# The service's start-up log line: "startup: ... name=seconds ..." (service/startup.py).
PHASE = re.compile(r"([a-z_]+)=([0-9.]+)s")


def time_start(
    checkpoint: Path, log: Path, args: list[str], port: int, poll_s: float, timeout: float
) -> dict[str, float]:
    """One start: seconds from spawning the process to /health and to /ready answering 200,
    and the phases the server logged."""
    times: dict[str, float] = {}
    with httpx.Client(timeout=1) as client:
        started = time.perf_counter()
        with ServiceProcess(checkpoint, log, *args, port=port) as server:
            while "ready" not in times:
                elapsed = time.perf_counter() - started
                if server.proc.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{server.log_tail()}")
                if elapsed > timeout:
                    raise TimeoutError(f"not ready after {timeout:g} s:\n{server.log_tail()}")
                for probe in ("health", "ready"):
                    if probe in times:
                        continue
                    try:
                        if client.get(f"{server.url}/{probe}").status_code == 200:
                            times[probe] = elapsed
                    except httpx.TransportError:  # not listening yet
                        break
                time.sleep(poll_s)
            # the line is written just before /ready turns 200; give the log a moment
            deadline = time.monotonic() + 5
            while not (lines := startup_lines(log)) and time.monotonic() < deadline:
                time.sleep(0.05)
    if lines:
        times.update({name: float(s) for name, s in PHASE.findall(lines[-1])})
    return times


def startup_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "startup:" in line]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    server_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=REPO / DEFAULT_CHECKPOINT)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--port", type=int, default=0, help="0: a free one")
    p.add_argument("--poll-ms", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per start")
    args = p.parse_args(argv)

    print(f"CPU: {cpu_description()}; {os.cpu_count()} CPUs")
    print(f"python -m service --checkpoint {args.checkpoint} {' '.join(server_args)}".rstrip())
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            log = Path(tmp) / f"server-{run}.log"
            rows.append(
                time_start(
                    args.checkpoint,
                    log,
                    server_args,
                    args.port,
                    args.poll_ms / 1000,
                    args.timeout,
                )
            )
            if run == 0 and startup_lines(log):
                print(f"server's log line: {startup_lines(log)[-1].split('startup: ', 1)[1]}")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    print(f"seconds from spawning the process (polled every {args.poll_ms:g} ms); "
          "the rest: the server's own phases")  # fmt: skip
    print(f"{'run':<8}" + "".join(f"{c:>10}" for c in columns))
    for i, row in enumerate(rows, 1):
        print(
            f"{i:<8}" + "".join(f"{row[c]:>10.2f}" if c in row else f"{'-':>10}" for c in columns)
        )
    medians = {c: statistics.median(row[c] for row in rows if c in row) for c in columns}
    print(f"{'median':<8}" + "".join(f"{medians[c]:>10.2f}" for c in columns))
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
