"""An asyncio event loop on virtual time, for simulations and tests.

Whenever the loop has nothing ready to run and would sleep until its next
timer, it jumps its clock to that timer instead. Timers, ``asyncio.sleep``,
``wait_for`` and everything built on ``loop.time()`` then run in simulated
time: minutes of batching happen in a fraction of a second, and the outcome
depends only on the program (and its random seed), not on the machine's speed.
Real I/O still works; it simply sees time stand still while it is pending.

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self.loop is None:
            # No timer pending: only real I/O (or another thread) can wake us.
            return super().select(timeout)
        self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        # Start where the real clock is, so LoopClock's wall time stays sensible.
        self._now_s = time.monotonic()

    def time(self) -> float:
        return self._now_s

    def advance(self, seconds: float) -> None:
        self._now_s += seconds


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
