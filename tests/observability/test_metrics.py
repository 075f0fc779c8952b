"""What the API and the worker tell Prometheus about real traffic.

One stack serves the module: the traffic is driven once (N good requests and a
few bad ones through the API), both processes are scraped before and after,
and each test checks one part of the operators' contract against those scrapes.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.metrics import outcome_for
from tests.api.images import b64, make_image
from tests.observability.conftest import PARTITIONS, MakeStack, Stack
from tests.observability.scrape import (
    CREATED_SUFFIX,
    HISTOGRAM_SUFFIXES,
    Scrape,
    delta,
)
from tests.stream.worker_kit import wait_until

pytestmark = pytest.mark.integration

GOOD = 16
BAD_BODIES: list[dict[str, Any]] = [
    {"json": {"image_data": "not base64 at all!", "filename": "a.png"}},
    {"json": {"image_data": "also not base64?", "filename": "b.png"}},
    {"content": b"nope", "headers": {"Content-Type": "application/json"}},
    {
        "json": {
            "image_data": base64.b64encode(b"plain text, no image").decode(),
            "filename": "c.png",
        }
    },
]
# Worker counters are exact, the billed time is summed from rounded figures.
BILLED_TOLERANCE_S = 0.01
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
TIME_WORDS = ("duration", "latency", "wait", "time", "seconds")
MAX_SERIES_PER_FAMILY = 64

# What an operator needs, by name and type, from each process.
API_METRICS = {
    "dolphin_api_requests": "counter",
    "dolphin_api_request_duration_seconds": "histogram",
    "dolphin_api_queue_depth": "gauge",
    "dolphin_api_queue_capacity": "gauge",
    "dolphin_api_inflight_requests": "gauge",
}
WORKER_METRICS = {
    "dolphin_worker_messages": "counter",
    "dolphin_worker_queue_wait_seconds": "histogram",
    "dolphin_worker_batch_size": "histogram",
    "dolphin_worker_batch_duration_seconds": "histogram",
    "dolphin_worker_backend_calls": "counter",
    "dolphin_worker_backend_retries": "counter",
    "dolphin_worker_breaker_state": "gauge",
    "dolphin_worker_batches_in_flight": "gauge",
    "dolphin_worker_backend_seconds": "counter",
    "dolphin_worker_images": "counter",
    "dolphin_worker_consumer_lag": "gauge",
    "dolphin_worker_dlq": "counter",
}


@dataclass
class Traffic:
    stack: Stack
    api_before: Scrape
    api_after: Scrape
    worker_before: Scrape
    worker_after: Scrape
    billed_before: dict[str, Any]
    billed_after: dict[str, Any]
    good: list[httpx.Response]
    bad: list[httpx.Response]
    texts: list[str]


@pytest.fixture(scope="module")
async def stack(make_stack: MakeStack) -> Stack:
    return await make_stack()


@pytest.fixture(scope="module")
async def traffic(stack: Stack) -> Traffic:
    """GOOD parsed pages and a few refused ones, with scrapes around them."""
    api_before, worker_before = await stack.scrape_api(), await stack.scrape_worker()
    billed_before = stack.simulator.stats(include_processed=False)

    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as client:
        good = await asyncio.gather(
            *(
                client.post(
                    "/parse",
                    json={
                        "image_data": b64(make_image(seed=i)),
                        "filename": f"{i}.png",
                    },
                )
                for i in range(GOOD)
            )
        )
        bad = [await client.post("/parse", **body) for body in BAD_BODIES]

    # The worker records a batch after its replies are out; wait for the last.
    async def recorded() -> bool:
        now = await stack.scrape_worker()
        return delta(worker_before, now, "dolphin_worker_images_total") >= GOOD

    await wait_until(recorded, 60, "the worker to record every image")
    api_after, worker_after = await stack.scrape_api(), await stack.scrape_worker()
    texts = [await _raw(stack.api_url), await _raw(stack.worker.url)]
    return Traffic(
        stack,
        api_before,
        api_after,
        worker_before,
        worker_after,
        billed_before,
        stack.simulator.stats(include_processed=False),
        list(good),
        bad,
        texts,
    )


async def _raw(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        return (await client.get(url + "/metrics")).text


async def test_api_counts_every_answer_by_outcome_status_and_code(
    traffic: Traffic,
) -> None:
    """N parsed pages add N to {outcome=ok, status=200}; each refusal adds one to
    its own outcome, status and error code."""
    assert [r.status_code for r in traffic.good] == [200] * GOOD
    assert all(400 <= r.status_code < 500 for r in traffic.bad)
    refusals = Counter((r.status_code, r.json()["error"]["code"]) for r in traffic.bad)
    assert len(refusals) >= 3, "the bad bodies should hit distinct codes"

    name = "dolphin_api_requests_total"
    ok = {"outcome": "ok", "status": "200", "code": ""}
    assert delta(traffic.api_before, traffic.api_after, name, ok) == GOOD
    for (status, code), count in refusals.items():
        labels = {"outcome": outcome_for(status), "status": str(status), "code": code}
        assert delta(traffic.api_before, traffic.api_after, name, labels) == count
    total = delta(traffic.api_before, traffic.api_after, name)
    assert total == GOOD + len(BAD_BODIES)


async def test_api_latency_histogram_observes_each_answer_by_outcome(
    traffic: Traffic,
) -> None:
    """The end-to-end latency histogram counts N ok answers, its buckets are
    cumulative, and the mean lies between zero and the slowest call."""
    name = "dolphin_api_request_duration_seconds"
    before, after = traffic.api_before, traffic.api_after
    ok = {"outcome": "ok"}
    assert delta(before, after, name + "_count", ok) == GOOD
    assert delta(before, after, name + "_count") == GOOD + len(BAD_BODIES)

    slowest_s = max(r.elapsed.total_seconds() for r in traffic.good)
    added_s = delta(before, after, name + "_sum", ok)
    assert 0 < added_s / GOOD <= slowest_s

    buckets = sorted(
        (s for s in after.samples(name + "_bucket") if s.labels["outcome"] == "ok"),
        key=lambda s: float(s.labels["le"]),
    )
    values = [s.value for s in buckets]
    assert values == sorted(values)
    assert buckets[-1].labels["le"] == "+Inf"
    assert values[-1] == after.value(name + "_count", **ok)


async def test_api_gauges_show_queue_depth_capacity_and_waiting_calls(
    traffic: Traffic,
) -> None:
    """At rest the queue is empty, its capacity is the configured one and no
    call is waiting."""
    after = await traffic.stack.scrape_api()

    assert after.value("dolphin_api_queue_depth") == 0
    assert (
        after.value("dolphin_api_queue_capacity")
        == traffic.stack.settings.queue_capacity
    )
    assert after.value("dolphin_api_inflight_requests") == 0


async def test_worker_counts_images_batches_and_time_queued(
    traffic: Traffic,
) -> None:
    """The worker counts N images and N ok messages, its batch size histogram
    sums to N over as many batches as the backend ran, and each request's
    time queued is observed once."""
    before, after = traffic.worker_before, traffic.worker_after
    batches = traffic.billed_after["batches"] - traffic.billed_before["batches"]

    assert delta(before, after, "dolphin_worker_images_total") == GOOD
    assert delta(before, after, "dolphin_worker_messages_total", {"outcome": "ok"}) == (
        GOOD
    )
    assert delta(before, after, "dolphin_worker_batch_size_sum") == GOOD
    assert delta(before, after, "dolphin_worker_batch_size_count") == batches
    assert delta(before, after, "dolphin_worker_batch_duration_seconds_count") == (
        batches
    )
    assert delta(before, after, "dolphin_worker_queue_wait_seconds_count") == GOOD


async def test_backend_calls_and_seconds_match_what_the_backend_billed(
    traffic: Traffic,
) -> None:
    """One ok call per batch the backend ran, no retries, and the backend-seconds
    counter grows by the time the backend billed."""
    before, after = traffic.worker_before, traffic.worker_after
    billed_s = (
        traffic.billed_after["backend_seconds"]
        - traffic.billed_before["backend_seconds"]
    )
    batches = traffic.billed_after["batches"] - traffic.billed_before["batches"]
    calls = after.by_label("dolphin_worker_backend_calls_total", "outcome")
    calls_before = before.by_label("dolphin_worker_backend_calls_total", "outcome")

    assert batches >= 1
    assert calls.get("ok", 0) - calls_before.get("ok", 0) == batches
    assert set(calls) == {"ok"}
    assert delta(before, after, "dolphin_worker_backend_retries_total") == 0
    counted_s = delta(before, after, "dolphin_worker_backend_seconds_total")
    assert counted_s == pytest.approx(billed_s, abs=BILLED_TOLERANCE_S)


async def test_breaker_and_batches_in_flight_are_idle_at_rest(
    traffic: Traffic,
) -> None:
    """With the traffic answered the breaker reads closed (0) and no batch is in
    flight."""
    after = await traffic.stack.scrape_worker()

    assert after.has("dolphin_worker_breaker_state")
    assert after.value("dolphin_worker_breaker_state") == 0
    assert after.has("dolphin_worker_batches_in_flight")
    assert after.value("dolphin_worker_batches_in_flight") == 0


async def test_consumer_lag_is_reported_per_partition_and_falls_to_zero(
    traffic: Traffic,
) -> None:
    """Once the answered offsets are committed, the lag gauge has one series per
    partition of the requests topic, each 0."""
    lag: dict[str, float] = {}

    async def settled() -> bool:
        nonlocal lag
        now = await traffic.stack.scrape_worker()
        lag = now.by_label("dolphin_worker_consumer_lag", "partition")
        return len(lag) == PARTITIONS and set(lag.values()) == {0}

    await wait_until(settled, 60, "the worker's lag gauge to read 0")
    assert set(lag) == {str(p) for p in range(PARTITIONS)}


async def test_operators_metrics_are_exposed_with_their_types(
    traffic: Traffic,
) -> None:
    """Every metric the dashboard and alerts need is exposed, with its type and
    a help text."""
    for scrape, wanted in (
        (traffic.api_after, API_METRICS),
        (traffic.worker_after, WORKER_METRICS),
    ):
        families = {f.name: f for f in scrape.ours()}
        for name, kind in wanted.items():
            assert name in families, f"{name} is not exposed"
            assert families[name].type == kind, name
            assert families[name].documentation, f"{name} has no help text"


async def test_metric_names_follow_prometheus_conventions(traffic: Traffic) -> None:
    """Counters end in _total, gauges never do, and a metric of time or size
    names its base unit (_seconds, _bytes) right before any _total."""
    for scrape in (traffic.api_after, traffic.worker_after):
        for family in scrape.ours():
            name = family.name
            assert re.fullmatch(r"dolphin_(api|worker)_[a-z0-9_]+", name), name
            samples = {s.name for s in family.samples}
            if family.type == "counter":
                assert samples <= {name + "_total"}, name
            else:
                assert not name.endswith("_total"), name
            if family.type == "histogram":
                allowed = {name + suffix for suffix in HISTOGRAM_SUFFIXES}
                assert samples <= allowed, name
            stem = name.removesuffix("_total")
            if any(word in stem for word in TIME_WORDS):
                assert stem.endswith("_seconds"), f"{name} does not name its unit"
            if "bytes" in stem:
                assert stem.endswith("_bytes"), name
            assert not stem.endswith(("_milliseconds", "_ms", "_minutes", "_kb")), name


async def test_labels_are_low_cardinality_and_carry_no_ids(traffic: Traffic) -> None:
    """No label value looks like a request id, no id of this traffic appears in
    either page, and no family has more than a handful of series."""
    ids = [r.json()["request_id"] for r in traffic.good]
    for text in traffic.texts:
        assert not any(request_id in text for request_id in ids)

    for scrape in (traffic.api_after, traffic.worker_after):
        for family in scrape.ours():
            series = set()
            for sample in family.samples:
                if sample.name.endswith(CREATED_SUFFIX):
                    continue
                for value in sample.labels.values():
                    assert not REQUEST_ID.search(value), (family.name, value)
                    assert len(value) <= 40, (family.name, value)
                series.add(
                    tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                )
            assert len(series) <= MAX_SERIES_PER_FAMILY, family.name
