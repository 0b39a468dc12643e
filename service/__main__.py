"""``python -m service``: serve a checkpoint with uvicorn (see ``--help`` and service/server.py)."""

from __future__ import annotations

import logging
import sys

from service.config import ConfigError, ServiceConfig


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
