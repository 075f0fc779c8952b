"""The Batcher against an in-process backend that takes 40 ms + 2.5 ms/image
(the production profile scaled down ten times), on the real event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import pytest

from common.settings import MiB
from stream.backends.base import ItemError, ItemResult
from stream.batching.batcher import Batcher, BatcherClosed
from stream.batching.simulate import SleepingBackend
from stream.batching.stats import BatchRecord
from stream.breaker import Breaker
from tests.stream.batching.conftest import (
    PendingFactory,
    RecordingSink,
    SettingsFactory,
)

FIXED_S, PER_IMAGE_S = 0.04, 0.0025
BatcherFactory = Callable[..., Batcher]


@dataclass
class BatchWatch:
    """An on_batch hook that lets a test wait for batches to have happened."""

    records: list[BatchRecord] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, record: BatchRecord) -> None:
        self.records.append(record)
        self.changed.set()

    @property
    def failed(self) -> int:
        return sum(not record.ok for record in self.records)

    async def wait_for(self, done: Callable[[], bool], timeout_s: float = 5) -> None:
        async with asyncio.timeout(timeout_s):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def backend() -> SleepingBackend:
    return SleepingBackend(FIXED_S, PER_IMAGE_S)


@pytest.fixture
async def make_batcher(
    backend: SleepingBackend, sink: RecordingSink, make_settings: SettingsFactory
) -> AsyncIterator[BatcherFactory]:
    """Factory: a started Batcher on ``backend`` and ``sink``; settings override
    the scaled defaults (4 slots, 0.2 s latency target)."""
    started: list[Batcher] = []

    def make(*, start: bool = True, **options: Any) -> Batcher:
        kwargs = {
            k: options.pop(k)
            for k in ("cancelled", "breaker", "on_batch")
            if k in options
        }
        result_sink = options.pop("sink", sink)
        settings = make_settings(
            **{
                "max_concurrent_batches": 4,
                "latency_target_s": 0.2,
                "backend_retry_base_s": 0.01,
                **options,
            }
        )
        batcher = Batcher(backend, settings, result_sink, **kwargs)
        if start:
            batcher.start()
        started.append(batcher)
        return batcher

    yield make
    for batcher in started:
        await batcher.stop(grace_s=0)


async def test_a_burst_fills_batches_within_the_slot_count(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """200 requests at once: batches of 32, never more than 4 in flight, and
    every request answered exactly once."""
    batcher = make_batcher()
    for _ in range(200):
        await batcher.put(make_pending())
    await sink.wait_for(200)

    assert max(backend.sizes) == 32
    assert backend.sizes.count(32) >= 5
    assert backend.max_in_flight <= 4
    assert sorted(sink.ids()) == sorted(f"r{i}" for i in range(200))
    assert all(isinstance(outcome, ItemResult) for _, outcome, _ in sink.answers)
    assert batcher.stats().held == 0


async def test_one_request_at_a_time_never_waits_on_a_timer(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """A lone client sending after each answer gets batches of one, and the
    policy never once decided to wait."""
    batcher = make_batcher()
    for i in range(20):
        await batcher.put(make_pending())
        await sink.wait_for(i + 1)

    assert backend.sizes == [1] * 20
    assert batcher.policy.stats.waits == 0
    assert batcher.policy.stats.reasons["backend_idle"] == 20


async def test_put_blocks_while_the_message_bound_is_reached(
    make_batcher: BatcherFactory, make_pending: PendingFactory, sink: RecordingSink
) -> None:
    """With room for 4, the fifth put waits until an answer frees a place."""
    batcher = make_batcher(start=False, buffer_max_messages=4)
    for _ in range(4):
        await batcher.put(make_pending())
    fifth = asyncio.create_task(batcher.put(make_pending()))
    await asyncio.sleep(0.05)
    assert not fifth.done()

    batcher.start()
    await asyncio.wait_for(fifth, 2)
    await sink.wait_for(5)


async def test_put_blocks_while_the_byte_bound_is_reached(
    make_batcher: BatcherFactory, make_pending: PendingFactory, sink: RecordingSink
) -> None:
    """Three 300 KB images fill a 1 MiB buffer; the fourth waits."""
    batcher = make_batcher(start=False, buffer_max_bytes=MiB)
    for _ in range(3):
        await batcher.put(make_pending(size_bytes=300_000))
    fourth = asyncio.create_task(batcher.put(make_pending(size_bytes=300_000)))
    await asyncio.sleep(0.05)
    assert not fourth.done()
    assert batcher.stats().held_bytes == 900_000

    batcher.start()
    await asyncio.wait_for(fourth, 2)
    await sink.wait_for(4)


async def test_expired_requests_are_answered_and_never_sent(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """A request past its deadline gets deadline_exceeded without a batch; a
    request still in time is parsed."""
    batcher = make_batcher()
    await batcher.put(make_pending(deadline_in_s=-1, filename="late.png"))
    await batcher.put(make_pending(filename="fine.png"))
    await sink.wait_for(2)

    answers = {p.filename: (outcome, meta) for p, outcome, meta in sink.answers}
    late_outcome, late_meta = answers["late.png"]
    assert isinstance(late_outcome, ItemError)
    assert late_outcome.code == "deadline_exceeded"
    assert late_meta is None
    assert isinstance(answers["fine.png"][0], ItemResult)
    assert backend.sizes == [1]
    assert batcher.counters.expired == 1


async def test_requests_expire_while_waiting_for_a_slot(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """Stuck behind a slow backend, a request is answered when its deadline
    passes, not when a slot frees up."""
    backend.fixed_s = 1.0
    batcher = make_batcher(max_concurrent_batches=1)
    await batcher.put(make_pending())
    await asyncio.sleep(0.01)
    await batcher.put(make_pending(deadline_in_s=0.1))

    started_s = time.monotonic()
    await sink.wait_for(1)
    assert time.monotonic() - started_s < 0.5
    assert sink.ids() == ["r1"]
    assert getattr(sink.answers[0][1], "code", None) == "deadline_exceeded"
    assert backend.sizes == [1]


async def test_cancelled_requests_are_answered_and_never_sent(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """The cancelled check runs before sending; those it names are dropped."""

    async def cancelled(ids: Collection[str]) -> set[str]:
        return {"r1"} & set(ids)

    batcher = make_batcher(start=False, cancelled=cancelled)
    for _ in range(3):
        await batcher.put(make_pending())
    batcher.start()
    await sink.wait_for(3)

    codes = {
        p.request_id: getattr(outcome, "code", "ok") for p, outcome, _ in sink.answers
    }
    assert codes == {"r0": "ok", "r1": "cancelled", "r2": "ok"}
    assert backend.sizes == [2]
    assert batcher.counters.cancelled == 1


async def test_a_failing_cancelled_check_does_not_block_sending(
    make_batcher: BatcherFactory, sink: RecordingSink, make_pending: PendingFactory
) -> None:
    """If the check itself fails (Redis down), the batch goes as it is."""

    async def broken(ids: Collection[str]) -> set[str]:
        raise ConnectionError("redis down")

    batcher = make_batcher(cancelled=broken)
    await batcher.put(make_pending())
    await sink.wait_for(1)
    assert isinstance(sink.answers[0][1], ItemResult)


async def test_stop_returns_what_was_not_answered(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """A batch outliving the grace period and the requests still waiting come
    back from stop(); nothing is answered afterwards."""
    backend.fixed_s = 5.0
    batcher = make_batcher(max_concurrent_batches=1)
    await batcher.put(make_pending())
    await asyncio.sleep(0.02)  # r0 is in flight
    await batcher.put(make_pending())
    await batcher.put(make_pending())

    left = await batcher.stop(grace_s=0.05)
    assert sorted(p.request_id for p in left) == ["r0", "r1", "r2"]
    assert sink.answers == []
    assert batcher.stats().held == 0
    with pytest.raises(BatcherClosed):
        await batcher.put(make_pending())


async def test_stop_lets_running_batches_finish_within_grace(
    make_batcher: BatcherFactory, sink: RecordingSink, make_pending: PendingFactory
) -> None:
    """A batch that finishes inside the grace period is answered, not returned."""
    batcher = make_batcher()
    await batcher.put(make_pending())
    await asyncio.sleep(0.01)

    assert await batcher.stop(grace_s=2.0) == []
    assert sink.ids() == ["r0"]


async def test_requests_wait_through_an_outage_and_succeed_after(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """Failed batches go back to the queue unanswered; once the backend is
    back they are parsed."""
    backend.down = True
    watch = BatchWatch()
    batcher = make_batcher(on_batch=watch)
    for _ in range(3):
        await batcher.put(make_pending())
    await watch.wait_for(lambda: watch.failed >= 2)
    assert sink.answers == []
    assert batcher.stats().waiting + batcher.stats().in_flight_batches >= 1

    backend.down = False
    await sink.wait_for(3)
    assert all(isinstance(outcome, ItemResult) for _, outcome, _ in sink.answers)
    assert batcher.counters.requeued >= 6


async def test_an_open_breaker_holds_everything_until_its_probe(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """After the threshold, nothing is sent during the cooldown; then a single
    probe goes, and its success lets the rest through."""
    breaker = Breaker(failure_threshold=2, cooldown_s=0.3)
    backend.down = True
    watch = BatchWatch()
    batcher = make_batcher(breaker=breaker, max_batch_size=1, on_batch=watch)
    for _ in range(3):
        await batcher.put(make_pending())
    await watch.wait_for(lambda: breaker.state.value == "open")
    await asyncio.sleep(0.02)  # batches sent before it opened come back
    failed_before = batcher.counters.failed_batches

    await asyncio.sleep(0.15)
    assert batcher.counters.failed_batches == failed_before
    backend.down = False
    await sink.wait_for(3, timeout_s=3)
    assert breaker.state.value == "closed"
    assert batcher.stats().breaker_state == "closed"


async def test_requests_give_up_at_their_deadline_during_an_outage(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """A backend that never recovers ends in deadline_exceeded, not silence."""
    backend.down = True
    batcher = make_batcher()
    await batcher.put(make_pending(deadline_in_s=0.3))
    await sink.wait_for(1)
    assert getattr(sink.answers[0][1], "code", None) == "deadline_exceeded"


async def test_a_bad_image_fails_alone(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    sink: RecordingSink,
    make_pending: PendingFactory,
) -> None:
    """Among 8 in a batch, the undecodable one gets parse_failed, others parse."""
    backend.bad_filenames = {"page-3.png"}
    batcher = make_batcher(start=False)
    for _ in range(8):
        await batcher.put(make_pending())
    batcher.start()
    await sink.wait_for(8)

    outcomes = sink.by_id()
    assert getattr(outcomes["r3"], "code", None) == "parse_failed"
    assert sum(isinstance(o, ItemResult) for o in outcomes.values()) == 7
    assert batcher.counters.failed_batches == 0


async def test_a_raising_sink_does_not_stop_the_batcher(
    make_batcher: BatcherFactory,
    backend: SleepingBackend,
    make_pending: PendingFactory,
    sink: RecordingSink,
) -> None:
    """Sink errors are logged; later requests are still answered."""
    calls: list[str] = []

    async def flaky(pending: Any, outcome: Any, meta: Any) -> None:
        calls.append(pending.request_id)
        if pending.request_id == "r0":
            raise RuntimeError("kafka said no")
        await sink(pending, outcome, meta)

    batcher = make_batcher(sink=flaky)
    await batcher.put(make_pending())
    await asyncio.sleep(0.1)
    await batcher.put(make_pending())
    await sink.wait_for(1)
    await batcher.stop(grace_s=1)

    assert calls == ["r0", "r1"]
    assert batcher.stats().held == 0


async def test_cancel_answers_and_discard_hands_back(
    make_batcher: BatcherFactory, sink: RecordingSink, make_pending: PendingFactory
) -> None:
    """cancel() answers 'cancelled'; discard() returns requests unanswered."""
    batcher = make_batcher(start=False)
    for _ in range(4):
        await batcher.put(make_pending())

    cancelled = await batcher.cancel({"r0", "nope"})
    discarded = batcher.discard({"r1"})
    by_token = batcher.discard_matching(lambda p: p.request_id == "r2")

    assert [p.request_id for p in cancelled] == ["r0"]
    assert [p.request_id for p in discarded] == ["r1"]
    assert [p.request_id for p in by_token] == ["r2"]
    assert [getattr(o, "code", None) for _, o, _ in sink.answers] == ["cancelled"]
    assert batcher.stats().waiting == 1
    assert batcher.stats().held == 1


async def test_stats_report_the_learned_model(
    make_batcher: BatcherFactory, sink: RecordingSink, make_pending: PendingFactory
) -> None:
    """After some batches the model's estimates approach the backend's profile."""
    batcher = make_batcher()
    sent = 0
    for size in (1, 4, 16, 32, 8, 2, 24):
        for _ in range(size):
            await batcher.put(make_pending())
        sent += size
        await sink.wait_for(sent)

    stats = batcher.stats()
    assert stats.counters.images == 87
    assert stats.latency_per_image_s == pytest.approx(PER_IMAGE_S, abs=0.003)
    assert stats.latency_fixed_s == pytest.approx(FIXED_S, abs=0.03)


async def test_a_raising_metrics_hook_does_not_lose_answers(
    make_batcher: BatcherFactory, sink: RecordingSink, make_pending: PendingFactory
) -> None:
    """on_batch errors are logged; the batch's requests are still answered."""

    def broken(record: BatchRecord) -> None:
        raise ValueError("metrics bug")

    batcher = make_batcher(on_batch=broken)
    await batcher.put(make_pending())
    await sink.wait_for(1)
    assert isinstance(sink.answers[0][1], ItemResult)


async def test_stats_can_be_read_from_another_thread(
    make_batcher: BatcherFactory, make_pending: PendingFactory
) -> None:
    """A metrics collector thread may take a snapshot."""
    batcher = make_batcher(start=False)
    await batcher.put(make_pending())
    stats = await asyncio.to_thread(batcher.stats)
    assert stats.waiting == 1
