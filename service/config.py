"""The service's configuration: one dataclass, built from the command line and the environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_ENV = "BNCVAE_CHECKPOINT"
# The project's default checkpoint, relative to the repository root (or the working directory,
# as in the Docker image, where the package is installed and the checkpoint sits under /app).
DEFAULT_CHECKPOINT = Path("checkpoints") / "bn-cvae-switchboard"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("auto", "cpu", "cuda")
# "auto" and model.cvae.DECODE_DTYPES' names, written out so that parsing the command line does
# not import torch (a test keeps the two in step).
DECODE_DTYPES = ("auto", "float32", "bfloat16", "float16")
# default_max_connections(): at most MAX_CONNECTIONS, and FD_RESERVE file descriptors kept free.
MAX_CONNECTIONS = 1000
FD_RESERVE = 64


class ConfigError(ValueError):
    """The service cannot start with this configuration; the message says how to fix it."""


@dataclass(frozen=True)
class ServiceConfig:
    checkpoint: Path | None = None  # None: a model is handed to the engine directly (tests)
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"  # "auto" is resolved to "cuda" or "cpu" by from_args
    # Engine: requests waiting in the queue are decoded together, up to max_batch_size samples
    # (contexts x num_samples) per model call; under concurrent traffic a batch waits at most
    # max_wait_ms for company.
    max_batch_size: int = 256
    max_wait_ms: float = 5.0
    queue_size: int = 256
    timeout_s: float = 30.0
    batching: bool = True
    torch_threads: int = 0  # CPU threads per model call; 0: default_torch_threads()
    # dtype of the decoder's vocabulary projection (most of the decoding time); "auto": bfloat16
    # where the hardware has it natively, else float32 (model.cvae.fast_decode_dtype).
    decode_dtype: str = "auto"
    max_body_bytes: int = 256 * 1024
    # Slow and idle clients (service/server.py): a connection holds a socket, a file descriptor
    # and buffers. Open connections (0: default_max_connections()); time for a request's headers
    # (from its first byte, or the connection's opening) and their size; time for its body
    # (after the headers); an idle kept-alive connection's time between requests.
    max_connections: int = 0
    header_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    body_timeout_s: float = 20.0
    keep_alive_s: float = 5.0
    log_level: str = "info"

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_batch_size < 1:
            raise ConfigError("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            raise ConfigError("max_wait_ms must be >= 0")
        if self.queue_size < 1:
            raise ConfigError("queue_size must be >= 1")
        if not self.timeout_s > 0:
            raise ConfigError("timeout_s must be > 0")
        if self.torch_threads < 0:
            raise ConfigError("torch_threads must be >= 0")
        if self.decode_dtype not in DECODE_DTYPES:
            raise ConfigError(f"decode_dtype must be one of {DECODE_DTYPES}")
        if self.max_body_bytes < 1:
            raise ConfigError("max_body_bytes must be >= 1")
        if self.max_connections < 0:
            raise ConfigError("max_connections must be >= 0")
        if self.max_header_bytes < 1024:
            raise ConfigError("max_header_bytes must be >= 1024")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServiceConfig:
        """Parse ``python -m service`` arguments; resolve the checkpoint and the device.

        Raises :class:`ConfigError` when no checkpoint can be found or the device is missing.
        """
        environ = os.environ if environ is None else environ
        args = build_parser().parse_args(argv)
        return cls(
            checkpoint=resolve_checkpoint(args.checkpoint, environ),
            host=args.host,
            port=args.port,
            device=resolve_device(args.device),
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            queue_size=args.queue_size,
            timeout_s=args.timeout_s,
            batching=not args.no_batching,
            torch_threads=args.torch_threads,
            decode_dtype=args.decode_dtype,
            max_body_bytes=args.max_body_bytes,
            max_connections=args.max_connections,
            header_timeout_s=args.header_timeout_s,
            max_header_bytes=args.max_header_bytes,
            body_timeout_s=args.body_timeout_s,
            keep_alive_s=args.keep_alive_s,
            log_level=args.log_level,
        )


def build_parser() -> argparse.ArgumentParser:
    d = ServiceConfig()
    p = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve BN-CVAE dialogue responses over HTTP (POST /respond).",
    )
    p.add_argument(
        "--checkpoint",
        metavar="DIR",
        help=f"checkpoint directory (default: ${CHECKPOINT_ENV}, else {DEFAULT_CHECKPOINT})",
    )
    p.add_argument("--host", default=d.host, help=f"interface to listen on (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    p.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: the GPU when present (default)"
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="most samples (contexts x num_samples) decoded in one model call "
        f"(default {d.max_batch_size})",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help="under concurrent traffic, how long a batch waits for more requests "
        f"(default {d.max_wait_ms})",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=d.queue_size,
        help=f"requests that may wait; beyond that 503 + Retry-After (default {d.queue_size})",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=d.timeout_s,
        help="per-request time limit, queueing included; then 504. A request is admitted only "
        "if the decoding queued before it and its own (as measured) fit in half of it, else 503 "
        f"+ Retry-After (default {d.timeout_s})",
    )
    p.add_argument(
        "--no-batching", action="store_true", help="decode every request on its own (baseline)"
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=d.torch_threads,
        help="CPU threads per model call (default 0: every core, at most 4; here "
        f"{default_torch_threads()}); 1 on a machine busy with other work",
    )
    p.add_argument(
        "--decode-dtype",
        choices=DECODE_DTYPES,
        default=d.decode_dtype,
        help="dtype of the decoder's vocabulary projection, most of the decoding time; auto: "
        "bfloat16 on a CPU or GPU that computes it natively (2.5-5x faster there), else float32 "
        f"(default {d.decode_dtype})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        help=f"larger request bodies get 413 (default {d.max_body_bytes})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="open connections; when reached, a new one closes the oldest idle one, and with "
        "none idle its request gets 503 (default 0: the file-descriptor limit less "
        f"{FD_RESERVE}, at most {MAX_CONNECTIONS}; here {default_max_connections()})",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=d.header_timeout_s,
        help="a connection that does not send a request's headers within this is closed "
        f"(default {d.header_timeout_s})",
    )
    p.add_argument(
        "--max-header-bytes",
        type=int,
        default=d.max_header_bytes,
        help=f"larger request headers get 431 (default {d.max_header_bytes})",
    )
    p.add_argument(
        "--body-timeout-s",
        type=float,
        default=d.body_timeout_s,
        help="a request body not received within this after the headers gets 408 "
        f"(default {d.body_timeout_s})",
    )
    p.add_argument(
        "--keep-alive-s",
        type=float,
        default=d.keep_alive_s,
        help=f"an idle kept-alive connection is closed after this (default {d.keep_alive_s})",
    )
    p.add_argument(
        "--log-level",
        default=d.log_level,
        choices=("critical", "error", "warning", "info", "debug"),
        help=f"(default {d.log_level})",
    )
    return p


def default_torch_threads() -> int:
    """Every core this process may use, at most 4: for a machine that runs the service.

    Measured on 2 cores (benchmarks/service_load.py, the shipped checkpoint): with 2 threads
    instead of 1, 16 concurrent clients get ~10-40% more requests/s from batched decoding, and a
    lone client the same latency; the event loop needs little CPU (~0.3 ms per request with
    uvloop and httptools). The cap: the largest product (80 rows x 256 x 10k words) gains little
    from more threads, each of which adds synchronisation (not measured above 2 cores). On a
    machine busy with other work use ``--torch-threads 1``: OpenMP threads that have to wait for
    a core stall each other at every operation (seen: a 7 ms decode taking 1.4 s).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def default_max_connections() -> int:
    """The soft file-descriptor limit less FD_RESERVE, at most MAX_CONNECTIONS.

    Past the descriptor limit the server cannot accept at all (not even /health); the reserve is
    for the process's own files (the model's, logs, the event loop's).
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError):  # not on Unix
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


def resolve_checkpoint(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """--checkpoint, else $BNCVAE_CHECKPOINT, else the default checkpoint."""
    for value, origin in (
        (explicit, "--checkpoint"),
        (environ.get(CHECKPOINT_ENV), CHECKPOINT_ENV),
    ):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ConfigError(f"checkpoint directory {path} (from {origin}) does not exist")
            return path.resolve()
    candidates = [REPO_ROOT / DEFAULT_CHECKPOINT, Path.cwd() / DEFAULT_CHECKPOINT]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    looked = " and ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError(
        f"no checkpoint: the default checkpoint {DEFAULT_CHECKPOINT} is not there (looked in "
        f"{looked}; it has not shipped yet). Pass one with --checkpoint DIR or set "
        f"{CHECKPOINT_ENV}=DIR (a directory written by model.checkpoint.save_pretrained)."
    )


def resolve_device(device: str) -> str:
    import torch

    if device not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device; use --device auto or cpu")
    return device
