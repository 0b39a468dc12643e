"""What verifying a checkpoint's SHA-256 hashes costs at loading (``--no-verify`` skips it).

Loads the checkpoint ``--repeats`` times each way, alternating, with the files in the page cache
(the second and later loads of a service restart), and prints the median and the fastest load
time with and without verification, and the hashing alone.

    python benchmarks/checkpoint_verify.py [--checkpoint checkpoints/bn-cvae-switchboard]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a source checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from model.checkpoint import HASHED_FILES, load_pretrained  # noqa: E402
from service.config import DEFAULT_CHECKPOINT  # noqa: E402


def cpu_name() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / DEFAULT_CHECKPOINT)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as in tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    load_pretrained(args.checkpoint)  # warm the page cache and the imports
    times: dict[str, list[float]] = {"verify": [], "no-verify": [], "hashing alone": []}
    for _ in range(args.repeats):
        for name, verify in (("verify", True), ("no-verify", False)):
            t0 = time.perf_counter()
            load_pretrained(args.checkpoint, verify=verify)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for f in HASHED_FILES:
            hashlib.sha256((args.checkpoint / f).read_bytes()).hexdigest()
        times["hashing alone"].append(time.perf_counter() - t0)

    size = sum((args.checkpoint / f).stat().st_size for f in HASHED_FILES)
    print(f"checkpoint {args.checkpoint.name}: {size / 1e6:.1f} MB hashed; {args.repeats} loads "
          f"each way; CPU: {cpu_name()}, torch threads {args.threads}")  # fmt: skip
    print(f"{'load':<16}{'median ms':>11}{'min ms':>9}")
    for name, values in times.items():
        print(f"{name:<16}{statistics.median(values) * 1e3:>11.1f}{min(values) * 1e3:>9.1f}")
    # The fastest loads are the least disturbed by other work on the machine.
    for what, pick in (("median", statistics.median), ("fastest", min)):
        extra = pick(times["verify"]) - pick(times["no-verify"])
        print(f"verification adds {extra * 1e3:.1f} ms by the {what} loads "
              f"({extra / pick(times['no-verify']):+.0%} of a load without it)")  # fmt: skip
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
