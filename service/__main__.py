"""``python -m service``: serve a checkpoint with uvicorn (see ``--help`` and service/server.py)."""

from __future__ import annotations

import logging
import sys

from service.config import ConfigError, ServiceConfig

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The
# decoding thread lets it go at every torch operation (hundreds per step) and must get it back
# for the next; while the event loop is busy (a flood of requests to refuse or answer with a
# 4xx), each of those waits took up to the whole interval, and a 20 ms decode took seconds.
GIL_SWITCH_INTERVAL_S = 0.0005


def main(argv: list[str] | None = None) -> int:
    try:
        config = ServiceConfig.from_args(argv)
    except ConfigError as e:
        print(f"python -m service: error: {e}", file=sys.stderr)
        return 2

    from service.app import create_app
    from service.engine import InferenceEngine
    from service.server import build_server

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
    # A checkpoint that failed to load will not load later: stop, and exit non-zero, rather
    # than answer 503 until someone notices.
    engine.on_load_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if engine.error is not None:
        print(f"python -m service: error: {engine.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
