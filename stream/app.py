"""The worker: a Faust app whose one service consumes requests with aiokafka.

Faust runs the process: the worker lifecycle, signal handling (SIGTERM drains
and exits 0), the service tree that starts and stops every part in order, and
the HTTP server slot. The requests topic is read by an ``AIOKafkaConsumer`` in
the consumer group ``settings.consumer_group`` (``dolphin-connector``), which
commits its own offsets, rather than by a Faust agent. Why, with evidence from
faust-streaming 0.15.3 as installed:

- Faust commits past messages still in flight. ``Consumer._new_offset``
  (faust/transport/consumer.py) skips its "gap at the head" check when the
  committed offset is None or 0 (``if committed_offset:``) and, when it runs,
  tests ``min(acked) - committed_offset > 1``, letting one unacked offset
  through. Fed to that function: committed 10 with 11, 12 acked gives 13;
  nothing committed with 5 acked gives 6; committed 0 with 3 acked gives 4.
  Each commits a request whose batch is still at the backend, and a crash
  then loses it. Acking in offset order ourselves would avoid the arithmetic,
  but not the next point.
- Faust acks messages nobody processed. ``Stream._py_aiter`` (faust/streams.py)
  skips an event whose generation id is stale or that arrives while flow
  control is suspended (both happen around every rebalance) and then acks it,
  also on a ``noack()`` stream; that offset joins the acked list of the next
  assignment and can be committed before the message is consumed again.
- Revocation and shutdown wait on ``Consumer.wait_empty`` until every
  delivered message is acked, with no bound but the flight recorder's log
  line. Our acks wait for backend batches of up to ``backend_timeout_s``, so a
  rebalance could hang the group for minutes; the consumer here instead gives
  waiting requests back, lets running batches finish within
  ``shutdown_grace_s``, commits what was answered, and lets go.

The offset ledger (``stream.commits``) commits each partition only up to its
oldest unanswered message, every ``commit_interval_s``, at revocation and at
shutdown; the group and its offsets are ordinary ones, so
``kafka-consumer-groups.sh --describe --group dolphin-connector`` reports lag.
Faust's own Kafka consumer and producer are switched off (no tables, no
changelogs, no leader topic), and so is its data directory.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.app.base import BootStrategy
from mode import Service

from common.kafka import client_options
from common.settings import Settings

from .web import WorkerWeb
from .worker import Worker

__all__ = ["WorkerApp", "WorkerService", "create_app"]

logger = logging.getLogger(__name__)


class _WorkerBoot(BootStrategy):
    # The worker service owns the Kafka clients; Faust's consumer would join the
    # group with its own assignor and commit by its own rules.
    enable_kafka = False


class WorkerApp(faust.App):
    BootStrategy = _WorkerBoot
    # Service start/stop chatter at debug; the worker logs its own lifecycle.
    mundane_level = "debug"

    async def on_first_start(self) -> None:
        """No tables, so no data directory to create."""

    async def _producer_flush(self, logger: Any) -> None:
        """Faust's producer never starts here, so there is nothing to flush."""


def create_app(settings: Settings) -> WorkerApp:
    app = WorkerApp(
        settings.consumer_group,
        broker=[
            f"kafka://{server.strip()}"
            for server in settings.kafka_bootstrap_servers.split(",")
        ],
        broker_credentials=broker_credentials(settings),
        autodiscover=False,
        topic_disable_leader=True,
        web_host=settings.worker_host,
        web_port=settings.worker_port,
    )
    service = WorkerService(settings)
    app.web_server(
        WorkerWeb(settings.worker_host, settings.worker_port, service.health)
    )
    # Faust takes a service instance as well as a class (_prepare_subservice).
    app.service(service)  # type: ignore[arg-type]
    return app


def broker_credentials(settings: Settings) -> Any:
    """Faust's form of the TLS and SASL options every Kafka client gets.

    Faust's own Kafka clients are switched off; should one ever start, it must
    not connect with weaker security than the worker's aiokafka clients.
    """
    options = client_options(settings)
    protocol = options["security_protocol"]
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"],
            password=options["sasl_plain_password"],
            ssl_context=options.get("ssl_context"),
            mechanism=options["sasl_mechanism"],
        )
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


class WorkerService(Service):
    """Runs the worker inside Faust's lifecycle; Kafka clients need the loop,
    so the parts are built when the service starts."""

    mundane_level = "debug"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.worker: Worker | None = None

    async def on_start(self) -> None:
        self.worker = Worker(self.settings, on_fatal=self.crash)
        await self.worker.start()

    async def on_stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop()

    async def health(self) -> tuple[bool, dict[str, Any]]:
        if self.worker is None or self.should_stop:
            return False, {"consumer": {"running": False}}
        return await self.worker.health()
