"""Factories for batching tests: settings, requests, and a recording sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from common.settings import Settings, load_settings
from stream.backends.base import ItemOutcome
from stream.batching.types import BatchMeta, Pending

SettingsFactory = Callable[..., Settings]
PendingFactory = Callable[..., Pending]


@pytest.fixture
def make_settings() -> SettingsFactory:
    """Settings for a batcher; keyword arguments override the defaults."""

    def make(**overrides: Any) -> Settings:
        return load_settings(**overrides)

    return make


@pytest.fixture
def make_pending() -> PendingFactory:
    """Requests numbered r0, r1, ... with a 60 s deadline unless told otherwise."""
    counter = iter(range(1_000_000))

    def make(
        *,
        size_bytes: int = 100,
        deadline_in_s: float = 60.0,
        filename: str | None = None,
        **fields: Any,
    ) -> Pending:
        n = next(counter)
        return Pending(
            request_id=f"r{n}",
            filename=filename or f"page-{n}.png",
            image=b"\x89" * size_bytes,
            deadline_s=time.time() + deadline_in_s,
            **fields,
        )

    return make


@dataclass
class RecordingSink:
    """Records every answer and lets a test wait for a number of them."""

    answers: list[tuple[Pending, ItemOutcome, BatchMeta | None]] = field(
        default_factory=list
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(
        self, pending: Pending, outcome: ItemOutcome, meta: BatchMeta | None
    ) -> None:
        self.answers.append((pending, outcome, meta))
        self.changed.set()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.answers) < count:
                self.changed.clear()
                await self.changed.wait()

    def ids(self) -> list[str]:
        return [pending.request_id for pending, _, _ in self.answers]

    def by_id(self) -> dict[str, ItemOutcome]:
        return {pending.request_id: outcome for pending, outcome, _ in self.answers}


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()
