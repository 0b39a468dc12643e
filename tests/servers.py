"""A real ``python -m service`` on 127.0.0.1, for tests that talk to it as a client would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from benchmarks.service_process import ServiceProcess

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = REPO / "checkpoints" / "bn-cvae-switchboard"


@contextlib.contextmanager
def running_service(checkpoint: Path, log: Path, *args: str) -> Iterator[str]:
    """Start the service on a free loopback port; yield its base URL once it is ready."""
    with ServiceProcess(checkpoint, log, *args) as service:
        service.wait_ready(timeout=120)
        yield service.url
