"""``task bench``: every scenario, the baselines beside the connector, one JSON.

    python -m bench.run [--quick] [--only saturation,light,...]

Writes ``bench/results/latest.json``; ``python -m bench.report`` turns it into
BENCHMARKS.md and the plots (``task bench`` runs both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.loadgen import Run, closed_loop, http_session, http_target, open_loop
from bench.measure import MemoryWatch, sim_reset, sim_stats, summarize
from bench.stack import Proc, Stack

RESULTS = Path(__file__).resolve().parent / "results"
COST = {"fixed_ms": 400, "per_image_ms": 25, "containers": 4}
IDEAL_PER_S = (
    COST["containers"] * 32 / ((COST["fixed_ms"] + 32 * COST["per_image_ms"]) / 1000)
)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def client(connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=60)


Load = Callable[[Callable[..., Any]], Awaitable[Run]]


async def measure(
    stack: Stack, target_url: str, load: Load, image_bytes: int, watch: list[Proc]
) -> dict[str, Any]:
    sim = stack.procs["simulator"]
    async with client(4) as http, http_session(2100) as session:
        await sim_reset(http, sim)
        memory = MemoryWatch(watch)
        async with memory.watching():
            run = await load(http_target(session, target_url + "/parse", image_bytes))
        stats = await sim_stats(http, sim)
    figures = summarize(run, stats)
    figures["memory"] = memory.summary()
    return figures


def _namespace() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


async def saturation(stack: Stack, quick: bool) -> dict[str, Any]:
    duration, warmup = (15, 5) if quick else (30, 8)
    stack.start_simulator(**COST)

    def load(callers: int, seconds: float) -> Load:
        return lambda target: closed_loop(target, callers, seconds, warmup_s=warmup)

    api, worker = stack.start_connector(_namespace())
    connector = await measure(stack, api.url, load(1000, duration), 2048, [api, worker])
    stack.stop_connector()
    inproc = stack.start_inprocess()
    baseline_b = await measure(stack, inproc.url, load(1000, duration), 2048, [inproc])
    stack.stop("inprocess")
    direct = stack.start_direct_proxy()
    baseline_a = await measure(stack, direct.url, load(1000, 20), 2048, [direct])
    stack.stop("direct")
    return {"connector": connector, "baseline_a": baseline_a, "baseline_b": baseline_b}


async def light(stack: Stack, quick: bool) -> dict[str, Any]:
    count = 20 if quick else 40
    stack.start_simulator(**COST)
    backend_s = (COST["fixed_ms"] + COST["per_image_ms"]) / 1000

    async def one_by_one(target: Callable[..., Any]) -> Run:
        run = Run()
        for sequence in range(count):
            await run.call(target, sequence)
            await asyncio.sleep(0.05)
        run.ended = time.perf_counter()
        return run

    results: dict[str, Any] = {}
    api, worker = stack.start_connector(_namespace())
    results["connector"] = await measure(
        stack, api.url, one_by_one, 2048, [api, worker]
    )
    stack.stop_connector()
    inproc = stack.start_inprocess()
    results["baseline_b"] = await measure(stack, inproc.url, one_by_one, 2048, [inproc])
    stack.stop("inprocess")
    direct = stack.start_direct_proxy()
    results["baseline_a"] = await measure(stack, direct.url, one_by_one, 2048, [direct])
    stack.stop("direct")
    for figures in results.values():
        overhead = sorted(max(0.0, v - backend_s) for v in figures["latencies"])
        figures["overhead_s"] = {
            "p50": round(overhead[len(overhead) // 2], 4),
            "p99": round(
                overhead[min(len(overhead) - 1, int(len(overhead) * 0.99))], 4
            ),
        }
    return results


async def medium(stack: Stack, quick: bool) -> dict[str, Any]:
    duration, warmup = (30, 5) if quick else (60, 8)
    rate = IDEAL_PER_S / 2
    stack.start_simulator(**COST)

    def load(target: Callable[..., Any]) -> Awaitable[Run]:
        return open_loop(target, rate, duration, seed=11, warmup_s=warmup)

    results: dict[str, Any] = {"offered_per_s": round(rate, 2)}
    for policy in ("adaptive", "greedy"):
        api, worker = stack.start_connector(
            _namespace(), DOLPHIN_BATCH_POLICY=policy, DOLPHIN_LATENCY_TARGET_S="2.0"
        )
        results[policy] = await measure(stack, api.url, load, 2048, [api, worker])
        stack.stop_connector()
    return results


async def memory(stack: Stack, quick: bool) -> dict[str, Any]:
    duration = 20 if quick else 40
    stack.start_simulator(**COST)
    api, worker = stack.start_connector(_namespace())

    def load(target: Callable[..., Any]) -> Awaitable[Run]:
        return closed_loop(target, 2000, duration, warmup_s=3)

    figures = await measure(stack, api.url, load, 200_000, [api, worker])
    stack.stop_connector()
    return {"connector": figures}


async def capacity(stack: Stack, quick: bool) -> dict[str, Any]:
    duration = 10 if quick else 20
    stack.start_simulator(fixed_ms=0, per_image_ms=0, containers=4)

    def load(target: Callable[..., Any]) -> Awaitable[Run]:
        return closed_loop(target, 200, duration, warmup_s=3)

    api, worker = stack.start_connector(_namespace())
    connector = await measure(stack, api.url, load, 20_000, [api, worker])
    stack.stop_connector()
    inproc = stack.start_inprocess()
    baseline_b = await measure(stack, inproc.url, load, 20_000, [inproc])
    stack.stop("inprocess")
    return {"connector": connector, "baseline_b": baseline_b}


async def sweep(stack: Stack, quick: bool) -> dict[str, Any]:
    """Throughput against offered load, open loop, for the throughput plot."""
    duration = 8 if quick else 12
    stack.start_simulator(**COST)
    api, worker = stack.start_connector(_namespace())
    points = []
    for fraction in (0.25, 0.5, 0.75, 1.0, 1.25):
        rate = IDEAL_PER_S * fraction

        def load(target: Callable[..., Any], rate: float = rate) -> Awaitable[Run]:
            return open_loop(target, rate, duration, seed=5, warmup_s=2)

        figures = await measure(stack, api.url, load, 2048, [api, worker])
        # Answered per second over the whole window, queued backlog included.
        points.append(
            {
                "offered_per_s": round(rate, 2),
                "throughput_per_s": figures["throughput_per_s"],
                "p99_s": figures["latency_s"]["p99"],
                "mean_batch_size": figures["mean_batch_size"],
            }
        )
    stack.stop_connector()
    return {"connector": points}


SCENARIOS = {
    "saturation": saturation,
    "light": light,
    "medium": medium,
    "memory": memory,
    "capacity": capacity,
    "sweep": sweep,
}


async def main_async(names: list[str], quick: bool) -> dict[str, Any]:
    stack = Stack()
    results: dict[str, Any] = {
        "machine": machine(),
        "cost_model": COST,
        "ideal_per_s": round(IDEAL_PER_S, 2),
        "scenarios": {},
    }
    started = time.perf_counter()
    try:
        await asyncio.to_thread(stack.start_services)
        for name in names:
            print(f"== {name}", flush=True)
            began = time.perf_counter()
            results["scenarios"][name] = await SCENARIOS[name](stack, quick)
            print(f"   done in {time.perf_counter() - began:.0f}s", flush=True)
    finally:
        stack.stop_all()
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    results = asyncio.run(main_async(names, args.quick))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists() and set(names) != set(SCENARIOS):
        # A partial run updates its scenarios and keeps the others.
        previous = json.loads(args.out.read_text())
        previous["scenarios"].update(results["scenarios"])
        previous["machine"] = results["machine"]
        results = {**previous, "scenarios": previous["scenarios"]}
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} in {results['wall_time_s']}s")


if __name__ == "__main__":
    main()
