"""Closed- and open-loop load with a record of every request.

Established tools fall short here: wrk and wrk2 send one fixed body (every
request must carry a unique image) and report aggregates, not each request's
outcome; Locust's per-user model costs more CPU than the system under test on
a two-core machine. So this is a small asyncio generator: a ``Target`` sends one
request and returns its outcome; the two loops decide when to call it.
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

import httpx
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

    Samples started during the warm-up are dropped from the result.
    """
    counter = itertools.count()
    run = Run()
    stop_at = run.started + warmup_s + duration_s

    async def caller() -> None:
        while time.perf_counter() < stop_at:
            await run.call(target, next(counter))

    await asyncio.gather(*(caller() for _ in range(callers)))
    run.ended = time.perf_counter()
    return _after_warmup(run, warmup_s)


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


def http_target(
    client: httpx.AsyncClient, url: str, image_bytes: int, timeout_s: float = 600.0
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
        response = await client.post(
            url,
            content=payload,
            headers={"content-type": "application/json"},
            timeout=timeout_s,
        )
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    return send
