"""Named phases timed one after the other: where loading a checkpoint and the service's start-up
spend their time (the engine's ``model ready`` log line and the ``startup:`` line of ``python -m
service``, which benchmarks/service_startup.py reads)."""

from __future__ import annotations

import os
import time


class Phases:
    """Seconds per named phase, each from the end of the previous one (or ``start``, a
    ``time.perf_counter()`` value)."""

    def __init__(self, start: float | None = None):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter() if start is None else start
        self._last = self.start

    def lap(self, name: str) -> float:
        """End the phase ``name`` now; its seconds (added to an earlier phase of that name)."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now
        return self.seconds[name]

    def __str__(self) -> str:
        return format_seconds(self.seconds)


def format_seconds(seconds: dict[str, float]) -> str:
    """``name=1.23s name=0.04s``: the form the ``startup:`` line's readers parse."""
    return " ".join(f"{name}={s:.2f}s" for name, s in seconds.items())


def process_seconds() -> float | None:
    """Seconds since this process was started (Linux: /proc/self/stat, at 10 ms resolution);
    None where that cannot be read. It counts the interpreter's own start, before any of the
    service's code runs."""
    try:
        with open("/proc/self/stat") as f:
            # the fields after the command (which may hold spaces); starttime is field 22
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return None
