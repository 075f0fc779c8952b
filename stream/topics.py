"""Does a topic exist? Answered from cached cluster metadata.

A request may name its own reply topic. Producing to a topic that does not exist
would either create it (brokers with auto-creation on) or stall until a timeout,
so the pipeline asks here first and dead-letters requests naming unknown topics.
The topic list is refreshed every ``refresh_s``, and at most every
``miss_refresh_s`` when a name is not found, so a topic created a moment ago is
seen without a metadata request per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["TopicDirectory"]

logger = logging.getLogger(__name__)

ListTopics = Callable[[], Awaitable[set[str]]]


class TopicDirectory:
    def __init__(
        self,
        list_topics: ListTopics,
        *,
        refresh_s: float = 60.0,
        miss_refresh_s: float = 5.0,
    ) -> None:
        self._list_topics = list_topics
        self._refresh_s = refresh_s
        self._miss_refresh_s = miss_refresh_s
        self._known: set[str] = set()
        self._fetched_at = -float("inf")
        self._lock = asyncio.Lock()

    async def exists(self, topic: str) -> bool:
        age_s = time.monotonic() - self._fetched_at
        if age_s > self._refresh_s or (
            topic not in self._known and age_s > self._miss_refresh_s
        ):
            await self._refresh()
        return topic in self._known

    async def _refresh(self) -> None:
        async with self._lock:
            self._known = set(await self._list_topics())
            self._fetched_at = time.monotonic()
            logger.debug("topic_list_refreshed", extra={"topics": len(self._known)})
