"""The service's configuration: one dataclass, built from the command line and the environment
(``BNCVAE_*`` variables) by :mod:`model.cli`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.cli import CommandLine, check, parse_args
from model.files import existing_directory

ENV_PREFIX = "BNCVAE_"
CHECKPOINT_ENV = ENV_PREFIX + "CHECKPOINT"
DESCRIPTION = (
    "Serve BN-CVAE dialogue responses over HTTP (POST /respond).\n\nEvery option can also be "
    f"set by an environment variable {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}PORT=9000,\n"
    f"{CHECKPOINT_ENV}=DIR); the command line wins."
)
# The project's default checkpoint, shipped in the repository (checkpoints/bn-cvae-switchboard),
# relative to the repository root (or the working directory, as in the Docker image, where the
# package is installed and the checkpoint sits under /app).
DEFAULT_CHECKPOINT = Path("checkpoints") / "bn-cvae-switchboard"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICES = ("auto", "cpu", "cuda")  # model.cvae.DEVICES, without importing torch
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# "auto" and model.cvae.DECODE_DTYPES' names, written out so that parsing the command line does
# not import torch (a test keeps the two in step).
DECODE_DTYPES = ("auto", "float32", "bfloat16", "float16")
# default_max_connections(): at most MAX_CONNECTIONS, and FD_RESERVE file descriptors kept free.
MAX_CONNECTIONS = 1000
FD_RESERVE = 64
# Host header values a server bound to a loopback address accepts by default: the names a browser
# on this machine uses for it. Any other name (a DNS-rebinding page's) gets 400.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
INFO_DETAILS = ("basic", "full")


class ConfigError(ValueError):
    """The service cannot start with this configuration; the message says how to fix it."""


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass(frozen=True)
class ServiceConfig:
    """The service's settings; each field is a ``--option`` of ``python -m service`` and a
    ``BNCVAE_<FIELD>`` environment variable."""

    # None: a model is handed to the engine directly (tests)
    checkpoint: Path | None = field(
        default=None,
        metadata=_help(
            "checkpoint directory (model.checkpoint.save_pretrained)",
            default=f"${CHECKPOINT_ENV}, else {DEFAULT_CHECKPOINT}",
        ),
    )
    host: str = field(default="127.0.0.1", metadata=_help("interface to listen on"))
    port: int = field(default=8000, metadata=_help("port", ge=0, le=65535))
    # "auto" is resolved to "cuda" or "cpu" by from_args, and by the engine when it is built
    # from a config made in code.
    device: str = field(
        default="auto", metadata=_help("auto: the GPU when present", choices=DEVICES)
    )
    # Engine: requests waiting in the queue are decoded together, up to max_batch_size samples
    # (contexts x num_samples) per model call; under concurrent traffic a batch waits at most
    # max_wait_ms for company.
    max_batch_size: int = field(
        default=256,
        metadata=_help("most samples (contexts x num_samples) decoded in one model call", ge=1),
    )
    max_wait_ms: float = field(
        default=5.0,
        metadata=_help("under concurrent traffic, how long a batch waits for more requests", ge=0),
    )
    queue_size: int = field(
        default=256, metadata=_help("requests that may wait; beyond that 503 + Retry-After", ge=1)
    )
    timeout_s: float = field(
        default=30.0,
        metadata=_help(
            "per-request time limit, queueing included; then 504. A request is admitted only if "
            "the decoding queued before it and its own (as measured) fit in half of it, else 503 "
            "+ Retry-After",
            gt=0,
        ),
    )
    verify: bool = field(
        default=True,
        metadata=_help(
            "check the checkpoint's files against the SHA-256 its config.json records "
            "(--no-verify: skip it; benchmarks/checkpoint_verify.py measures what it costs)"
        ),
    )
    batching: bool = field(
        default=True,
        metadata=_help(
            "decode queued requests together (--no-batching: each on its own, a baseline)"
        ),
    )
    torch_threads: int = field(
        default=0,
        metadata=_help(
            "CPU threads per model call; 1 on a machine busy with other work",
            default=lambda: f"0: every core, at most 4; here {default_torch_threads()}",
            ge=0,
        ),
    )
    # dtype of the decoder's vocabulary projection (most of the decoding time); "auto": bfloat16
    # where the hardware has it natively, else float32 (model.cvae.fast_decode_dtype).
    decode_dtype: str = field(
        default="auto",
        metadata=_help(
            "dtype of the decoder's vocabulary projection, most of the decoding time; auto: "
            "bfloat16 on a CPU or GPU that computes it natively (2.5-5x faster there), else "
            "float32",
            choices=DECODE_DTYPES,
        ),
    )
    max_body_bytes: int = field(
        default=256 * 1024, metadata=_help("larger request bodies get 413", ge=1)
    )
    # Slow and idle clients (service/server.py): a connection holds a socket, a file descriptor
    # and buffers.
    max_connections: int = field(
        default=0,
        metadata=_help(
            "open connections; when reached, a new one closes the oldest idle one, and with none "
            "idle its request gets 503",
            default=lambda: (
                f"0: the file-descriptor limit less {FD_RESERVE}, at most "
                f"{MAX_CONNECTIONS}; here {default_max_connections()}"
            ),
            ge=0,
        ),
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata=_help(
            "a connection that does not send a request's headers within this is closed (from "
            "the request's first byte, or the connection's opening)",
            gt=0,
        ),
    )
    max_header_bytes: int = field(
        default=16 * 1024, metadata=_help("larger request headers get 431", ge=1024)
    )
    body_timeout_s: float = field(
        default=20.0,
        metadata=_help("a request body not received within this after the headers gets 408", gt=0),
    )
    keep_alive_s: float = field(
        default=5.0, metadata=_help("an idle kept-alive connection is closed after this", gt=0)
    )
    # "*" in code (ServiceConfig() binds no socket); python -m service derives it from --host.
    allowed_hosts: str = field(
        default="*",
        metadata=_help(
            "Host header values accepted, comma-separated ('*.example.com' for subdomains, '*' "
            "for any); others get 400, so that a web page cannot reach a local server through "
            "a name of its own (DNS rebinding)",
            default=(
                f"the loopback names ({','.join(LOOPBACK_HOSTS)}) when --host is a loopback "
                "address; any ('*') otherwise, for a server behind a proxy that checks the Host "
                "itself (set the public names here when it does not)"
            ),
        ),
    )
    info_detail: str = field(
        default="basic",
        metadata=_help(
            "what GET /info shows: basic (the model, its limits, the checkpoint's name and "
            "scalar metadata) or full (also the engine's settings, queue and counters, and the "
            "training configuration)",
            choices=INFO_DETAILS,
        ),
    )
    log_level: str = field(default="info", metadata=_help("log level", choices=LOG_LEVELS))

    def __post_init__(self):
        try:
            check(self)  # the ranges declared in each field's metadata (model/cli.py)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not self.host_patterns():
            raise ConfigError("allowed_hosts must name at least one host (or '*')")

    def host_patterns(self) -> tuple[str, ...]:
        """``allowed_hosts`` as a tuple of lower-case names (``*`` and ``*.domain`` patterns)."""
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> ServiceConfig:
        """Parse ``python -m service`` arguments and ``BNCVAE_*`` variables of ``environ``
        (default: ``os.environ``; the command line wins); resolve the checkpoint and the device.

        Raises :class:`ConfigError` when no checkpoint can be found or the device is missing;
        exits with code 2 on a malformed option.
        """
        environ = os.environ if environ is None else environ
        args = command_line(argv, environ)
        values = dict(args.values)
        explicit = values["checkpoint"] if "checkpoint" in args.from_command_line else None
        values["checkpoint"] = resolve_checkpoint(
            None if explicit is None else str(explicit), environ
        )
        values["device"] = resolve_device(values["device"])
        if "allowed_hosts" not in args.given:
            values["allowed_hosts"] = default_allowed_hosts(values["host"])
        return cls(**values)


def command_line(argv: Sequence[str] | None, environ: Mapping[str, str]) -> CommandLine:
    """The options of ``python -m service``: ``argv``, then ``BNCVAE_<FIELD>`` of ``environ``."""
    return parse_args(
        ServiceConfig,
        argv,
        prog="python -m service",
        description=DESCRIPTION,
        env_prefix=ENV_PREFIX,
        environ=environ,
    )


def default_allowed_hosts(host: str) -> str:
    """--allowed-hosts' default for a server bound to ``host``: the loopback names if ``host`` is
    a loopback address or name, else any."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host.lower() == "localhost"
    return ",".join(LOOPBACK_HOSTS) if loopback else "*"


def default_torch_threads() -> int:
    """Every core this process may use, at most 4: for a machine that runs the service.

    Measured on 2 cores (benchmarks/service_load.py, the first shipped checkpoint, `cpu` preset): with 2 threads
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
            # (or the .<name>.old a save interrupted between its renames left: model/files.py)
            path = existing_directory(Path(value).expanduser())
            if path.exists() and not path.is_dir():
                raise ConfigError(
                    f"{path} (from {origin}) is a file; a checkpoint is a directory holding "
                    "config.json, vocab.json and model.safetensors"
                )
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
        f"{looked}: a copy without it). Pass one with --checkpoint DIR or set "
        f"{CHECKPOINT_ENV}=DIR (a directory written by model.checkpoint.save_pretrained)."
    )


def resolve_device(device: str) -> str:
    """model.cvae.resolve_device, with its refusal as a ConfigError."""
    from model.cvae import resolve_device as to_device  # torch: only once the flags are parsed

    try:
        return str(to_device(device))
    except ValueError as e:
        raise ConfigError(f"--device: {e}") from None
