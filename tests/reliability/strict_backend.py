"""A front for the simulator that decodes every image, as the real parser does.

The simulator judges an image by its leading bytes only, so a PNG with a sound
header and corrupt pixel data passes it. Dolphin on Modal decodes each page and
fails the whole batch (200, ``{"status": "failed"}``) when one image does not
decode. This front does that decode with Pillow and forwards good batches to the
simulator, whose statistics (and duplicate ledger) stay the record of what was
parsed.

    with strict_backend(simulator) as base_url:
        start_worker(MODAL_API_ENDPOINT=base_url, ...)
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import orjson
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.simulator import RunningSimulator
from infra.localstack.procs import free_port


@dataclass
class StrictStats:
    failed_batches: int = 0
    forwarded_batches: int = 0


def undecodable(images: list[dict[str, str]]) -> int | None:
    """Index of the first image Pillow cannot fully decode, if any."""
    for index, item in enumerate(images):
        try:
            with Image.open(io.BytesIO(base64.b64decode(item["image_data"]))) as img:
                img.load()
        except Exception:
            return index
    return None


def strict_app(simulator: RunningSimulator, stats: StrictStats) -> Starlette:
    client = httpx.AsyncClient(timeout=60, follow_redirects=True)

    async def parse_batch(request: Request) -> Response:
        body = await request.body()
        bad = undecodable(orjson.loads(body)["images"])
        if bad is not None:
            stats.failed_batches += 1
            failed = {"status": "failed", "error": f"image {bad} cannot be decoded"}
            return Response(orjson.dumps(failed), media_type="application/json")
        stats.forwarded_batches += 1
        answer = await client.post(
            simulator.parse_batch_url,
            content=body,
            headers={"content-type": "application/json"},
        )
        return Response(answer.content, answer.status_code, media_type=None)

    async def health(request: Request) -> Response:
        answer = await client.get(simulator.health_url)
        return Response(answer.content, answer.status_code)

    return Starlette(
        routes=[
            Route("/parse-batch", parse_batch, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


@contextmanager
def strict_backend(simulator: RunningSimulator, stats: StrictStats) -> Iterator[str]:
    """Serve the strict front on a free port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        strict_app(simulator, stats),
        host="127.0.0.1",
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="strict-backend", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("the strict backend front did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
