"""``dolphin produce``: the same run as ``dolphin parse``, over Kafka.

Each input is produced to the requests topic with :class:`DolphinClient` and
its reply awaited on the reply topic; error replies count under their code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common.client import DolphinClient, ReplyError, ReplyTimeout
from common.errors import InvalidRequest, Unavailable

from .inputs import Input
from .run import JobFailed, RunAborted


class KafkaParser:
    """The job of ``dolphin produce``: one request and its reply per input."""

    def __init__(self, client: DolphinClient, *, timeout_s: float) -> None:
        self.client = client
        self.timeout_s = timeout_s

    async def __call__(self, item: Input) -> dict[str, Any]:
        try:
            image = await asyncio.to_thread(item.path.read_bytes)
        except OSError as exc:
            raise JobFailed("unreadable", f"cannot read the file: {exc}") from exc
        try:
            return await self.client.parse(
                image, item.path.name, timeout_s=self.timeout_s
            )
        except (InvalidRequest, ReplyError, ReplyTimeout) as exc:
            raise JobFailed(exc.code, exc.message) from exc
        except Unavailable as exc:
            msg = (
                f"cannot reach Kafka at {self.client.bootstrap_servers}: is the "
                "stack up? (./dev up)"
            )
            raise RunAborted(msg) from exc
