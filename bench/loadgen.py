"""Closed- and open-loop load with a record of every request.

Established tools fall short here: wrk and wrk2 send one fixed body (every
request must carry a unique image) and report aggregates, not each request's
outcome; Locust's per-user model costs more CPU than the system under test on
a two-core machine. So this is a small asyncio generator: a ``Target`` sends one
request and returns its outcome; the two loops decide when to call it. It uses
aiohttp's client, which costs a fraction of httpx's CPU per request with a
thousand open connections, so the generator does not become the bottleneck.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.images import unique_png


@dataclass(slots=True)
class Sample:
    sequence: int
    started_s: float
    """Seconds since the run started."""
    latency_s: float
    status: int
    code: str = ""
    processing_s: float = 0.0
    batch_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


Target = Callable[[int], Awaitable[tuple[int, dict[str, Any]]]]
"""Sends request number ``n``; answers the HTTP-like status and the body."""


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    ended: float = 0.0

    @property
    def duration_s(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    async def call(self, target: Target, sequence: int) -> None:
        began = time.perf_counter()
        try:
            status, body = await target(sequence)
        except Exception as exc:  # every failure is a data point
            status, body = 0, {"error": {"code": type(exc).__name__}}
        error = body.get("error") or {}
        self.samples.append(
            Sample(
                sequence=sequence,
                started_s=began - self.started,
                latency_s=time.perf_counter() - began,
                status=status,
                code=str(error.get("code", "")) if isinstance(error, dict) else "",
                processing_s=float(body.get("processing_time_seconds") or 0.0),
                batch_id=str(body.get("batch_id") or ""),
            )
        )


async def closed_loop(
    target: Target, callers: int, duration_s: float, *, warmup_s: float = 0.0
) -> Run:
    """``callers`` concurrent callers, each sending again as soon as answered.

    Figures come from a steady window: requests that completed between the end
    of the warm-up and ``warmup_s + duration_s``. Calls still open when the
    window closes are abandoned (the connection is closed, as a caller that
    gives up would), so a long queue does not stretch the run.
    """
    counter = itertools.count()
    run = Run()
    stop_at = run.started + warmup_s + duration_s

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            await run.call(target, next(counter))

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    run.ended = stop_at
    return _completed_in_window(run, warmup_s, stop_at)


def _completed_in_window(run: Run, warmup_s: float, stop_at: float) -> Run:
    window_start = run.started + warmup_s
    kept = [
        sample
        for sample in run.samples
        if warmup_s <= sample.started_s + sample.latency_s <= stop_at - run.started
    ]
    for sample in kept:
        sample.started_s -= warmup_s
    return Run(samples=kept, started=window_start, ended=stop_at)


async def open_loop(
    target: Target,
    rate_per_s: float,
    duration_s: float,
    *,
    seed: int = 1,
    warmup_s: float = 0.0,
) -> Run:
    """Poisson arrivals at ``rate_per_s``, whatever the answers' latency."""
    rng = random.Random(seed)
    run = Run()
    tasks: list[asyncio.Task[None]] = []
    next_at = run.started
    sequence = 0
    while next_at < run.started + warmup_s + duration_s:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run.call(target, sequence)))
        sequence += 1
        next_at += rng.expovariate(rate_per_s)
    await asyncio.gather(*tasks)
    run.ended = time.perf_counter()
    return _after_warmup(run, warmup_s)


def _after_warmup(run: Run, warmup_s: float) -> Run:
    if warmup_s <= 0:
        return run
    kept = [s for s in run.samples if s.started_s >= warmup_s]
    for sample in kept:
        sample.started_s -= warmup_s
    trimmed = Run(samples=kept, started=run.started + warmup_s, ended=run.ended)
    return trimmed


def http_session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def http_target(
    client: aiohttp.ClientSession, url: str, image_bytes: int, timeout_s: float = 600.0
) -> Target:
    """POST /parse with a unique PNG of about ``image_bytes`` per request."""

    async def send(sequence: int) -> tuple[int, dict[str, Any]]:
        image = unique_png(sequence, image_bytes)
        payload = orjson.dumps(
            {
                "image_data": base64.b64encode(image).decode(),
                "filename": f"page-{sequence}.png",
            }
        )
        async with client.post(
            url,
            data=payload,
            headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            content = await response.read()
            status = response.status
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = {}
        return status, body if isinstance(body, dict) else {}

    return send
