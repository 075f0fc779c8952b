"""Shared pieces of the fault tests: HTTP load, its tally, and the audit.

A fault test drives unique pages through the real API with the bench load
generator (``bench.loadgen``), injects its fault, and then proves the delivery
guarantee two ways: from the callers' side (every accepted call was answered)
and from the system's side (every request that reached the requests topic has
a final answer stored in Redis, which ``GET /parse/{id}`` serves).

    load = Load(client, [api.url], "sigkill")
    run = await load.closed(callers=24, until=stop)
    audit = await Audit.of(settings, redis, api.url, load.accepted_ids())
    summary = report("worker_sigkill", load, audit, simulator)
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from bench.images import unique_png
from bench.loadgen import Run, Sample, open_loop
from bench.simulator import RunningSimulator
from common.kafka import client_options
from common.settings import Settings
from common.store import Keys

# Refusals: the request was turned away before it was queued.
REFUSAL_CODES = frozenset(
    {
        "kafka_unavailable",
        "redis_unavailable",
        "overloaded",
        "backend_unavailable",
        "rate_limited",
        "unauthorized",
    }
)
# Deadlines in these tests are far away: reaching one means nobody answered.
UNANSWERED_CODES = frozenset({"deadline_exceeded"})
CALL_TIMEOUT_S = 120.0
SETTLE_TIMEOUT_S = 90.0


def page(sequence: int, tag: str, image_bytes: int = 2048) -> dict[str, str]:
    """A JSON parse body with an image and filename unique to ``tag``."""
    image = unique_png(sequence, image_bytes)
    return {
        "image_data": base64.b64encode(image).decode(),
        "filename": f"{tag}-{sequence}.png",
    }


def accepted(sample: Sample) -> bool:
    """Was the call queued? Anything but a refusal or bad input counts."""
    if sample.status in (0, 200):
        return True
    if sample.code in REFUSAL_CODES:
        return False
    return sample.status >= 500 or sample.code == "cancelled"


def lost(sample: Sample) -> bool:
    """An accepted call that ended without an answer."""
    return sample.status == 0 or sample.code in UNANSWERED_CODES


class Load:
    """Unique pages POSTed to one or more APIs, with every request id kept."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        urls: Sequence[str],
        tag: str,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
        image_bytes: int = 2048,
    ) -> None:
        self.client = client
        self.urls = list(urls)
        self.tag = tag
        self.timeout_s = timeout_s
        self.headers = {
            "content-type": "application/json",
            "X-Request-Timeout": str(timeout_s),
            **(headers or {}),
        }
        self.image_bytes = image_bytes
        self.bodies: dict[int, dict[str, str]] = {}
        """Bodies sent instead of the generated page, by sequence number."""
        self.request_ids: dict[int, str] = {}
        self.run = Run()
        self._sequence = itertools.count()

    async def send(self, sequence: int) -> tuple[int, dict[str, Any]]:
        """The load generator's target: one POST /parse, its status and body."""
        url = self.urls[sequence % len(self.urls)]
        response = await self.client.post(
            f"{url}/parse",
            content=orjson.dumps(
                self.bodies.get(sequence) or page(sequence, self.tag, self.image_bytes)
            ),
            headers=self.headers_for(sequence),
            timeout=self.timeout_s + 30,
        )
        if request_id := response.headers.get("x-request-id"):
            self.request_ids[sequence] = request_id
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def headers_for(self, sequence: int) -> dict[str, str]:
        return self.headers

    async def closed(self, callers: int, until: asyncio.Event) -> Run:
        """``callers`` callers sending back to back until ``until`` is set."""

        async def caller() -> None:
            while not until.is_set():
                await self.run.call(self.send, next(self._sequence))

        await asyncio.gather(*(caller() for _ in range(callers)))
        self.run.ended = time.perf_counter()
        return self.run

    async def open(self, rate_per_s: float, duration_s: float) -> Run:
        """Poisson arrivals at ``rate_per_s`` for ``duration_s``.

        ``samples`` are filled in when it returns; until then ``run`` only
        keeps time, from the same instant as the samples' ``started_s``.
        """
        self.run = Run()
        self.run = await open_loop(self.send, rate_per_s, duration_s)
        return self.run

    @property
    def samples(self) -> list[Sample]:
        return self.run.samples

    def count(self, predicate: Callable[[Sample], bool]) -> int:
        return sum(1 for sample in self.samples if predicate(sample))

    @property
    def ok(self) -> int:
        return self.count(lambda s: s.status == 200)

    def accepted_ids(self) -> list[str]:
        return [
            self.request_ids[s.sequence]
            for s in self.samples
            if accepted(s) and s.sequence in self.request_ids
        ]

    def codes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for sample in self.samples:
            key = sample.code or str(sample.status)
            found[key] = found.get(key, 0) + 1
        return dict(sorted(found.items()))


@dataclass
class Audit:
    """The system's side: requests in Kafka without a stored answer, and GETs."""

    in_topic: int
    unanswered: list[str]
    """Ids on the requests topic with no final answer in Redis."""
    lookups_missing: list[str]
    """Accepted ids that ``GET /parse/{id}`` does not answer with a final body."""

    @property
    def lost(self) -> int:
        return len(set(self.unanswered) | set(self.lookups_missing))

    @classmethod
    async def of(
        cls,
        settings: Settings,
        redis: Redis,
        api_url: str,
        request_ids: Sequence[str],
        *,
        timeout_s: float = SETTLE_TIMEOUT_S,
    ) -> Audit:
        """Wait (up to ``timeout_s``) for every queued request to be answered."""
        keys = Keys(settings.redis_key_prefix)
        queued = await topic_keys(settings, settings.requests_topic)
        deadline = time.monotonic() + timeout_s
        unanswered = await _without_result(redis, keys, queued)
        while unanswered and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            unanswered = await _without_result(redis, keys, unanswered)
        missing = await _lookups_missing(api_url, request_ids)
        return cls(len(queued), unanswered, missing)


async def _without_result(redis: Redis, keys: Keys, ids: Sequence[str]) -> list[str]:
    if not ids:
        return []
    found = await redis.mget([keys.result(i) for i in ids])
    return [i for i, raw in zip(ids, found, strict=True) if raw is None]


async def _lookups_missing(api_url: str, request_ids: Sequence[str]) -> list[str]:
    missing: list[str] = []
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def look(request_id: str) -> None:
            response = await client.get(f"{api_url}/parse/{request_id}")
            body = response.json()
            final = "success" in body and body.get("request_id") == request_id
            if response.status_code == 202 or not final:
                missing.append(request_id)

        await asyncio.gather(*(look(i) for i in request_ids))
    return missing


async def topic_keys(settings: Settings, topic: str) -> list[str]:
    """The keys (request ids) of every message on ``topic``, start to end."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions(settings, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        keys: list[str] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while remaining:
            assert time.monotonic() < deadline, f"{topic} not read to its end"
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                keys.extend(r.key.decode() for r in records if r.key is not None)
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return keys
    finally:
        await consumer.stop()


async def partitions(settings: Settings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


def sent_twice(simulator: RunningSimulator) -> int:
    """Images the backend parsed more than once."""
    return len(simulator.stats(include_processed=False)["duplicates"])


def latency_figures(samples: Sequence[Sample]) -> dict[str, float]:
    """p50 / p95 / max latency in seconds of ``samples`` (empty: nothing)."""
    if not samples:
        return {}
    latencies = sorted(s.latency_s for s in samples)
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    return {
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(p95, 3),
        "max_s": round(latencies[-1], 3),
    }


@dataclass
class Summary:
    """What a fault test measured; printed as one JSON line and asserted."""

    scenario: str
    accepted: int
    ok: int
    error: int
    lost: int
    sent_twice: int
    refused: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k != "extra"}
        return "RELIABILITY " + orjson.dumps({**fields, **self.extra}).decode()


def report(
    scenario: str,
    load: Load,
    audit: Audit,
    simulator: RunningSimulator,
    record: Callable[[str, object], None] | None = None,
    **extra: Any,
) -> Summary:
    """Tally ``load`` and ``audit``, print the summary line, return it."""
    samples = load.samples
    accepted_samples = [s for s in samples if accepted(s)]
    ok = sum(1 for s in accepted_samples if s.status == 200)
    caller_lost = sum(1 for s in accepted_samples if lost(s))
    summary = Summary(
        scenario=scenario,
        accepted=len(accepted_samples),
        ok=ok,
        error=len(accepted_samples) - ok - caller_lost,
        lost=caller_lost + audit.lost,
        sent_twice=sent_twice(simulator),
        refused=len(samples) - len(accepted_samples),
        extra={"in_topic": audit.in_topic, "codes": load.codes(), **extra},
    )
    print("\n" + summary.line())
    if record is not None:
        for name, value in vars(summary).items():
            record(name, value)
    return summary


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> None:
    """Poll ``condition`` every 0.1 s; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)
