"""When to send a batch, and which requests go in it.

The batcher asks the policy whenever a backend slot is free and requests are
waiting. The answer is ``Dispatch`` (these requests, now) or ``Wait`` (ask again
at ``until_s``, or sooner if something arrives or a slot frees up). Both
policies pick the batch the same way: earliest due first, up to
``max_batch_size`` images and ``max_batch_bytes``.

``GreedyPolicy`` always sends what is waiting. Under light load that is right;
under medium load it keeps every slot busy with small batches that each pay
the backend's fixed cost.

``AdaptivePolicy`` holds a partial batch while holding is cheap in latency and
likely to fill it: every request should be answered within the latency target
(less a safety margin for p99 and the model's error) counted from when it
entered, so the oldest one leaves room to wait ``slack - latency(n)``; requests
arriving meanwhile (the arrival-rate estimate predicts how many) share the
batch's fixed cost. It sends at once when the batch is full, when no slack
is left, when nobody is expected to arrive in the time it could wait, or when
nothing else is in flight (the backend is idle, so a lone request goes alone).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from common.settings import Settings
from stream.batching.clock import Clock
from stream.batching.model import ArrivalRate, LatencyModel


class Waiting(Protocol):
    """What the policy reads of a waiting request (monotonic seconds)."""

    @property
    def start_s(self) -> float: ...
    @property
    def deadline_s(self) -> float: ...
    @property
    def size_bytes(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Dispatch:
    indices: tuple[int, ...]
    """Positions in the waiting sequence, in the order they go in the batch."""
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    until_s: float
    reason: str


Decision = Dispatch | Wait


@dataclass(slots=True)
class PolicyStats:
    dispatches: int = 0
    waits: int = 0
    """Decisions that told the batcher to sleep on a timer."""
    longest_wait_s: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)


class BatchPolicy(Protocol):
    stats: PolicyStats

    def decide(self, waiting: Sequence[Waiting], *, in_flight: int) -> Decision:
        """``waiting`` is in earliest-due order; a slot is known to be free."""
        ...


def select_batch(
    waiting: Sequence[Waiting], max_size: int, max_bytes: int
) -> tuple[int, ...]:
    """The first requests that fit; one too big for the byte budget goes alone."""
    chosen: list[int] = []
    total_bytes = 0
    for index, item in enumerate(waiting):
        if len(chosen) == max_size:
            break
        if chosen and total_bytes + item.size_bytes > max_bytes:
            # It heads the next batch; smaller ones behind it may still fit.
            continue
        chosen.append(index)
        total_bytes += item.size_bytes
    return tuple(chosen)


class GreedyPolicy:
    """Send whatever is waiting as soon as a slot is free."""

    def __init__(self, max_batch_size: int, max_batch_bytes: int) -> None:
        self._max_size = max_batch_size
        self._max_bytes = max_batch_bytes
        self.stats = PolicyStats()

    def decide(self, waiting: Sequence[Waiting], *, in_flight: int) -> Decision:
        chosen = select_batch(waiting, self._max_size, self._max_bytes)
        self.stats.dispatches += 1
        self.stats.reasons["greedy"] += 1
        return Dispatch(chosen, "greedy")


class AdaptivePolicy:
    def __init__(
        self,
        *,
        max_batch_size: int,
        max_batch_bytes: int,
        latency_target_s: float,
        model: LatencyModel,
        arrivals: ArrivalRate,
        clock: Clock,
        margin_frac: float = 0.15,
        error_z: float = 2.33,
        min_wait_s: float = 0.002,
    ) -> None:
        self._max_size = max_batch_size
        self._max_bytes = max_batch_bytes
        self._target_s = latency_target_s
        self._model = model
        self._arrivals = arrivals
        self._clock = clock
        self._margin_frac = margin_frac
        self._error_z = error_z
        self._min_wait_s = min_wait_s
        self.stats = PolicyStats()

    def budget_s(self) -> float:
        """Seconds from entry to answer that the policy aims for."""
        error_s = self._error_z * self._model.estimate.residual_s
        return max(self._target_s * (1 - self._margin_frac) - error_s, 0.0)

    def decide(self, waiting: Sequence[Waiting], *, in_flight: int) -> Decision:
        now_s = self._clock.monotonic()
        chosen = select_batch(waiting, self._max_size, self._max_bytes)
        size = len(chosen)
        if size == self._max_size or size < len(waiting):
            # Full by count or bytes: holding cannot make it bigger.
            return self._dispatch(chosen, "full")
        if in_flight == 0:
            return self._dispatch(chosen, "backend_idle")

        # The batch finishes when its most urgent request is due at the latest.
        budget_s = self.budget_s()
        due_s = min(
            min(waiting[i].start_s + budget_s, waiting[i].deadline_s) for i in chosen
        )
        slack_s = due_s - now_s
        rate_per_s = self._arrivals.per_s(now_s)
        per_image_s = self._model.estimate.per_image_s

        # Hold for d while d + latency(size + rate * d) stays within the slack.
        hold_s = (slack_s - self._model.latency_s(size)) / (
            1 + per_image_s * rate_per_s
        )
        if hold_s < self._min_wait_s:
            return self._dispatch(chosen, "no_slack")
        if rate_per_s > 0:
            hold_s = min(hold_s, (self._max_size - size) / rate_per_s)
        if rate_per_s * hold_s < 1:
            return self._dispatch(chosen, "no_arrivals_expected")

        self.stats.waits += 1
        self.stats.longest_wait_s = max(self.stats.longest_wait_s, hold_s)
        self.stats.reasons["wait"] += 1
        return Wait(now_s + hold_s, "filling")

    def _dispatch(self, chosen: tuple[int, ...], reason: str) -> Dispatch:
        self.stats.dispatches += 1
        self.stats.reasons[reason] += 1
        return Dispatch(chosen, reason)


def make_policy(
    settings: Settings, model: LatencyModel, arrivals: ArrivalRate, clock: Clock
) -> BatchPolicy:
    """The policy ``settings.batch_policy`` names."""
    if settings.batch_policy == "greedy":
        return GreedyPolicy(settings.max_batch_size, settings.max_batch_bytes)
    return AdaptivePolicy(
        max_batch_size=settings.max_batch_size,
        max_batch_bytes=settings.max_batch_bytes,
        latency_target_s=settings.latency_target_s,
        model=model,
        arrivals=arrivals,
        clock=clock,
    )
