"""Time sources for the batcher, the policy and the breaker.

Everything that decides by time reads it from a ``Clock`` rather than from the
``time`` module, so tests can drive it by hand and the simulation can run on a
virtual-time event loop (``stream.batching.vtime``) where an hour passes in a
second. ``monotonic()`` orders events and measures waits; ``wall()`` converts
the epoch-second deadlines that requests carry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; the origin is arbitrary."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, comparable with ``Pending.deadline_s``."""
        ...


class SystemClock:
    """The process clocks, for code that runs outside an event loop."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class LoopClock:
    """The running event loop's clock.

    On a standard loop this is ``time.monotonic``; on a virtual-time loop it is
    the loop's simulated time, and ``wall()`` moves with it so deadlines expire
    in simulated time too.
    """

    def __init__(self) -> None:
        self._wall_minus_mono_s = time.time() - time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None

    def monotonic(self) -> float:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            # Read from another thread (a metrics collector): use the loop seen
            # last, whose time() only reads a clock.
            if self._loop is None:
                return time.monotonic()
        return self._loop.time()

    def wall(self) -> float:
        return self._wall_minus_mono_s + self.monotonic()


class ManualClock:
    """A clock that moves only when told to, for unit tests."""

    def __init__(self, start_s: float = 1000.0, wall_offset_s: float = 1.7e9) -> None:
        self.now_s = start_s
        self.wall_offset_s = wall_offset_s

    def monotonic(self) -> float:
        return self.now_s

    def wall(self) -> float:
        return self.wall_offset_s + self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds
