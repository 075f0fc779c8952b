"""The dispatch decision: what to send, and whether to wait for more."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from common.settings import MiB, Settings
from stream.batching.clock import ManualClock
from stream.batching.model import ArrivalRate, LatencyModel
from stream.batching.policy import (
    AdaptivePolicy,
    Dispatch,
    GreedyPolicy,
    Wait,
    make_policy,
    select_batch,
)
from stream.batching.queue import Entry, WaitingQueue
from stream.batching.types import Pending

FIXED_S, PER_IMAGE_S, TARGET_S = 0.4, 0.025, 2.0


@dataclass
class Item:
    start_s: float
    deadline_s: float
    size_bytes: int = 100


@dataclass
class Setup:
    clock: ManualClock
    model: LatencyModel
    arrivals: ArrivalRate
    policy: AdaptivePolicy

    def items(self, count: int, *, age_s: float = 0.0) -> list[Item]:
        now_s = self.clock.monotonic()
        return [Item(now_s - age_s, now_s + 60) for _ in range(count)]

    def arrive(self, rate_per_s: float, seconds: float = 4.0) -> None:
        """Feed the arrival estimate a steady stream ending now."""
        now_s = self.clock.monotonic()
        step_s = 1 / rate_per_s
        for i in range(int(seconds * rate_per_s), 0, -1):
            self.arrivals.observe(now_s - i * step_s)
        self.arrivals.observe(now_s)


@pytest.fixture
def setup() -> Setup:
    """An adaptive policy over a trained model of 0.4 s + 25 ms/image."""
    clock = ManualClock()
    model = LatencyModel()
    for n in [1, 8, 16, 32] * 20:
        model.observe(n, FIXED_S + PER_IMAGE_S * n)
    arrivals = ArrivalRate()
    policy = AdaptivePolicy(
        max_batch_size=32,
        max_batch_bytes=96 * MiB,
        latency_target_s=TARGET_S,
        model=model,
        arrivals=arrivals,
        clock=clock,
    )
    return Setup(clock, model, arrivals, policy)


def test_saturation_sends_a_full_batch_at_once(setup: Setup) -> None:
    """With 40 waiting, the first 32 go now, whatever else is in flight."""
    setup.arrive(100.0)
    decision = setup.policy.decide(setup.items(40), in_flight=3)
    assert decision == Dispatch(tuple(range(32)), "full")


def test_lone_request_on_an_idle_backend_goes_without_a_timer(setup: Setup) -> None:
    """One request, nothing in flight: dispatch now, however busy it was before."""
    setup.arrive(50.0)
    decision = setup.policy.decide(setup.items(1), in_flight=0)
    assert isinstance(decision, Dispatch)
    assert decision.reason == "backend_idle"
    assert setup.policy.stats.waits == 0


def test_no_arrivals_expected_means_no_wait(setup: Setup) -> None:
    """Quiet traffic: with a batch in flight, waiting would gather nobody."""
    setup.arrive(0.2, seconds=20)
    setup.clock.advance(3.0)
    decision = setup.policy.decide(setup.items(1), in_flight=1)
    assert decision == Dispatch((0,), "no_arrivals_expected")


def test_medium_load_waits_within_the_slack(setup: Setup) -> None:
    """At 53/s with slots busy, a fresh partial batch waits, but only as long as
    the oldest request can still be answered within the budget."""
    setup.arrive(53.0)
    items = setup.items(5, age_s=0.1)
    decision = setup.policy.decide(items, in_flight=2)
    assert isinstance(decision, Wait)

    now_s = setup.clock.monotonic()
    hold_s = decision.until_s - now_s
    expected_size = 5 + 53.0 * hold_s
    finish_s = decision.until_s + setup.model.latency_s(expected_size)
    assert hold_s > 0.1
    assert finish_s <= items[0].start_s + setup.policy.budget_s() + 1e-6
    assert setup.policy.stats.waits == 1


def test_sends_once_the_slack_is_spent(setup: Setup) -> None:
    """The oldest request aged to its budget minus the batch's latency: go now."""
    setup.arrive(53.0)
    age_s = setup.policy.budget_s() - setup.model.latency_s(20) + 0.01
    decision = setup.policy.decide(setup.items(20, age_s=age_s), in_flight=2)
    assert decision == Dispatch(tuple(range(20)), "no_slack")


def test_a_tight_deadline_overrides_the_latency_target(setup: Setup) -> None:
    """A request due in 0.5 s is never held for company."""
    setup.arrive(53.0)
    now_s = setup.clock.monotonic()
    items = [Item(now_s, now_s + 0.5), *setup.items(3)]
    decision = setup.policy.decide(items, in_flight=2)
    assert isinstance(decision, Dispatch)
    assert decision.reason == "no_slack"


def test_never_plans_past_the_slack_in_random_states(setup: Setup) -> None:
    """Whatever the queue, rate and load, a wait ends in time for the oldest."""
    rng = random.Random(11)
    for _ in range(300):
        setup.clock.advance(rng.uniform(0.01, 0.5))
        setup.arrivals.observe(setup.clock.monotonic(), rng.randint(0, 20))
        now_s = setup.clock.monotonic()
        count = rng.randint(1, 31)
        items = sorted(
            (Item(now_s - rng.uniform(0, 2.5), now_s + 60) for _ in range(count)),
            key=lambda item: item.start_s,
        )
        decision = setup.policy.decide(items, in_flight=rng.randint(1, 3))
        if isinstance(decision, Wait):
            rate = setup.arrivals.per_s(now_s)
            size = count + rate * (decision.until_s - now_s)
            finish_s = decision.until_s + setup.model.latency_s(size)
            assert finish_s <= items[0].start_s + setup.policy.budget_s() + 1e-6
            assert size <= 32 + 1e-6


def test_queue_orders_by_deadline_then_arrival(
    make_pending: Callable[..., Pending],
) -> None:
    """Earliest due first: a tight deadline jumps the queue, the rest stay FIFO."""
    queue = WaitingQueue()
    wall_s = time.time()
    for i, deadline_in_s in enumerate([60, 60, 0.5, 60]):
        pending = make_pending(deadline_in_s=deadline_in_s)
        queue.add(Entry.of(pending, 100.0 + i * 0.01, wall_s, TARGET_S))

    assert [e.request_id for e in queue] == ["r2", "r0", "r1", "r3"]


def test_byte_budget_skips_what_does_not_fit_and_keeps_filling() -> None:
    """Within 1000 bytes: 600 goes, 500 waits for the next batch, 300 joins."""
    items = [Item(0, 60, 600), Item(0, 60, 500), Item(0, 60, 300), Item(0, 60, 200)]
    assert select_batch(items, max_size=32, max_bytes=1000) == (0, 2)


def test_an_image_over_the_byte_budget_goes_alone() -> None:
    """An image bigger than the whole budget is still sent, by itself."""
    items = [Item(0, 60, 5000), Item(0, 60, 10)]
    assert select_batch(items, max_size=32, max_bytes=1000) == (0,)


def test_a_batch_full_by_bytes_is_sent_without_waiting(setup: Setup) -> None:
    """When the next request does not fit, waiting cannot enlarge the batch."""
    setup.policy = AdaptivePolicy(
        max_batch_size=32,
        max_batch_bytes=1000,
        latency_target_s=TARGET_S,
        model=setup.model,
        arrivals=setup.arrivals,
        clock=setup.clock,
    )
    setup.arrive(53.0)
    now_s = setup.clock.monotonic()
    items = [Item(now_s, now_s + 60, 600), Item(now_s, now_s + 60, 600)]
    assert setup.policy.decide(items, in_flight=2) == Dispatch((0,), "full")


def test_greedy_sends_whatever_waits(make_settings: Callable[..., Settings]) -> None:
    """batch_policy=greedy dispatches every time, up to 32, never waiting."""
    settings = make_settings(batch_policy="greedy")
    policy = make_policy(settings, LatencyModel(), ArrivalRate(), ManualClock())
    assert isinstance(policy, GreedyPolicy)

    items = [Item(0, 60) for _ in range(3)]
    assert policy.decide(items, in_flight=3) == Dispatch((0, 1, 2), "greedy")
    assert policy.decide([Item(0, 60)] * 50, in_flight=0) == Dispatch(
        tuple(range(32)), "greedy"
    )
    assert policy.stats.waits == 0


def test_adaptive_is_the_default(make_settings: Callable[..., Settings]) -> None:
    """Settings select the adaptive policy unless told otherwise."""
    policy = make_policy(make_settings(), LatencyModel(), ArrivalRate(), ManualClock())
    assert isinstance(policy, AdaptivePolicy)


def test_a_request_that_waited_upstream_is_not_held_further(
    setup: Setup, make_pending: Callable[..., Pending]
) -> None:
    """accepted_s 10 s ago (lag in the topic) leaves no slack: send at once."""
    setup.arrive(53.0)
    now_s, wall_s = setup.clock.monotonic(), setup.clock.wall()
    pending = make_pending(accepted_s=wall_s - 10)
    entry = Entry.of(pending, now_s, wall_s, TARGET_S)

    assert entry.start_s == pytest.approx(now_s - 10)
    decision = setup.policy.decide([entry], in_flight=2)
    assert decision == Dispatch((0,), "no_slack")
