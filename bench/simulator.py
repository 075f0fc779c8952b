"""A stand-in for the Dolphin batch endpoint on Modal, for tests and benchmarks.

It speaks the Modal contract (``POST /parse-batch``, ``GET /health``, 200 with
``{"status": "failed"}`` for a bad batch, 303 to a result URL for long requests)
and models its cost: a batch of n images holds one of ``containers`` slots for
``fixed_ms + per_image_ms * n`` (plus ``cold_start_ms`` the first time a slot is
used); time spent waiting for a slot is not billed. Elements are derived from the
image bytes, so a test can tell which request a reply belongs to.

Faults and the cost model are changed at run time through ``POST /control``;
``GET /stats`` reports what was billed and which images were parsed. Only hashes
of the images are kept (about 0.5 KB per parsed image for the duplicate ledger,
cleared by ``POST /stats/reset``).

Reading and decoding a request costs real CPU, roughly 8 ms per MB of body. A
thread-served simulator shares the GIL with the code under test, so benchmarks
that push many MB/s should run the CLI in its own process.

    running = start_in_thread(SimConfig(fixed_ms=100, per_image_ms=10))
    base_url = running.base_url          # http://127.0.0.1:PORT
    ...
    running.stop()

    python -m bench.simulator --port 8900 --fixed-ms 400 --per-image-ms 25
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import math
import random
import signal
import socket
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal, TypeVar, cast, get_args

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "FAIL_MODES",
    "MAX_IMAGES",
    "FailMode",
    "RunningSimulator",
    "SimConfig",
    "SimulatedDrop",
    "Simulator",
    "main",
    "run_in_thread",
    "running_simulator",
    "serve",
    "start_in_thread",
    "title_text",
]

logger = logging.getLogger(__name__)

MAX_IMAGES = 32

FailMode = Literal["5xx", "failed", "drop", "slow"]
FAIL_MODES: tuple[str, ...] = get_args(FailMode)
# A refused connection cannot be produced per request over HTTP; closing the
# connection unanswered is the nearest fault a client can observe.
_FAIL_MODE_ALIASES = {"refuse": "drop"}

# Page size assumed when the header gives none, so bboxes stay plausible.
_DEFAULT_SIZE = (1000, 1400)
# Finished results kept for GET /result/{id}; bounded so memory stays flat.
_KEPT_RESULTS = 256
# Parsing and decoding a large body would stall every other batch's timer; in a
# thread the loop still gets the GIL at each switch interval.
_INLINE_BODY_BYTES = 64 * 1024
_TRANSPORT_KEY = "dolphin_sim.transport"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Cost model and faults. Every field can be changed with ``POST /control``."""

    fixed_ms: float = 400.0
    """Container time of every batch, billed."""
    per_image_ms: float = 25.0
    """Container time added per image, billed."""
    containers: int = 4
    """Batches that run at once; the others wait, unbilled."""
    cold_start_ms: float = 0.0
    """Added, billed, to the first batch each container runs."""
    fail_rate: float = 0.0
    """Share of requests that get ``fail_mode`` (0..1)."""
    fail_mode: FailMode = "5xx"
    fail_status: int = 500
    """HTTP status answered by fail_mode "5xx"."""
    slow_ms: float = 10_000.0
    """Extra billed container time of a batch hit by fail_mode "slow"."""
    delay_ms: float = 0.0
    """Unbilled latency added before every /parse-batch reply is sent."""
    redirect_after_s: float | None = None
    """Answer 303 to /result/{id} when a batch is not done after this long (Modal
    uses 150 s); 0 redirects at once; None never redirects."""
    paused: bool = False
    """New /parse-batch requests wait while set."""
    healthy: bool = True
    """False makes GET /health answer 503."""
    seed: int | None = None
    """Seeds the fault draws."""
    max_images: int = MAX_IMAGES

    def __post_init__(self) -> None:
        for name in (
            "fixed_ms",
            "per_image_ms",
            "cold_start_ms",
            "slow_ms",
            "delay_ms",
        ):
            _check_non_negative(name, getattr(self, name))
        _check_non_negative("fail_rate", self.fail_rate)
        if self.fail_rate > 1:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.redirect_after_s is not None:
            _check_non_negative("redirect_after_s", self.redirect_after_s)
        for name in ("containers", "max_images"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1")
        if not _is_int(self.fail_status) or not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an integer from 400 to 599")
        if self.fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {', '.join(FAIL_MODES)}")
        for name in ("paused", "healthy"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError("seed must be an integer or null")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_non_negative(name: str, value: object) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a number >= 0")


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(SimConfig))


# --- Images -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Image:
    """What the simulator keeps of an image: never the bytes."""

    filename: str
    sha256: str
    size: int
    width: int | None
    height: int | None
    error: str | None


def title_text(filename: str, image: bytes) -> str:
    """Text of the "title" element the simulator returns for this image."""
    return _title(filename, hashlib.sha256(image).hexdigest())


def _title(filename: str, sha256: str) -> str:
    return f"{filename} sha256:{sha256[:12]}"


def _image_kind(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# Start-of-frame markers carry the size; C4, C8 and CC share the range but are
# other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            pos += 2
            continue
        if marker in _JPEG_SOF:
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _inspect(index: int, filename: str, image_data: str) -> _Image:
    try:
        data = base64.b64decode(image_data, validate=True)
    except (binascii.Error, ValueError) as exc:
        return _Image(
            filename,
            "",
            0,
            None,
            None,
            f"image {index} ({filename}): bad base64: {exc}",
        )
    sha = hashlib.sha256(data).hexdigest()
    kind = _image_kind(data)
    if kind is None:
        error = f"image {index} ({filename}): cannot identify image file"
        return _Image(filename, sha, len(data), None, None, error)
    size = _png_size(data) if kind == "png" else None
    if kind == "jpeg":
        size = _jpeg_size(data)
    width, height = size if size else (None, None)
    return _Image(filename, sha, len(data), width, height, None)


class _Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _read_batch(body: bytes, max_images: int) -> list[_Image]:
    """Validate the request the way Modal's FastAPI layer would, then decode."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Rejected(422, f"body is not JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise _Rejected(422, 'body must be {"images": [...]}')
    items: list[Any] = payload["images"]
    if not items:
        raise _Rejected(400, "no images")
    if len(items) > max_images:
        raise _Rejected(400, f"{len(items)} images; at most {max_images} per batch")
    images: list[_Image] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Rejected(422, f"images[{index}] must be an object")
        data, filename = item.get("image_data"), item.get("filename")
        if not isinstance(data, str) or not isinstance(filename, str):
            raise _Rejected(
                422, f"images[{index}] needs string image_data and filename"
            )
        images.append(_inspect(index, filename, data))
    return images


def _elements(image: _Image) -> list[dict[str, Any]]:
    width, height = (
        (image.width, image.height) if image.width and image.height else _DEFAULT_SIZE
    )

    def box(x1: float, y1: float, x2: float, y2: float) -> list[int]:
        return [
            round(width * x1),
            round(height * y1),
            max(round(width * x2), 1),
            max(round(height * y2), 1),
        ]

    return [
        {
            "label": "title",
            "bbox": box(0.1, 0.05, 0.9, 0.09),
            "text": _title(image.filename, image.sha256),
            "reading_order": 0,
        },
        {
            "label": "para",
            "bbox": box(0.1, 0.12, 0.9, 0.4),
            "text": (
                f"Simulated paragraph of {image.filename}: {image.size} bytes, "
                f"{image.width or '?'}x{image.height or '?'} pixels."
            ),
            "reading_order": 1,
        },
    ]


# --- Simulator ----------------------------------------------------------------


class _ShuttingDown(Exception):
    pass


class SimulatedDrop(Exception):
    """Raised for fail_mode "drop" when the server gives no socket to close
    (e.g. under httpx.ASGITransport)."""


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: dict[str, Any]


@dataclass(slots=True)
class _Job:
    task: asyncio.Task[_Reply]
    mode: str | None


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    rejected: int = 0
    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    failed_images: int = 0
    backend_seconds: float = 0.0
    cold_starts: int = 0
    redirects: int = 0
    max_concurrent: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    histogram: Counter[int] = field(default_factory=Counter)
    processed: list[tuple[str, str, str]] = field(default_factory=list)
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(
        content=orjson.dumps(body), status_code=status, media_type="application/json"
    )


class Simulator:
    """The simulated Modal endpoint. ``app`` is its ASGI application.

    Methods run on the event loop serving ``app``; from another thread go through
    ``RunningSimulator`` or the HTTP endpoints.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        self._config = config or SimConfig()
        self._rng = random.Random(self._config.seed)
        self._stats = _Stats()
        self._batch_ids = itertools.count(1)
        # One condition covers pause and container slots: both wait on a
        # predicate over state that /control changes.
        self._cond = asyncio.Condition()
        self._closing = asyncio.Event()
        self._busy: set[int] = set()
        self._warm: set[int] = set()
        self._waiting = 0
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._tasks: set[asyncio.Task[_Reply]] = set()
        self._api = self._build_api()

        # A plain coroutine function, not a bound method, so servers that sniff
        # the ASGI version (uvicorn's "auto") recognise ASGI 3.
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._asgi(scope, receive, send)

        self.app: ASGIApp = app

    @property
    def config(self) -> SimConfig:
        return self._config

    # --- public operations -----------------------------------------------

    async def control(self, **changes: Any) -> SimConfig:
        """Apply changes to the config and return it; ValueError on bad input.

        Besides the SimConfig fields: ``redirect`` (true: redirect_after_s=0,
        false: None) and ``scale_to_zero`` (true: the next batch on every
        container pays the cold start again). fail_mode "refuse" means "drop".
        """
        changes = dict(changes)
        scale_to_zero = changes.pop("scale_to_zero", False)
        if not isinstance(scale_to_zero, bool):
            raise ValueError("scale_to_zero must be true or false")
        if "redirect" in changes:
            redirect = changes.pop("redirect")
            if not isinstance(redirect, bool):
                raise ValueError("redirect must be true or false")
            changes.setdefault("redirect_after_s", 0.0 if redirect else None)
        mode = changes.get("fail_mode")
        if isinstance(mode, str) and mode in _FAIL_MODE_ALIASES:
            changes["fail_mode"] = _FAIL_MODE_ALIASES[mode]
        unknown = sorted(set(changes) - _CONFIG_FIELDS)
        if unknown:
            raise ValueError(f"unknown control keys: {', '.join(unknown)}")
        try:
            new = dataclasses.replace(self._config, **changes)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if "seed" in changes:
            self._rng = random.Random(new.seed)
        if scale_to_zero:
            self._warm.clear()
        self._config = new
        if changes or scale_to_zero:
            logger.info("simulator control: %s", changes or {"scale_to_zero": True})
        async with self._cond:
            self._cond.notify_all()
        return new

    def stats(self, include_processed: bool = True) -> dict[str, Any]:
        s = self._stats
        duplicates = [
            {"filename": filename, "sha256": sha, "count": count}
            for (filename, sha), count in s.seen.items()
            if count > 1
        ]
        result: dict[str, Any] = {
            "requests": s.requests,
            "rejected_requests": s.rejected,
            "batches": s.batches,
            "images": s.images,
            "failed_batches": s.failed_batches,
            "failed_images": s.failed_images,
            "processed_images": len(s.processed),
            "backend_seconds": round(s.backend_seconds, 6),
            "cold_starts": s.cold_starts,
            "redirects": s.redirects,
            "injected": {mode: s.injected[mode] for mode in FAIL_MODES},
            "batch_size_histogram": {
                str(size): count for size, count in sorted(s.histogram.items())
            },
            "max_concurrent_batches": s.max_concurrent,
            "running_batches": len(self._busy),
            "waiting_batches": self._waiting,
            "duplicates": duplicates,
            "config": self._config.to_dict(),
        }
        if include_processed:
            result["processed"] = [
                {"filename": filename, "sha256": sha, "batch_id": batch_id}
                for filename, sha, batch_id in s.processed
            ]
        return result

    def reset_stats(self) -> None:
        self._stats = _Stats(max_concurrent=len(self._busy))

    async def aclose(self) -> None:
        """Answer every waiting or running request with 503 at once."""
        self._closing.set()
        async with self._cond:
            self._cond.notify_all()

    # --- ASGI ----------------------------------------------------------------

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn's send is a method of the connection's request cycle; its
            # transport is what fail_mode "drop" aborts.
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                scope[_TRANSPORT_KEY] = transport
        await self._api(scope, receive, send)

    def _build_api(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            yield
            await self.aclose()

        api = FastAPI(
            title="Dolphin Modal simulator",
            lifespan=lifespan,
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )
        api.add_api_route("/parse-batch", self._parse_batch, methods=["POST"])
        api.add_api_route(
            "/result/{batch_id}", self._result, methods=["GET"], name="result"
        )
        api.add_api_route("/health", self._health, methods=["GET"])
        api.add_api_route("/stats", self._get_stats, methods=["GET"])
        api.add_api_route("/stats/reset", self._reset_stats, methods=["POST"])
        api.add_api_route("/control", self._get_control, methods=["GET"])
        api.add_api_route("/control", self._post_control, methods=["POST"])
        return api

    # --- endpoints -----------------------------------------------------------

    async def _parse_batch(self, request: Request) -> Response:
        self._stats.requests += 1
        try:
            body = await request.body()
        except ClientDisconnect:
            return Response(status_code=499)  # nobody left to read it
        max_images = self._config.max_images
        try:
            if len(body) > _INLINE_BODY_BYTES:
                images = await asyncio.to_thread(_read_batch, body, max_images)
            else:
                images = _read_batch(body, max_images)
        except _Rejected as exc:
            self._stats.rejected += 1
            return _json(exc.status, {"detail": exc.detail})
        del body

        try:
            await self._wait_unpaused()
        except _ShuttingDown:
            return _json(503, {"detail": "simulator shutting down"})

        config = self._config
        mode: str | None = None
        if config.fail_rate > 0 and self._rng.random() < config.fail_rate:
            mode = config.fail_mode
            self._stats.injected[mode] += 1
            if mode == "5xx":
                return _json(config.fail_status, {"detail": "simulated backend error"})

        batch_id = f"sim-{next(self._batch_ids):06d}"
        task = asyncio.create_task(self._run_batch(batch_id, images, mode))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        job = _Job(task, mode)

        if config.redirect_after_s is not None:
            if not await _finished(task, config.redirect_after_s):
                self._keep(batch_id, job)
                self._stats.redirects += 1
                location = str(request.url_for("result", batch_id=batch_id))
                return Response(status_code=303, headers={"location": location})
        else:
            # The batch goes on when the client gives up, as a Modal call does.
            await asyncio.shield(task)
        return await self._deliver(request, job)

    async def _result(self, request: Request, batch_id: str) -> Response:
        job = self._jobs.get(batch_id)
        if job is None:
            return _json(404, {"detail": f"unknown or expired result {batch_id}"})
        hold = self._config.redirect_after_s
        # Holding 0 s would bounce the client until its redirect limit.
        if not await _finished(job.task, hold if hold else None):
            self._stats.redirects += 1
            return Response(status_code=303, headers={"location": str(request.url)})
        return await self._deliver(request, job)

    async def _health(self) -> Response:
        if not self._config.healthy:
            return _json(503, {"status": "unhealthy"})
        return _json(200, {"status": "healthy", "service": "dolphin-simulator"})

    async def _get_stats(self, request: Request) -> Response:
        flag = request.query_params.get("processed", "1").lower()
        return _json(200, self.stats(include_processed=flag not in {"0", "false"}))

    async def _reset_stats(self) -> Response:
        self.reset_stats()
        return _json(200, {"reset": True})

    async def _get_control(self) -> Response:
        return _json(200, self._config.to_dict())

    async def _post_control(self, request: Request) -> Response:
        try:
            changes = orjson.loads(await request.body())
        except ClientDisconnect:
            return Response(status_code=499)
        except orjson.JSONDecodeError as exc:
            return _json(400, {"detail": f"body is not JSON: {exc}"})
        if not isinstance(changes, dict):
            return _json(400, {"detail": "body must be a JSON object"})
        try:
            config = await self.control(**changes)
        except ValueError as exc:
            return _json(400, {"detail": str(exc)})
        return _json(200, config.to_dict())

    # --- batch execution -------------------------------------------------------

    async def _run_batch(
        self, batch_id: str, images: list[_Image], mode: str | None
    ) -> _Reply:
        try:
            container, cold = await self._acquire()
        except _ShuttingDown:
            return _Reply(503, {"detail": "simulator shutting down"})
        try:
            # The cost model in force when the container starts is the one billed.
            config = self._config
            error = next((image.error for image in images if image.error), None)
            if mode == "failed":
                error = "simulated failure (fail_mode=failed)"
            ms = config.cold_start_ms if cold else 0.0
            ms += config.fixed_ms
            if error is None:
                ms += config.per_image_ms * len(images)
                if mode == "slow":
                    ms += config.slow_ms
            seconds = ms / 1000
            await self._sleep(seconds)
        except _ShuttingDown:
            return _Reply(503, {"detail": "simulator shutting down"})
        finally:
            await self._release(container)

        s = self._stats
        s.batches += 1
        s.images += len(images)
        s.histogram[len(images)] += 1
        s.backend_seconds += seconds
        s.cold_starts += int(cold)
        if error is not None:
            s.failed_batches += 1
            s.failed_images += len(images)
            logger.debug("batch %s failed: %s", batch_id, error)
            return _Reply(
                200,
                {
                    "status": "failed",
                    "error": error,
                    "batch_id": batch_id,
                    "processing_time_seconds": seconds,
                },
            )
        for image in images:
            s.processed.append((image.filename, image.sha256, batch_id))
            s.seen[(image.filename, image.sha256)] += 1
        results = []
        for image in images:
            elements = _elements(image)
            results.append(
                {
                    "filename": image.filename,
                    "elements": elements,
                    "element_count": len(elements),
                }
            )
        return _Reply(
            200,
            {
                "batch_id": batch_id,
                "results": results,
                "processing_time_seconds": seconds,
            },
        )

    async def _deliver(self, request: Request, job: _Job) -> Response:
        reply = job.task.result()
        try:
            await self._sleep(self._config.delay_ms / 1000)
        except _ShuttingDown:
            return _json(503, {"detail": "simulator shutting down"})
        if job.mode == "drop" and reply.status == 200:
            return await self._drop(request)
        return _json(reply.status, reply.body)

    async def _drop(self, request: Request) -> Response:
        transport = request.scope.get(_TRANSPORT_KEY)
        abort: Callable[[], None] | None = getattr(transport, "abort", None)
        if abort is None:
            raise SimulatedDrop("connection dropped by the simulator")
        abort()
        # Let the server see the connection lost, so the reply below is discarded
        # instead of written to a dead socket.
        for _ in range(3):
            await asyncio.sleep(0)
        return Response(status_code=500)

    def _keep(self, batch_id: str, job: _Job) -> None:
        self._jobs[batch_id] = job
        while len(self._jobs) > _KEPT_RESULTS:
            oldest_id, oldest = next(iter(self._jobs.items()))
            if not oldest.task.done():
                break
            del self._jobs[oldest_id]

    async def _wait_unpaused(self) -> None:
        if not self._config.paused:
            return
        async with self._cond:
            await self._cond.wait_for(
                lambda: self._closing.is_set() or not self._config.paused
            )
        if self._closing.is_set():
            raise _ShuttingDown

    async def _acquire(self) -> tuple[int, bool]:
        self._waiting += 1
        try:
            async with self._cond:
                await self._cond.wait_for(
                    lambda: (
                        self._closing.is_set()
                        or len(self._busy) < self._config.containers
                    )
                )
        finally:
            self._waiting -= 1
        if self._closing.is_set():
            raise _ShuttingDown
        # Modal routes to a warm container when one is free.
        free_warm = self._warm - self._busy
        if free_warm:
            container = min(free_warm)
        else:
            container = next(
                i for i in itertools.count() if i not in self._busy | self._warm
            )
        cold = container not in self._warm
        self._warm.add(container)
        self._busy.add(container)
        self._stats.max_concurrent = max(self._stats.max_concurrent, len(self._busy))
        return container, cold

    async def _release(self, container: int) -> None:
        self._busy.discard(container)
        async with self._cond:
            self._cond.notify_all()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, or raise _ShuttingDown as soon as the simulator closes."""
        if self._closing.is_set():
            raise _ShuttingDown
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        except TimeoutError:
            return
        raise _ShuttingDown


async def _finished(task: asyncio.Task[_Reply], wait_s: float | None) -> bool:
    done, _ = await asyncio.wait({task}, timeout=wait_s)
    return bool(done)


# --- Serving -------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn server that reports its URL once listening, and closes the
    simulator on SIGINT/SIGTERM then exits 0."""

    def __init__(
        self,
        config: uvicorn.Config,
        simulator: Simulator,
        on_started: Callable[[str, asyncio.AbstractEventLoop], None],
    ) -> None:
        super().__init__(config)
        self.simulator = simulator
        self._on_started = on_started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing_task: asyncio.Future[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self._on_started(f"http://{host}:{port}", self._loop)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): it re-raises the signal after shutdown, which
        # would end the CLI with a signal status instead of 0.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_simulator)

    def _close_simulator(self) -> None:
        # Kept so the task is not collected before it runs.
        self._closing_task = asyncio.ensure_future(self.simulator.aclose())

    def run_forever(self) -> None:
        """Serve on a new loop (uvloop when installed) until should_exit."""
        loop_factory = self.config.get_loop_factory() or asyncio.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(self.serve())


def _uvicorn_config(
    app: ASGIApp, host: str, port: int, log_level: str
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # Leave logging set-up to the embedding process (or main()).
        log_config=None,
        access_log=False,
        lifespan="on",
        # Well past any client's idle time, so a benchmark never races the server
        # closing a pooled connection as it sends on it.
        timeout_keep_alive=75,
        # aclose() answers everything pending, so this only bounds a stuck stop.
        timeout_graceful_shutdown=5,
    )


class RunningSimulator:
    """A simulator served by uvicorn in a background thread.

    Its methods are safe to call from any thread other than the server's.
    """

    def __init__(
        self,
        simulator: Simulator,
        server: _Server,
        thread: threading.Thread,
        loop: asyncio.AbstractEventLoop,
        base_url: str,
    ) -> None:
        self.simulator = simulator
        self.base_url = base_url
        self._server = server
        self._thread = thread
        self._loop = loop
        self._stopped = False

    @property
    def parse_batch_url(self) -> str:
        return f"{self.base_url}/parse-batch"

    @property
    def health_url(self) -> str:
        return f"{self.base_url}/health"

    def stats(self, include_processed: bool = True) -> dict[str, Any]:
        return self._call(lambda: self.simulator.stats(include_processed))

    def reset_stats(self) -> None:
        self._call(self.simulator.reset_stats)

    def control(self, **changes: Any) -> SimConfig:
        return self._run(self.simulator.control(**changes))

    def stop(self) -> None:
        """Answer pending requests with 503, stop the server, join the thread."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
                self._run(self.simulator.aclose())
            self._server.should_exit = True
            self._thread.join(timeout=15)
            if self._thread.is_alive():
                logger.warning("simulator thread did not stop in 15 s")

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, coro: Awaitable[_T]) -> _T:
        async def wrapper() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(10)

    def _call(self, fn: Callable[[], _T]) -> _T:
        async def wrapper() -> _T:
            return fn()

        return self._run(wrapper())


def start_in_thread(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> RunningSimulator:
    """Serve a new Simulator on host:port (0 = a free port) in a daemon thread."""
    simulator = Simulator(config)
    started = threading.Event()
    found: dict[str, Any] = {}

    def on_started(url: str, loop: asyncio.AbstractEventLoop) -> None:
        found.update(url=url, loop=loop)
        started.set()

    server = _Server(
        _uvicorn_config(simulator.app, host, port, log_level), simulator, on_started
    )

    def run() -> None:
        try:
            server.run_forever()
        except BaseException as exc:  # uvicorn raises SystemExit on a bind error
            found["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=run, name="dolphin-simulator", daemon=True)
    thread.start()
    started.wait(timeout=30)
    if "url" not in found:
        server.should_exit = True
        thread.join(timeout=10)
        raise RuntimeError(f"simulator did not start: {found.get('error')!r}")
    return RunningSimulator(simulator, server, thread, found["loop"], found["url"])


def run_in_thread(config: SimConfig | None = None) -> tuple[str, Callable[[], None]]:
    """Serve a new Simulator on a free 127.0.0.1 port: (base_url, stop)."""
    running = start_in_thread(config)
    return running.base_url, running.stop


@contextlib.asynccontextmanager
async def serve(config: SimConfig | None = None) -> AsyncIterator[RunningSimulator]:
    """``async with serve(cfg) as sim:`` a thread-served simulator, stopped on exit.

    It runs on its own loop, so a busy test loop cannot distort its timing.
    """
    running = await asyncio.to_thread(start_in_thread, config)
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop)


@contextlib.contextmanager
def running_simulator(config: SimConfig | None = None) -> Iterator[RunningSimulator]:
    running = start_in_thread(config)
    try:
        yield running
    finally:
        running.stop()


# --- CLI -------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.simulator",
        description="Simulated Dolphin batch endpoint on Modal.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--fixed-ms", type=float, default=400.0)
    parser.add_argument("--per-image-ms", type=float, default=25.0)
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--cold-start-ms", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument(
        "--fail-mode",
        choices=[*FAIL_MODES, *_FAIL_MODE_ALIASES],
        default="5xx",
        help="'refuse' is taken as 'drop' (close the connection unanswered)",
    )
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--slow-ms", type=float, default=10_000.0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--redirect-after-s", type=float, default=None)
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = SimConfig(
            fixed_ms=args.fixed_ms,
            per_image_ms=args.per_image_ms,
            containers=args.containers,
            cold_start_ms=args.cold_start_ms,
            fail_rate=args.fail_rate,
            fail_mode=cast(
                FailMode, _FAIL_MODE_ALIASES.get(args.fail_mode, args.fail_mode)
            ),
            fail_status=args.fail_status,
            slow_ms=args.slow_ms,
            delay_ms=args.delay_ms,
            redirect_after_s=args.redirect_after_s,
            max_images=args.max_images,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    simulator = Simulator(config)

    def on_started(url: str, _: asyncio.AbstractEventLoop) -> None:
        # The URL alone on stdout's first line, for scripts that start the CLI.
        print(url, flush=True)
        logger.info("simulator listening on %s with %s", url, config)

    server = _Server(
        _uvicorn_config(simulator.app, args.host, args.port, args.log_level),
        simulator,
        on_started,
    )
    server.run_forever()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
