"""Policy economics in virtual time: the production profile, no wall-clock waits."""

from __future__ import annotations

import asyncio

import pytest

from common.settings import load_settings
from stream.backends.base import ItemOutcome
from stream.batching.batcher import Batcher
from stream.batching.clock import LoopClock
from stream.batching.simulate import SleepingBackend, main, simulate
from stream.batching.types import BatchMeta, Pending
from stream.batching.vtime import run_virtual


def test_adaptive_is_much_cheaper_than_greedy_at_medium_load() -> None:
    """4 slots, 0.4 s + 25 ms/image, Poisson 53/s for a minute: adaptive spends
    at least 30% fewer backend-seconds per image, and its p99 stays within the
    2 s target."""
    greedy = run_virtual(simulate("greedy", duration_s=60, seed=3))
    adaptive = run_virtual(simulate("adaptive", duration_s=60, seed=3))

    assert adaptive.requests == greedy.requests > 2500
    assert adaptive.backend_s_per_image <= 0.7 * greedy.backend_s_per_image
    assert adaptive.p99_s <= 2.0
    assert adaptive.mean_batch > 2 * greedy.mean_batch


def test_saturation_keeps_every_slot_busy_with_full_batches() -> None:
    """Past capacity (120/s against ~107/s), batches are full and 4 run at once."""
    result = run_virtual(simulate("adaptive", rate_per_s=120, duration_s=30, seed=3))
    assert result.mean_batch > 30
    assert result.max_in_flight == 4


def test_a_closed_loop_client_never_waits_in_production_timing() -> None:
    """One client sending after each answer: every batch has one image and
    answers take the backend's latency, nothing more."""

    async def scenario() -> tuple[list[float], int]:
        clock = LoopClock()
        answered = asyncio.Event()
        latencies_s: list[float] = []

        async def sink(p: Pending, _: ItemOutcome, __: BatchMeta | None) -> None:
            latencies_s.append(clock.monotonic() - p.enqueued_s)
            answered.set()

        batcher = Batcher(
            SleepingBackend(0.4, 0.025), load_settings(), sink, clock=clock
        )
        batcher.start()
        for i in range(50):
            answered.clear()
            await batcher.put(
                Pending(f"r{i}", "p.png", b"x", clock.wall() + 60, clock.monotonic())
            )
            await answered.wait()
        await batcher.stop(0)
        return latencies_s, batcher.policy.stats.waits

    latencies_s, waits = run_virtual(scenario())
    assert waits == 0
    assert max(latencies_s) < 0.425 + 0.001


def test_the_script_prints_both_policies(capsys: pytest.CaptureFixture[str]) -> None:
    """python -m stream.batching.simulate prints a row per policy and the saving."""
    main(["--duration", "20"])
    out = capsys.readouterr().out
    assert "greedy" in out and "adaptive" in out
    assert "fewer backend-seconds per image than greedy" in out
