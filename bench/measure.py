"""Turning a run's samples, the simulator's bill and memory readings into figures."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx

from bench.loadgen import Run
from bench.stack import Proc


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(run: Run, sim_stats: dict[str, Any]) -> dict[str, Any]:
    ok = [s for s in run.samples if s.ok]
    latencies = [s.latency_s for s in ok]
    images = int(sim_stats.get("processed_images") or sim_stats.get("images") or 0)
    batches = int(sim_stats.get("batches") or 0)
    billed = float(sim_stats.get("backend_seconds") or 0.0)
    return {
        "requests": len(run.samples),
        "ok": len(ok),
        "errors": dict(
            Counter(s.code or str(s.status) for s in run.samples if not s.ok)
        ),
        "duration_s": round(run.duration_s, 2),
        "throughput_per_s": round(len(ok) / run.duration_s, 2) if run.duration_s else 0,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 4),
            "p90": round(percentile(latencies, 90), 4),
            "p99": round(percentile(latencies, 99), 4),
            "mean": round(statistics.fmean(latencies), 4) if latencies else None,
        },
        "mean_batch_size": round(images / batches, 2) if batches else None,
        "backend_seconds_per_image": round(billed / images, 4) if images else None,
        "backend_batches": batches,
        "backend_images": images,
        "latencies": [round(v, 4) for v in latencies],
        "start_times": [round(s.started_s, 3) for s in ok],
    }


async def sim_stats(client: httpx.AsyncClient, sim: Proc) -> dict[str, Any]:
    answer = await client.get(sim.url + "/stats", params={"processed": 0})
    stats: dict[str, Any] = answer.json()
    return stats


async def sim_reset(client: httpx.AsyncClient, sim: Proc) -> None:
    await client.post(sim.url + "/stats/reset")


class MemoryWatch:
    """Samples the RSS of some processes every ``interval_s`` during a run."""

    def __init__(self, procs: list[Proc], interval_s: float = 1.0) -> None:
        self.procs = procs
        self.interval_s = interval_s
        self.samples: dict[str, list[tuple[float, float]]] = {p.name: [] for p in procs}

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[MemoryWatch]:
        started = time.perf_counter()

        async def sample() -> None:
            while True:
                now = time.perf_counter() - started
                for proc in self.procs:
                    self.samples[proc.name].append(
                        (round(now, 2), round(proc.rss_mb(), 1))
                    )
                await asyncio.sleep(self.interval_s)

        task = asyncio.create_task(sample())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, points in self.samples.items():
            values = [mb for _, mb in points]
            if not values:
                continue
            half = len(values) // 2
            out[name] = {
                "max_mb": max(values),
                "first_half_max_mb": max(values[:half] or values),
                "second_half_max_mb": max(values[half:] or values),
                "series": points,
            }
        return out
