"""``dolphin-worker`` / ``python -m stream.main``: run the stream worker.

Exit codes: 0 after a clean stop (SIGTERM or SIGINT drain), 1 when the worker
crashed, 2 when the configuration is invalid.
"""

from __future__ import annotations

import asyncio
import sys

import faust

from common.logging import configure
from common.settings import ConfigError, load_settings, log_effective

from .app import create_app

__all__ = ["main"]

EXIT_CONFIG = 2


def main() -> None:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"dolphin-worker: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None

    configure(settings.log_level, settings.log_format, "worker")
    log_effective(settings, "worker")

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(settings)
    # Our logging is configured already: Faust must neither replace the
    # handlers nor print its banner or redirect stdout into the log.
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    worker.spinner = None  # it writes terminal escapes to stdout otherwise
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
