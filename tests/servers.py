"""A real ``python -m service`` on 127.0.0.1, for tests that talk to it as a client would."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = REPO / "checkpoints" / "bn-cvae-switchboard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_service(checkpoint: Path, log: Path, *args: str) -> Iterator[str]:
    """Start the service on a free loopback port; yield its base URL once it is ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BNCVAE_CHECKPOINT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "service", "--checkpoint", str(checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
