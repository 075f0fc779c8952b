"""ModalBackend against the Modal simulator, and against canned answers for the
malformed replies the simulator never gives."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from bench.simulator import RunningSimulator, SimConfig, start_in_thread
from common.settings import load_settings
from stream.backends.base import BackendError, BatchItem, ItemError, ItemResult
from stream.backends.modal import ModalBackend

StartSim = Callable[..., RunningSimulator]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Factory: a thread-served simulator with fast defaults, stopped after."""
    started: list[RunningSimulator] = []

    def start(**config: Any) -> RunningSimulator:
        running = start_in_thread(
            SimConfig(**{"fixed_ms": 5.0, "per_image_ms": 1.0, **config})
        )
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (seed % 256, 30, 7)).save(out, "PNG")
    return out.getvalue()


def batch(count: int) -> list[BatchItem]:
    return [BatchItem(png(i), f"page-{i}.png") for i in range(count)]


def backend_for(base_url: str, **options: Any) -> ModalBackend:
    return ModalBackend(base_url, **{"retry_base_s": 0.01, **options})


async def test_parses_a_batch_in_input_order(start_sim: StartSim) -> None:
    """Results come back per image, in order, with integer boxes and the
    backend's batch id and billed time."""
    sim = start_sim()
    backend = backend_for(sim.base_url)
    try:
        outcome = await backend.parse_batch(batch(3))
    finally:
        await backend.aclose()

    assert [item.filename for item in outcome.items] == [
        "page-0.png",
        "page-1.png",
        "page-2.png",
    ]
    first = outcome.items[0]
    assert isinstance(first, ItemResult)
    assert all(isinstance(v, int) for e in first.elements for v in e["bbox"])
    assert [e["reading_order"] for e in first.elements] == [0, 1]
    assert outcome.batch_id.startswith("sim-")
    assert outcome.backend_seconds == pytest.approx(0.008)
    assert outcome.extra["attempts"] == 1


async def test_retries_a_5xx_then_succeeds(start_sim: StartSim) -> None:
    """A 500 on the first try is retried; the second try's answer is used."""
    # With seed 1 the first draw fails (0.13 < 0.5) and the second does not.
    sim = start_sim(fail_rate=0.5, fail_mode="5xx", seed=1)
    backend = backend_for(sim.base_url)
    try:
        outcome = await backend.parse_batch(batch(2))
    finally:
        await backend.aclose()

    assert outcome.extra["attempts"] == 2
    stats = sim.stats(include_processed=False)
    assert stats["requests"] == 2
    assert stats["injected"]["5xx"] == 1


async def test_gives_up_after_the_configured_attempts(
    start_sim: StartSim, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend that keeps answering 503 costs exactly `attempts` tries, each
    retry logged with its attempt number."""
    sim = start_sim(fail_rate=1.0, fail_mode="5xx", fail_status=503)
    backend = backend_for(sim.base_url, attempts=3)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.parse_batch(batch(1))
    finally:
        await backend.aclose()

    assert not caught.value.batch_failed
    assert "3 attempts" in str(caught.value)
    assert sim.stats(include_processed=False)["requests"] == 3
    retries = [r for r in caplog.records if r.getMessage() == "backend_retry"]
    assert [getattr(r, "attempt", None) for r in retries] == [1, 2]


async def test_a_4xx_is_not_retried(start_sim: StartSim) -> None:
    """A 400 means the request is wrong; sending it again would not help."""
    sim = start_sim(fail_rate=1.0, fail_mode="5xx", fail_status=400)
    backend = backend_for(sim.base_url)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.parse_batch(batch(1))
    finally:
        await backend.aclose()

    assert not caught.value.retriable
    assert sim.stats(include_processed=False)["requests"] == 1


async def test_a_failed_batch_is_reported_as_batch_failed(start_sim: StartSim) -> None:
    """An undecodable image makes Modal fail the batch: batch_failed is set so
    the caller splits it, and it is not retried as is."""
    sim = start_sim()
    backend = backend_for(sim.base_url)
    items = [*batch(2), BatchItem(b"not an image", "junk.png")]
    try:
        with pytest.raises(BackendError) as caught:
            await backend.parse_batch(items)
    finally:
        await backend.aclose()

    assert caught.value.batch_failed
    assert "junk.png" in str(caught.value)
    assert sim.stats(include_processed=False)["requests"] == 1


async def test_follows_the_303_of_a_long_request(start_sim: StartSim) -> None:
    """Modal's redirect to the result URL is followed with a GET."""
    sim = start_sim(redirect_after_s=0.0, fixed_ms=50.0)
    backend = backend_for(sim.base_url)
    try:
        outcome = await backend.parse_batch(batch(2))
    finally:
        await backend.aclose()

    assert len(outcome.items) == 2
    assert sim.stats(include_processed=False)["redirects"] >= 1


async def test_a_timeout_is_retried_then_fails(start_sim: StartSim) -> None:
    """Each try is cut at timeout_s; after the last one the batch fails."""
    sim = start_sim(fail_rate=1.0, fail_mode="slow", slow_ms=2000.0)
    backend = backend_for(sim.base_url, timeout_s=0.2, attempts=2)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.parse_batch(batch(1))
    finally:
        await backend.aclose()

    assert "0.2 s" in str(caught.value)
    assert sim.stats(include_processed=False)["requests"] == 2


async def test_a_dropped_connection_is_retried(start_sim: StartSim) -> None:
    """A connection closed without an answer counts as a retriable failure."""
    sim = start_sim(fail_rate=0.5, fail_mode="drop", seed=1)
    backend = backend_for(sim.base_url)
    try:
        outcome = await backend.parse_batch(batch(1))
    finally:
        await backend.aclose()

    assert outcome.extra["attempts"] == 2


async def test_health_follows_the_endpoint(start_sim: StartSim) -> None:
    """GET /health: healthy when it answers 200, unhealthy otherwise."""
    sim = start_sim()
    backend = backend_for(sim.base_url)
    try:
        assert (await backend.health()).healthy
        sim.control(healthy=False)
        health = await backend.health()
    finally:
        await backend.aclose()

    assert not health.healthy
    assert health.detail == "HTTP 503"


def canned(body: dict[str, Any]) -> ModalBackend:
    """A backend whose endpoint always answers 200 with ``body``."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=orjson.dumps(body))

    return ModalBackend(
        "http://127.0.0.1:9", transport=httpx.MockTransport(handler), attempts=1
    )


def result(filename: str, **fields: Any) -> dict[str, Any]:
    element = {"label": "text", "bbox": [1, 2, 3, 4], "text": "x", "reading_order": 0}
    return {"filename": filename, "elements": [element], **fields}


async def test_a_wrong_number_of_results_is_an_error() -> None:
    """Two results for three images cannot be matched to requests."""
    backend = canned({"results": [result("page-0.png"), result("page-1.png")]})
    with pytest.raises(BackendError, match="2 results for 3 images") as caught:
        await backend.parse_batch(batch(3))
    assert not caught.value.batch_failed


async def test_results_out_of_order_are_an_error() -> None:
    """Results must name the inputs' filenames in input order."""
    backend = canned({"results": [result("page-1.png"), result("page-0.png")]})
    with pytest.raises(BackendError, match="out of order"):
        await backend.parse_batch(batch(2))


async def test_elements_are_normalised_and_checked_per_image() -> None:
    """Float boxes become ints and elements sort by reading order; an element
    without a usable bbox fails only its own image."""
    good = result("page-0.png")
    good["elements"] = [
        {"label": "b", "bbox": [1.4, 2.6, 30.5, 40], "text": "two", "reading_order": 1},
        {"label": "a", "bbox": [0, 0, 9, 9], "text": "one", "reading_order": 0},
    ]
    bad = result("page-1.png")
    bad["elements"] = [{"label": "x", "bbox": [1, 2], "reading_order": 0}]
    backend = canned({"results": [good, bad], "processing_time_seconds": 1.5})
    outcome = await backend.parse_batch(batch(2))

    first, second = outcome.items
    assert isinstance(first, ItemResult)
    assert [e["text"] for e in first.elements] == ["one", "two"]
    assert first.elements[1]["bbox"] == [1, 3, 30, 40]
    assert isinstance(second, ItemError)
    assert second.code == "parse_failed"
    assert outcome.processing_time_s == outcome.backend_seconds == 1.5


def test_from_settings_uses_the_backend_settings() -> None:
    """Endpoint, timeout, attempts and retry base come from settings."""
    settings = load_settings(
        modal_api_endpoint="https://acme--dolphin",
        backend_timeout_s=42,
        backend_attempts=5,
        backend_retry_base_s=0.25,
    )
    backend = ModalBackend.from_settings(settings)
    assert backend.parse_batch_url == "https://acme--dolphin-parse-batch.modal.run"
    assert backend.health_url == "https://acme--dolphin-health.modal.run"
    assert (backend.timeout_s, backend.attempts, backend.retry_base_s) == (42, 5, 0.25)
