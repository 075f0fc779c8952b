"""The API as real processes (``python -m api.main``): routing, capacity, limits."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from common.store import Keys, RequestState, get_state
from infra.localstack.procs import REPO_ROOT, free_port
from tests.api.conftest import QueueProbe, StartWorker
from tests.api.fake_worker import image_digest
from tests.api.images import b64, make_image, parse_json
from tests.conftest import ServiceProcess, StartService

pytestmark = pytest.mark.integration


async def test_concurrent_callers_each_get_their_own_result(
    start_api: StartService, start_fake_worker: StartWorker
) -> None:
    """500 concurrent requests over two API processes all come back to their caller."""
    apis = [start_api(), start_api()]
    await start_fake_worker()
    images = [make_image(seed=i) for i in range(500)]
    limits = httpx.Limits(max_connections=100)

    async def call(client: httpx.AsyncClient, api: ServiceProcess, i: int) -> Any:
        body = {"image_data": b64(images[i]), "filename": f"page-{i}.png"}
        return await client.post(f"{api.url}/parse", json=body)

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        responses = await asyncio.gather(
            *(call(client, apis[i % 2], i) for i in range(500))
        )

    assert [r.status_code for r in responses] == [200] * 500
    for i, response in enumerate(responses):
        body = response.json()
        assert body["filename"] == f"page-{i}.png"
        assert body["elements"][0]["text"] == f"page-{i}.png {image_digest(images[i])}"
        assert body["request_id"] == response.headers["X-Request-Id"]
    assert len({r.headers["X-Request-Id"] for r in responses}) == 500


async def test_two_processes_racing_never_overfill_the_queue(
    start_api: StartService, redis_client: Redis, keys: Keys
) -> None:
    """At capacity 50 exactly the threshold (41) is admitted; the rest get 503."""
    env = {"DOLPHIN_QUEUE_CAPACITY": "50"}
    apis = [start_api(**env), start_api(**env)]
    depths: list[int] = []
    racing = True

    async def watch_depth() -> None:
        while racing:
            depths.append(int(await redis_client.zcard(keys.admission)))
            await asyncio.sleep(0.02)

    async def call(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(
            f"{apis[i % 2].url}/parse",
            json=parse_json(i),
            headers={"X-Request-Timeout": "8"},
        )

    watcher = asyncio.create_task(watch_depth())
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(*(call(client, i) for i in range(80)))
    racing = False
    await watcher

    refused = [r for r in responses if r.status_code == 503]
    timed_out = [r for r in responses if r.status_code == 504]
    assert (len(refused), len(timed_out)) == (39, 41)
    assert {r.json()["error"]["code"] for r in refused} == {"overloaded"}
    assert all(1 <= int(r.headers["Retry-After"]) <= 60 for r in refused)
    assert max(depths) <= 41
    assert await redis_client.zcard(keys.admission) == 0


async def test_health_is_503_while_redis_is_down(start_api: StartService) -> None:
    """An API pointed at a closed Redis port starts, and reports itself unavailable."""
    api = start_api(wait=False, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    health = await wait_for_answer(api, "/health")
    async with httpx.AsyncClient(timeout=10) as client:
        parse = await client.post(f"{api.url}/parse", json=parse_json())

    assert health.status_code == 503
    assert health.json()["redis"]["ok"] is False
    assert health.json()["kafka"]["ok"] is True
    assert parse.status_code == 503
    assert parse.json()["error"]["code"] == "redis_unavailable"


async def wait_for_answer(api: ServiceProcess, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(240):
            assert api.proc.poll() is None, api.log_text()[-3000:]
            try:
                return await client.get(api.url + path)
            except httpx.TransportError:
                await asyncio.sleep(0.25)
    raise TimeoutError(api.log_text()[-3000:])


def raw_exchange(port: int, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request as bytes, tolerating the server closing early; the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    return reply


def status_and_code(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body)["error"]["code"]


async def test_body_limit_does_not_trust_content_length(
    start_api: StartService, queue_probe: QueueProbe
) -> None:
    """A huge declared length is refused unread; an undeclared huge body midway."""
    api = start_api(DOLPHIN_MAX_IMAGE_BYTES="20000")
    declared = (
        b"POST /parse HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    chunked = (
        b"POST /parse HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"A" * 16384
    chunks = [b'4000\r\n{"image_data":"' + piece[15:] + b"\r\n"]
    chunks += [b"4000\r\n" + piece + b"\r\n"] * 30 + [b"0\r\n\r\n"]

    lied = await asyncio.to_thread(raw_exchange, api.port, declared, [])
    streamed = await asyncio.to_thread(raw_exchange, api.port, chunked, chunks)

    assert status_and_code(lied) == (413, "payload_too_large")
    assert status_and_code(streamed) == (413, "payload_too_large")
    assert await queue_probe.snapshot() == (0, 0)


async def test_disconnected_caller_cancels_its_request(
    start_api: StartService,
    start_fake_worker: StartWorker,
    redis_client: Redis,
    keys: Keys,
) -> None:
    """A caller that hangs up cancels the request; the worker then skips it."""
    api = start_api()
    worker = await start_fake_worker()
    worker.pause()
    worker.check_state = True

    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=1.5)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{api.url}/parse", json=parse_json())
    await worker.wait_seen(1)
    request_id = worker.seen[0].request_id
    async with asyncio.timeout(15):
        while True:
            state = await get_state(redis_client, keys, request_id)
            if state == RequestState.CANCELLED:
                break
            await asyncio.sleep(0.1)
    worker.resume()
    async with asyncio.timeout(15):
        while True:
            if request_id in worker.skipped:
                break
            await asyncio.sleep(0.1)

    assert worker.answered == []
    assert await redis_client.zcard(keys.admission) == 0
    lines = [
        orjson.loads(ln) for ln in api.log_text().splitlines() if ln.startswith("{")
    ]
    cancelled = [line for line in lines if line.get("event") == "request_cancelled"]
    assert cancelled[0]["request_id"] == request_id
    assert cancelled[0]["reason"] == "client_disconnected"


def test_bad_configuration_exits_2_with_the_key_named() -> None:
    """A wrong setting stops start-up with status 2 and a message on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOLPHIN_")}
    env.pop("CONFIG_PATH", None)
    env["DOLPHIN_QUEUE_CAPACITY"] = "none"

    done = subprocess.run(
        [sys.executable, "-m", "api.main"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert "queue_capacity" in done.stderr
