"""The worker's own HTTP server: ``GET /health`` and ``GET /metrics``.

It is registered as the Faust app's web server (``App.web_server``), so the
worker lifecycle starts and stops it, and it binds ``worker_host:worker_port``.
``/health`` answers 200 while the consumer runs, assigned or waiting for an
assignment, and 503 otherwise; the body also names the backend, its health and
the circuit breaker state, which never change the status on their own: an
unreachable backend is the breaker's business, not a reason to restart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from mode import Service

from . import metrics

__all__ = ["HealthReport", "WorkerWeb"]

logger = logging.getLogger(__name__)

HealthReport = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


class WorkerWeb(Service):
    mundane_level = "debug"

    def __init__(self, host: str, port: int, health: HealthReport) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._health = health
        self._runner: web.AppRunner | None = None

    @property
    def web_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def on_start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        logger.info("worker_http_started", extra={"url": self.web_url})

    async def on_stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_health(self, request: web.Request) -> web.Response:
        healthy, body = await self._health()
        body["status"] = "ok" if healthy else "unavailable"
        return web.json_response(body, status=200 if healthy else 503)

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE}
        )
