"""Entry point of the HTTP API: ``dolphin-api`` or ``python -m api.main``."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from common.kafka import ensure_topics
from common.logging import configure
from common.settings import ConfigError, Settings, load_settings, log_effective

from .app import create_app

logger = logging.getLogger(__name__)


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    configure(settings.log_level, settings.log_format, "api")
    log_effective(settings, "api")
    sys.exit(run(settings))


def run(settings: Settings) -> int:
    try:
        asyncio.run(ensure_topics(settings))
    except Exception as exc:
        logger.error(
            "topics_unavailable",
            extra={
                "error": repr(exc),
                "bootstrap": settings.kafka_bootstrap_servers,
                "consequence": "not starting; check that Kafka is reachable",
            },
        )
        return 1
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn leaves started False when the lifespan failed.
    return 0 if server.started else 1


if __name__ == "__main__":
    main()
