"""The Dolphin batch endpoint on Modal, over HTTP.

``POST <parse-batch URL>`` with ``{"images": [{"image_data", "filename"}]}``;
the answer lists ``results`` in input order, or is ``{"status": "failed"}``
when one image spoiled the batch (raised as ``BackendError(batch_failed=True)``
so the caller can split it). Modal answers requests running past 150 s with a
303 to a result URL, which the client follows with a GET.

Connection errors, timeouts, 408, 429 and 5xx are retried with exponential
backoff and full jitter, up to ``attempts`` tries in all; other 4xx are not.
An answer that does not match the request (count, order, filenames) is an
error of the whole batch, never silently mapped onto the wrong requests.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from common.settings import Settings
from stream.backends.base import (
    BackendError,
    BackendHealth,
    BatchItem,
    BatchOutcome,
    ItemError,
    ItemOutcome,
    ItemResult,
)
from stream.backends.modal_urls import modal_urls

logger = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({408, 429})
HEALTH_TIMEOUT_S = 10.0
# Payloads above this are encoded off the event loop: 32 pages of base64 JSON
# take long enough to stall every other task.
ENCODE_INLINE_MAX_BYTES = 1024 * 1024


class ModalBackend:
    name = "modal"

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 600.0,
        attempts: int = 3,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        max_connections: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.parse_batch_url, self.health_url = modal_urls(endpoint)
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._rng = rng or random.Random()
        # One connection per batch slot, plus one for health checks.
        limits = httpx.Limits(
            max_connections=max_connections + 1,
            max_keepalive_connections=max_connections + 1,
        )
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=limits,
            follow_redirects=True,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ModalBackend:
        if not settings.modal_api_endpoint:
            raise ValueError("modal_api_endpoint (MODAL_API_ENDPOINT) is not set")
        return cls(
            settings.modal_api_endpoint,
            timeout_s=settings.backend_timeout_s,
            attempts=settings.backend_attempts,
            retry_base_s=settings.backend_retry_base_s,
            max_connections=settings.max_concurrent_batches,
        )

    async def parse_batch(self, items: Sequence[BatchItem]) -> BatchOutcome:
        body = await _encode(items)
        started_s = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                response = await self._post(body)
            except _Retriable as exc:
                if attempt == self.attempts:
                    logger.warning(
                        "backend_gave_up",
                        extra={
                            "attempt": attempt,
                            "error": str(exc),
                            "consequence": "the batch fails as a whole",
                        },
                    )
                    msg = f"Modal failed {attempt} attempts; last: {exc}"
                    raise BackendError(msg) from exc
                delay_s = self._backoff_s(attempt, exc.retry_after_s)
                logger.warning(
                    "backend_retry",
                    extra={
                        "attempt": attempt,
                        "attempts": self.attempts,
                        "error": str(exc),
                        "consequence": f"retrying in {delay_s:.2f} s",
                    },
                )
                await asyncio.sleep(delay_s)
                continue
            wall_s = time.monotonic() - started_s
            return _outcome(response, items, wall_s, attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def health(self) -> BackendHealth:
        try:
            response = await self._client.get(self.health_url, timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError as exc:
            return BackendHealth(self.name, False, f"{type(exc).__name__}: {exc}")
        if response.status_code != 200:
            return BackendHealth(self.name, False, f"HTTP {response.status_code}")
        return BackendHealth(self.name, True, response.text[:200])

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, body: bytes) -> dict[str, Any]:
        """One attempt; raises _Retriable or a final BackendError."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self._client.post(
                    self.parse_batch_url,
                    content=body,
                    headers={"content-type": "application/json"},
                )
        except TimeoutError as exc:
            raise _Retriable(f"no answer within {self.timeout_s} s") from exc
        except httpx.TooManyRedirects as exc:
            raise BackendError(f"Modal redirected too often: {exc}") from exc
        except httpx.TransportError as exc:
            raise _Retriable(f"{type(exc).__name__}: {exc}") from exc

        status = response.status_code
        if status >= 500 or status in RETRIED_STATUSES:
            raise _Retriable(f"HTTP {status}", _retry_after_s(response))
        if status == 413:
            # Too big for one request: halves will fit.
            raise BackendError(
                "Modal refused the batch as too large (HTTP 413)", batch_failed=True
            )
        if status != 200:
            msg = f"Modal refused the batch: HTTP {status}: {response.text[:200]}"
            raise BackendError(msg, retriable=False)
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise BackendError(f"Modal answered invalid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise BackendError("Modal answered JSON that is not an object")
        return payload

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        ceiling_s = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1))
        delay_s = self._rng.uniform(0, ceiling_s)
        if retry_after_s is not None:
            delay_s = max(delay_s, min(retry_after_s, self.retry_max_s))
        return delay_s


class _Retriable(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _retry_after_s(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


async def _encode(items: Sequence[BatchItem]) -> bytes:
    def encode() -> bytes:
        images = [
            {
                "image_data": base64.b64encode(item.image).decode(),
                "filename": item.filename,
            }
            for item in items
        ]
        return orjson.dumps({"images": images})

    if sum(len(item.image) for item in items) <= ENCODE_INLINE_MAX_BYTES:
        return encode()
    return await asyncio.to_thread(encode)


def _outcome(
    payload: dict[str, Any], items: Sequence[BatchItem], wall_s: float, attempts: int
) -> BatchOutcome:
    if payload.get("status") == "failed":
        error = payload.get("error") or "the batch failed without a message"
        raise BackendError(f"Modal failed the batch: {error}", batch_failed=True)
    results = payload.get("results")
    if not isinstance(results, list):
        raise BackendError("Modal answered without a results list")
    if len(results) != len(items):
        msg = f"Modal answered {len(results)} results for {len(items)} images"
        raise BackendError(msg)

    outcomes: list[ItemOutcome] = []
    for index, (item, result) in enumerate(zip(items, results, strict=True)):
        filename = result.get("filename") if isinstance(result, dict) else None
        if filename != item.filename:
            msg = (
                f"Modal result {index} is for {filename!r}, expected "
                f"{item.filename!r}; results out of order"
            )
            raise BackendError(msg)
        outcomes.append(_item_outcome(item.filename, result))

    reported_s = payload.get("processing_time_seconds")
    processing_s = (
        float(reported_s)
        if isinstance(reported_s, int | float) and reported_s >= 0
        else wall_s
    )
    return BatchOutcome(
        items=outcomes,
        batch_id=str(payload.get("batch_id") or uuid.uuid4().hex[:16]),
        processing_time_s=processing_s,
        backend_seconds=processing_s,
        extra={"wall_s": wall_s, "attempts": attempts},
    )


def _item_outcome(filename: str, result: dict[str, Any]) -> ItemOutcome:
    if result.get("error") or result.get("success") is False:
        error = result.get("error") or "the parser failed this image"
        return ItemError(filename, "parse_failed", str(error))
    elements = result.get("elements")
    if not isinstance(elements, list):
        return ItemError(filename, "parse_failed", "Modal returned no elements list")
    cleaned: list[dict[str, Any]] = []
    for order, element in enumerate(elements):
        try:
            cleaned.append(_element(element, order))
        except (TypeError, ValueError, OverflowError) as exc:
            msg = f"Modal returned a malformed element {order}: {exc}"
            return ItemError(filename, "parse_failed", msg)
    cleaned.sort(key=lambda e: e["reading_order"])
    return ItemResult(filename, cleaned)


def _element(element: Any, order: int) -> dict[str, Any]:
    if not isinstance(element, dict):
        raise TypeError("not an object")
    bbox = element.get("bbox")
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise ValueError(f"bbox must be [x1, y1, x2, y2], got {bbox!r}")
    reading_order = element.get("reading_order", order)
    return {
        **element,
        "label": str(element.get("label", "")),
        "bbox": [round(float(v)) for v in bbox],
        "text": str(element.get("text") or ""),
        "reading_order": int(reading_order),
    }
