"""Compare batch policies on a simulated backend, in virtual time.

The backend takes ``fixed_s + per_image_s * n`` for a batch of ``n`` and has
``slots`` containers; requests arrive as a Poisson process. The real
``Batcher`` runs on a virtual-time loop, so two minutes of traffic take about
a second and a seed gives the same figures on any machine.

    python -m stream.batching.simulate [--rate 53] [--duration 120] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from common.settings import load_settings
from stream.backends.base import (
    BackendError,
    BackendHealth,
    BatchItem,
    BatchOutcome,
    ItemOutcome,
    ItemResult,
)
from stream.batching.batcher import Batcher
from stream.batching.clock import LoopClock
from stream.batching.types import BatchMeta, Pending
from stream.batching.vtime import run_virtual

PolicyName = Literal["adaptive", "greedy"]


@dataclass
class SleepingBackend:
    """A backend that only takes time: ``fixed_s + per_image_s * n`` a batch.

    ``bad_filenames`` fail any batch that holds one (as Modal does for an
    undecodable image); ``down`` fails every call as an unreachable backend.
    """

    fixed_s: float
    per_image_s: float
    bad_filenames: set[str] = field(default_factory=set)
    down: bool = False
    name: str = "sleeping"
    sizes: list[int] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def parse_batch(self, items: Sequence[BatchItem]) -> BatchOutcome:
        if self.down:
            raise BackendError("backend is down")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.sizes.append(len(items))
        seconds = self.fixed_s + self.per_image_s * len(items)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.in_flight -= 1
        bad = [item.filename for item in items if item.filename in self.bad_filenames]
        if bad:
            raise BackendError(f"cannot decode {bad[0]}", batch_failed=True)
        results: list[ItemOutcome] = [
            ItemResult(item.filename, elements=[]) for item in items
        ]
        return BatchOutcome(results, f"b{len(self.sizes)}", seconds, seconds)

    async def health(self) -> BackendHealth:
        return BackendHealth(self.name, not self.down)

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class SimResult:
    policy: str
    requests: int
    batches: int
    mean_batch: float
    backend_s_per_image: float
    p50_s: float
    p99_s: float
    max_in_flight: int


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def simulate(
    policy: PolicyName,
    *,
    rate_per_s: float = 53.0,
    duration_s: float = 120.0,
    fixed_s: float = 0.4,
    per_image_s: float = 0.025,
    slots: int = 4,
    latency_target_s: float = 2.0,
    seed: int = 7,
    warmup_s: float = 10.0,
) -> SimResult:
    """Latency percentiles count requests that arrived after ``warmup_s``."""
    settings = load_settings(
        batch_policy=policy,
        max_concurrent_batches=slots,
        latency_target_s=latency_target_s,
    )
    clock = LoopClock()
    backend = SleepingBackend(fixed_s, per_image_s)
    latencies_s: list[float] = []
    answered = 0
    all_answered = asyncio.Event()
    sent = -1  # unknown until arrivals stop

    async def sink(pending: Pending, _: ItemOutcome, __: BatchMeta | None) -> None:
        nonlocal answered
        answered += 1
        if pending.token >= warmup_s:
            latencies_s.append(clock.monotonic() - pending.enqueued_s)
        if answered == sent:
            all_answered.set()

    batcher = Batcher(backend, settings, sink, clock=clock)
    batcher.start()
    rng = random.Random(seed)
    began_s = clock.monotonic()
    count = 0
    while True:
        await asyncio.sleep(rng.expovariate(rate_per_s))
        elapsed_s = clock.monotonic() - began_s
        if elapsed_s >= duration_s:
            break
        pending = Pending(
            f"r{count}",
            f"page-{count}.png",
            b"\0" * 1024,
            deadline_s=clock.wall() + 60,
            enqueued_s=clock.monotonic(),
            token=elapsed_s,
        )
        await batcher.put(pending)
        count += 1

    # Let every request be answered before reading the counters.
    sent = count
    if answered < sent:
        await all_answered.wait()
    await batcher.stop(grace_s=0)
    counters = batcher.counters
    return SimResult(
        policy=policy,
        requests=count,
        batches=counters.batches,
        mean_batch=counters.images / max(counters.batches, 1),
        backend_s_per_image=counters.backend_seconds_per_image,
        p50_s=percentile(latencies_s, 0.50),
        p99_s=percentile(latencies_s, 0.99),
        max_in_flight=backend.max_in_flight,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=53.0, help="arrivals per s")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds")
    parser.add_argument("--fixed", type=float, default=0.4, help="s per batch")
    parser.add_argument("--per-image", type=float, default=0.025, help="s per image")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--target", type=float, default=2.0, help="p99 target, s")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    results = {
        policy: run_virtual(
            simulate(
                policy,
                rate_per_s=args.rate,
                duration_s=args.duration,
                fixed_s=args.fixed,
                per_image_s=args.per_image,
                slots=args.slots,
                latency_target_s=args.target,
                seed=args.seed,
            )
        )
        for policy in ("greedy", "adaptive")
    }
    print(
        f"{args.slots} slots, latency {args.fixed}s + {args.per_image}s/image, "
        f"Poisson {args.rate}/s for {args.duration:.0f}s, p99 target {args.target}s"
    )
    print(
        f"{'policy':<9} {'requests':>8} {'batches':>7} {'mean':>5} "
        f"{'backend_s/img':>13} {'p50_s':>6} {'p99_s':>6} {'max_in_flight':>13}"
    )
    for r in results.values():
        print(
            f"{r.policy:<9} {r.requests:>8} {r.batches:>7} {r.mean_batch:>5.1f} "
            f"{r.backend_s_per_image:>13.4f} {r.p50_s:>6.3f} {r.p99_s:>6.3f} "
            f"{r.max_in_flight:>13}"
        )
    greedy, adaptive = results["greedy"], results["adaptive"]
    saving = 1 - adaptive.backend_s_per_image / greedy.backend_s_per_image
    print(f"adaptive spends {saving:.0%} fewer backend-seconds per image than greedy")


if __name__ == "__main__":
    main()
