"""The Modal stand-in: contract, cost model, faults and accounting.

Timings are only checked from below: a loaded CI machine may be slow, never fast.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.simulator import (
    RunningSimulator,
    SimConfig,
    Simulator,
    run_in_thread,
    serve,
    start_in_thread,
    title_text,
)
from stream.backends.modal_urls import modal_urls

StartSim = Callable[..., RunningSimulator]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Factory: a thread-served simulator with SimConfig overrides, stopped after."""
    started: list[RunningSimulator] = []

    def start(**config: Any) -> RunningSimulator:
        running = start_in_thread(SimConfig(**config))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (seed % 256, seed // 256 % 256, 7)).save(out, "PNG")
    return out.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (seed % 256, 30, 60)).save(out, "JPEG")
    return out.getvalue()


def batch(images: list[bytes], prefix: str = "page") -> dict[str, Any]:
    return {
        "images": [
            {"image_data": base64.b64encode(data).decode(), "filename": f"{prefix}{i}"}
            for i, data in enumerate(images)
        ]
    }


async def test_batch_takes_fixed_plus_per_image_time(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=100, per_image_ms=10)
    images = [png(i) for i in range(4)]
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        reply = await client.post(sim.parse_batch_url, json=batch(images))
        elapsed = time.monotonic() - started
    assert reply.status_code == 200
    assert elapsed >= 0.13
    body = reply.json()
    assert body["processing_time_seconds"] == pytest.approx(0.14)
    assert body["batch_id"]
    assert [r["filename"] for r in body["results"]] == [f"page{i}" for i in range(4)]
    for i, result in enumerate(body["results"]):
        assert result["element_count"] == len(result["elements"]) == 2
        title, para = result["elements"]
        assert title["label"] == "title"
        assert title["text"] == title_text(f"page{i}", images[i])
        assert title["reading_order"] == 0
        assert para["label"] == "para"
        assert para["reading_order"] == 1
        assert all(isinstance(v, int) for v in title["bbox"])
        # bboxes lie within the 64x48 page the header describes
        assert 0 <= title["bbox"][0] < title["bbox"][2] <= 64
        assert 0 <= title["bbox"][1] < title["bbox"][3] <= 48
        assert "64x48" in para["text"]


async def test_elements_are_deterministic_and_read_jpeg_size(
    start_sim: StartSim,
) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0)
    image = jpeg(3, (640, 480))
    async with httpx.AsyncClient() as client:
        first, second = [
            (await client.post(sim.parse_batch_url, json=batch([image]))).json()
            for _ in range(2)
        ]
    assert first["results"] == second["results"]
    assert first["batch_id"] != second["batch_id"]
    title, para = first["results"][0]["elements"]
    assert "640x480" in para["text"]
    assert title["bbox"][2] > 320


async def test_container_limit_caps_concurrent_batches(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=100, per_image_ms=0, containers=2)
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        replies = await asyncio.gather(
            *(
                client.post(sim.parse_batch_url, json=batch([png(i)], f"b{i}-"))
                for i in range(6)
            )
        )
        elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in replies)
    assert elapsed >= 0.29  # three waves of two
    stats = sim.stats()
    assert stats["max_concurrent_batches"] == 2
    assert stats["batches"] == 6
    # Waiting for a container is not billed.
    assert stats["backend_seconds"] == pytest.approx(0.6)


async def test_cold_start_is_billed_once_per_container(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=10, per_image_ms=0, containers=1, cold_start_ms=100)
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        cold = (await client.post(sim.parse_batch_url, json=batch([png(1)]))).json()
        assert time.monotonic() - started >= 0.1
        warm = (await client.post(sim.parse_batch_url, json=batch([png(2)]))).json()
        sim.control(scale_to_zero=True)
        again = (await client.post(sim.parse_batch_url, json=batch([png(3)]))).json()
    assert cold["processing_time_seconds"] == pytest.approx(0.11)
    assert warm["processing_time_seconds"] == pytest.approx(0.01)
    assert again["processing_time_seconds"] == pytest.approx(0.11)
    stats = sim.stats()
    assert stats["cold_starts"] == 2
    assert stats["backend_seconds"] == pytest.approx(0.23)


@pytest.mark.parametrize(
    "bad",
    [
        {"image_data": base64.b64encode(b"GIF89a not accepted").decode()},
        {"image_data": "not base64 at all!"},
    ],
    ids=["not-an-image", "bad-base64"],
)
async def test_one_bad_image_fails_the_whole_batch(
    start_sim: StartSim, bad: dict[str, str]
) -> None:
    sim = start_sim(fixed_ms=20, per_image_ms=0)
    body = batch([png(1), png(2), png(3)])
    body["images"][1].update(bad)
    async with httpx.AsyncClient() as client:
        reply = await client.post(sim.parse_batch_url, json=body)
    assert reply.status_code == 200
    payload = reply.json()
    assert payload["status"] == "failed"
    assert "page1" in payload["error"]
    assert "results" not in payload
    stats = sim.stats()
    assert stats["failed_batches"] == 1
    assert stats["failed_images"] == 3
    assert stats["processed"] == []


async def test_tiff_and_webp_are_accepted(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0)
    images = [b"II*\x00" + b"\x00" * 16, b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8]
    async with httpx.AsyncClient() as client:
        reply = await client.post(sim.parse_batch_url, json=batch(images))
    assert len(reply.json()["results"]) == 2


async def test_more_than_32_images_is_a_400(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0)
    image = png(1)
    async with httpx.AsyncClient() as client:
        too_many = await client.post(sim.parse_batch_url, json=batch([image] * 33))
        full = await client.post(sim.parse_batch_url, json=batch([image] * 32))
        empty = await client.post(sim.parse_batch_url, json={"images": []})
        malformed = await client.post(sim.parse_batch_url, json={"pages": []})
    assert too_many.status_code == 400
    assert full.status_code == 200
    assert len(full.json()["results"]) == 32
    assert empty.status_code == 400
    assert malformed.status_code == 422
    stats = sim.stats()
    assert stats["rejected_requests"] == 3
    assert stats["batches"] == 1


async def test_5xx_injection_at_run_time(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0)
    async with httpx.AsyncClient() as client:
        control = await client.post(
            f"{sim.base_url}/control",
            json={"fail_rate": 1.0, "fail_mode": "5xx", "fail_status": 503},
        )
        assert control.json()["fail_rate"] == 1.0
        failed = await client.post(sim.parse_batch_url, json=batch([png(1)]))
        await client.post(f"{sim.base_url}/control", json={"fail_rate": 0})
        ok = await client.post(sim.parse_batch_url, json=batch([png(1)]))
    assert failed.status_code == 503
    assert ok.status_code == 200
    stats = sim.stats()
    assert stats["injected"]["5xx"] == 1
    # A 5xx is answered before any container is used.
    assert stats["batches"] == 1


async def test_fail_rate_is_reproducible_with_a_seed(start_sim: StartSim) -> None:
    outcomes: list[list[int]] = []
    for _ in range(2):
        sim = start_sim(fixed_ms=0, per_image_ms=0, fail_rate=0.5, seed=7)
        async with httpx.AsyncClient() as client:
            codes = [
                (
                    await client.post(sim.parse_batch_url, json=batch([png(1)]))
                ).status_code
                for _ in range(20)
            ]
        outcomes.append(codes)
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 500}


async def test_injected_failed_status(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0, fail_rate=1.0, fail_mode="failed")
    async with httpx.AsyncClient() as client:
        reply = await client.post(sim.parse_batch_url, json=batch([png(1)]))
    assert reply.status_code == 200
    assert reply.json()["status"] == "failed"


async def test_drop_closes_the_connection_after_the_work(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0)
    sim.control(fail_rate=1.0, fail_mode="refuse")  # taken as "drop"
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TransportError):
            await client.post(sim.parse_batch_url, json=batch([png(1)]))
    stats = sim.stats()
    assert stats["injected"]["drop"] == 1
    # The batch ran; only its answer was lost, so a retry is a duplicate.
    assert stats["processed_images"] == 1


async def test_delay_beyond_client_timeout_still_bills_the_batch(
    start_sim: StartSim,
) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0, delay_ms=2000)
    async with httpx.AsyncClient(timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(sim.parse_batch_url, json=batch([png(1)]))
        sim.control(delay_ms=0)
        await client.post(sim.parse_batch_url, json=batch([png(1)]))
    stats = sim.stats()
    assert stats["batches"] == 2
    assert stats["duplicates"] == [
        {"filename": "page0", "sha256": hashlib.sha256(png(1)).hexdigest(), "count": 2}
    ]


async def test_slow_mode_holds_the_container(start_sim: StartSim) -> None:
    sim = start_sim(
        fixed_ms=0, per_image_ms=0, fail_rate=1.0, fail_mode="slow", slow_ms=200
    )
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        reply = await client.post(sim.parse_batch_url, json=batch([png(1)]))
        assert time.monotonic() - started >= 0.19
    assert reply.status_code == 200
    assert sim.stats()["backend_seconds"] == pytest.approx(0.2)


async def test_redirect_is_followed_to_the_result(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=200, per_image_ms=0)
    images = [png(1), png(2)]
    async with httpx.AsyncClient(follow_redirects=True) as client:
        await client.post(f"{sim.base_url}/control", json={"redirect": True})
        reply = await client.post(sim.parse_batch_url, json=batch(images))
    assert reply.status_code == 200
    assert reply.history and reply.history[0].status_code == 303
    assert "/result/" in reply.history[0].headers["location"]
    titles = [r["elements"][0]["text"] for r in reply.json()["results"]]
    assert titles == [title_text(f"page{i}", image) for i, image in enumerate(images)]


async def test_redirect_after_a_hold_time_repeats_until_done(
    start_sim: StartSim,
) -> None:
    sim = start_sim(fixed_ms=300, per_image_ms=0, redirect_after_s=0.1)
    async with httpx.AsyncClient() as client:
        first = await client.post(sim.parse_batch_url, json=batch([png(1)]))
        assert first.status_code == 303
        result_url = first.headers["location"]
        hops = 0
        reply = await client.get(result_url)
        while reply.status_code == 303:
            hops += 1
            reply = await client.get(reply.headers["location"])
        # Modal keeps the result; it can be read again.
        again = await client.get(result_url)
        missing = await client.get(f"{sim.base_url}/result/nope")
    assert reply.status_code == 200
    assert reply.json()["results"][0]["filename"] == "page0"
    assert hops >= 1
    assert again.json() == reply.json()
    assert missing.status_code == 404
    assert sim.stats()["redirects"] == 1 + hops


async def test_fast_batches_are_not_redirected(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0, redirect_after_s=5)
    async with httpx.AsyncClient() as client:
        reply = await client.post(sim.parse_batch_url, json=batch([png(1)]))
    assert reply.status_code == 200


async def test_pause_holds_requests_until_resumed(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0, paused=True)
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(
            client.post(sim.parse_batch_url, json=batch([png(1)]))
        )
        await asyncio.sleep(0.3)
        assert not pending.done()
        await client.post(f"{sim.base_url}/control", json={"paused": False})
        reply = await asyncio.wait_for(pending, 10)
    assert reply.status_code == 200


async def test_stop_answers_waiting_requests(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0, paused=True)
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(
            client.post(sim.parse_batch_url, json=batch([png(1)]))
        )
        await asyncio.sleep(0.2)
        await asyncio.to_thread(sim.stop)
        reply = await asyncio.wait_for(pending, 10)
    assert reply.status_code == 503


async def test_cost_model_changes_at_run_time(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0, containers=1)
    async with httpx.AsyncClient() as client:
        await client.post(
            f"{sim.base_url}/control",
            json={"fixed_ms": 50, "per_image_ms": 5, "containers": 3},
        )
        replies = await asyncio.gather(
            *(client.post(sim.parse_batch_url, json=batch([png(i)])) for i in range(3))
        )
    assert {r.json()["processing_time_seconds"] for r in replies} == {0.055}
    assert sim.stats()["max_concurrent_batches"] == 3


async def test_stats_accounting_and_reset(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=10, per_image_ms=1)
    first = [png(i) for i in range(3)]
    second = [png(i) for i in range(10, 15)]
    async with httpx.AsyncClient() as client:
        await client.post(sim.parse_batch_url, json=batch(first, "a"))
        await client.post(sim.parse_batch_url, json=batch(second, "b"))
        await client.post(sim.parse_batch_url, json=batch(first[:1], "a"))
        stats = (await client.get(f"{sim.base_url}/stats")).json()
        brief = (await client.get(f"{sim.base_url}/stats?processed=0")).json()
        reset = await client.post(f"{sim.base_url}/stats/reset")
        after = (await client.get(f"{sim.base_url}/stats")).json()
    assert stats["requests"] == 3
    assert stats["batches"] == 3
    assert stats["images"] == 9
    assert stats["batch_size_histogram"] == {"1": 1, "3": 1, "5": 1}
    assert stats["backend_seconds"] == pytest.approx(3 * 0.010 + 9 * 0.001)
    assert stats["processed_images"] == 9
    processed = {(p["filename"], p["sha256"]) for p in stats["processed"]}
    assert ("b2", hashlib.sha256(second[2]).hexdigest()) in processed
    assert stats["duplicates"] == [
        {"filename": "a0", "sha256": hashlib.sha256(first[0]).hexdigest(), "count": 2}
    ]
    assert "processed" not in brief
    assert brief["processed_images"] == 9
    assert reset.status_code == 200
    assert after["batches"] == 0
    assert after["processed"] == []
    assert after["batch_size_histogram"] == {}
    assert after["backend_seconds"] == 0


async def test_control_rejects_bad_input(start_sim: StartSim) -> None:
    sim = start_sim()
    async with httpx.AsyncClient() as client:
        url = f"{sim.base_url}/control"
        for body in (
            {"fail_rat": 0.1},
            {"fail_mode": "explode"},
            {"fail_rate": 2},
            {"containers": 0},
            {"paused": "yes"},
            {"fixed_ms": -1},
        ):
            reply = await client.post(url, json=body)
            assert reply.status_code == 400, body
        assert (await client.post(url, content=b"[1]")).status_code == 400
        current = (await client.get(url)).json()
    assert current == SimConfig().to_dict()


async def test_health_follows_control(start_sim: StartSim) -> None:
    sim = start_sim()
    async with httpx.AsyncClient() as client:
        assert (await client.get(sim.health_url)).status_code == 200
        sim.control(healthy=False)
        assert (await client.get(sim.health_url)).status_code == 503


async def test_modal_urls_reach_the_simulator(start_sim: StartSim) -> None:
    sim = start_sim(fixed_ms=0, per_image_ms=0)
    parse_url, health_url = modal_urls(sim.base_url)
    async with httpx.AsyncClient() as client:
        assert (await client.get(health_url)).status_code == 200
        reply = await client.post(parse_url, json=batch([png(1)]))
    assert reply.status_code == 200


async def test_serve_context_and_run_in_thread() -> None:
    async with (
        serve(SimConfig(fixed_ms=0, per_image_ms=0)) as sim,
        httpx.AsyncClient() as client,
    ):
        assert (await client.get(sim.health_url)).status_code == 200
    base_url, stop = run_in_thread(SimConfig(fixed_ms=0, per_image_ms=0))
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base_url}/health")).status_code == 200
    finally:
        await asyncio.to_thread(stop)
    stop()  # idempotent


async def test_app_runs_in_process_over_asgi_transport() -> None:
    simulator = Simulator(SimConfig(fixed_ms=0, per_image_ms=0))
    transport = httpx.ASGITransport(app=simulator.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        reply = await client.post("/parse-batch", json=batch([png(1)]))
    assert reply.status_code == 200
    assert simulator.stats()["images"] == 1


def test_cli_prints_url_and_exits_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.simulator", "--port", "0", "--fixed-ms", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        config = httpx.get(f"{url}/control", timeout=10).json()
        assert config["fixed_ms"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
