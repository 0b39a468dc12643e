"""``python -m service``: serve a checkpoint with uvicorn (see ``--help`` and service/server.py)."""

from __future__ import annotations

import logging
import sys
import time

from model.timing import Phases, process_seconds
from service.config import ConfigError, ServiceConfig

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The
# decoding thread lets it go at every torch operation (hundreds per step) and must get it back
# for the next; while the event loop is busy (a flood of requests to refuse or answer with a
# 4xx), each of those waits took up to the whole interval, and a 20 ms decode took seconds.
GIL_SWITCH_INTERVAL_S = 0.0005


def main(argv: list[str] | None = None) -> int:
    # The start-up's phases, from the process's start (its interpreter's, with this module's
    # imports) where the system tells it: the `startup:` log line.
    since_start = process_seconds()
    phases = Phases(None if since_start is None else time.perf_counter() - since_start)
    if since_start is not None:
        phases.lap("python")
    try:
        config = ServiceConfig.from_args(argv)
    except ConfigError as e:
        print(f"python -m service: error: {e}", file=sys.stderr)
        return 2
    phases.lap("options")  # with torch's import, to resolve --device

    from service.app import create_app
    from service.engine import InferenceEngine
    from service.server import build_server

    phases.lap("imports")

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("service").info(
        "serving %s on %s (batching %s) at http://%s:%d",
        config.checkpoint,
        config.device,
        "on" if config.batching else "off",
        config.host,
        config.port,
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if "*" in config.host_patterns():
        logging.getLogger("service").warning(
            "accepting any Host header (--allowed-hosts '*'): right behind a proxy that checks "
            "it; a server reachable from browsers directly should name its hosts"
        )
    else:
        logging.getLogger("service").info("accepting the Host names %s", config.allowed_hosts)
    engine = InferenceEngine.from_checkpoint(config)
    server = build_server(config, create_app(engine))
    phases.lap("app")
    # A checkpoint that failed to load will not load later: stop, and exit non-zero, rather
    # than answer 503 until someone notices.
    engine.on_load_failure = lambda: setattr(server, "should_exit", True)
    engine.on_ready = lambda: log_startup(phases, server, engine)
    server.run()
    if engine.error is not None:
        print(f"python -m service: error: {engine.error}", file=sys.stderr)
        return 1
    return 0


def log_startup(phases: Phases, server, engine) -> None:
    """The `startup:` line: seconds from the process's start to the engine being ready, in the
    main thread's phases (``serve``: the server's start, then waiting for the model); when the
    server began to listen (/health answers); and the model's phases, in the engine's thread
    from the server's start on."""
    phases.lap("serve")
    listening = "?" if server.started_at is None else f"{server.started_at - phases.start:.2f}"
    logging.getLogger("service").info(
        "startup: ready=%.2fs after the %s: %s; listening=%ss; the model: %s",
        sum(phases.seconds.values()),
        "process started" if "python" in phases.seconds else "service's code started",
        phases,
        listening,
        engine.load_phases,
    )


if __name__ == "__main__":
    sys.exit(main())
