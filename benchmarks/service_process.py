"""``python -m service`` in a subprocess on a free loopback port: started, polled until it is
ready, stopped. The one implementation behind the load and stress benchmarks
(benchmarks/service_load.py's ``Server``) and the tests that talk to a real server
(tests/servers.py's ``running_service``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL = 5000  # characters of the server's log quoted when it fails to start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env() -> dict[str, str]:
    """The environment for ``python -m service`` run from this checkout: the repository on the
    import path, and no $BNCVAE_CHECKPOINT (the checkpoint is always passed)."""
    env = {k: v for k, v in os.environ.items() if k != "BNCVAE_CHECKPOINT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def limit_fds(soft: int) -> None:
    """Lower this process's soft limit of open file descriptors to ``soft`` (at most the hard
    limit): for a server whose file descriptors a benchmark means to exhaust."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class ServiceProcess:
    """``python -m service --checkpoint CHECKPOINT --device DEVICE *args`` on 127.0.0.1 and
    ``port`` (0: a free one), with at most ``fd_limit`` open files (0: as this process), its
    output (stdout and stderr) written to ``log``; a context manager that stops it on exit.

    The checkpoint is the one passed, whatever $BNCVAE_CHECKPOINT says (it is not passed on).
    """

    def __init__(
        self,
        checkpoint: Path,
        log: Path,
        *args: str,
        device: str = "cpu",
        port: int = 0,
        fd_limit: int = 0,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [sys.executable, "-m", "service", "--checkpoint", str(checkpoint)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--device", device, *args]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=service_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: limit_fds(fd_limit)) if fd_limit else None,
            )

    def wait_ready(self, timeout: float = 300) -> None:
        """Poll ``/ready`` until it answers 200 (the model is loaded).

        Raises RuntimeError if the server exits first, TimeoutError after ``timeout`` seconds;
        either quotes the end of its log.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:  # not listening yet
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the server not ready after {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-LOG_TAIL:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
