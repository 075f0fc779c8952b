"""``dolphin parse``: one ``POST /parse`` per input, polite to a busy API.

429 and 503 are waited out (``Retry-After``, capped, or exponential backoff)
and retried a bounded number of times; a refused connection is retried a few
times and then stops the run; any other error answer is final for its input
and counted under the ``error.code`` of its body.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from .inputs import Input
from .run import JobFailed, RunAborted

RETRIED_STATUSES = frozenset({429, 503})
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    busy_attempts: int = 6
    """Tries of one input while the API answers 429 or 503."""
    connect_attempts: int = 4
    """Tries of one input while the API cannot be connected to."""
    base_delay_s: float = 0.5
    """First backoff; it doubles with every further attempt."""
    max_delay_s: float = 30.0
    """Longest single wait, also the cap on a server's Retry-After."""

    def delay_s(
        self, attempt: int, retry_after_s: float | None, jitter: float
    ) -> float:
        """Wait before try ``attempt + 1``; ``jitter`` in [0, 1] spreads clients.

        The server's Retry-After is honoured, never shortened by the backoff.
        """
        backoff = self.base_delay_s * 2.0 ** (attempt - 1) * (0.5 + jitter / 2)
        return min(self.max_delay_s, max(retry_after_s or 0.0, backoff))


def retry_after_s(
    response: httpx.Response, now: datetime | None = None
) -> float | None:
    """Seconds named by ``Retry-After`` (delta or HTTP date), else by the body."""
    header = response.headers.get("retry-after", "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            moment = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            moment = None
        if moment is not None:
            moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
    value = _error(response).get("retry_after_s")
    return float(value) if isinstance(value, int | float) else None


def error_code(response: httpx.Response) -> tuple[str, str]:
    """The stable code and the message of an error answer."""
    error = _error(response)
    code = error.get("code")
    message = error.get("message")
    if not isinstance(code, str):
        code = f"http_{response.status_code}"
    if not isinstance(message, str):
        message = response.reason_phrase or f"HTTP {response.status_code}"
    return code, message


def _result(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise JobFailed("bad_response", "the API answered 200 without a JSON object")
    if body.get("success") is False:
        raise JobFailed(*error_code(response))
    return body


def _error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


class HttpParser:
    """The job of ``dolphin parse``: send one input, return its result body."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        url: str,
        timeout_s: float | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.url = url
        self.timeout_s = timeout_s
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.jitter = jitter

    async def __call__(self, item: Input) -> dict[str, Any]:
        try:
            image = await asyncio.to_thread(item.path.read_bytes)
        except OSError as exc:
            raise JobFailed("unreadable", f"cannot read the file: {exc}") from exc
        payload = {
            "image_data": base64.b64encode(image).decode("ascii"),
            "filename": item.path.name,
        }
        return await self.post(orjson.dumps(payload))

    async def post(self, content: bytes) -> dict[str, Any]:
        """POST /parse with retries; the 200 body, else JobFailed or RunAborted."""
        headers = {
            "content-type": "application/json",
            # The same key on every try: a retry after a lost answer is not
            # parsed twice.
            "idempotency-key": uuid.uuid4().hex,
        }
        if self.timeout_s is not None:
            # The API stops working on it when this client stops waiting.
            headers["x-request-timeout"] = f"{self.timeout_s:g}"
        busy = refused = 0
        while True:
            try:
                response = await self.client.post(
                    "/parse", content=content, headers=headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                refused += 1
                if refused >= self.policy.connect_attempts:
                    msg = (
                        f"cannot reach the API at {self.url}: is the stack up? "
                        "(./dev up)"
                    )
                    raise RunAborted(msg) from exc
                await self.sleep(self.policy.delay_s(refused, None, self.jitter()))
                continue
            except httpx.TimeoutException as exc:
                msg = "no answer within --timeout; the API may still be parsing it"
                raise JobFailed("client_timeout", msg) from exc
            except httpx.TransportError as exc:
                # The connection broke mid-answer: treated like a busy server.
                busy += 1
                if busy >= self.policy.busy_attempts:
                    raise JobFailed("connection_lost", repr(exc)) from exc
                await self.sleep(self.policy.delay_s(busy, None, self.jitter()))
                continue

            if response.status_code == 200:
                return _result(response)
            code, message = error_code(response)
            if response.status_code not in RETRIED_STATUSES:
                raise JobFailed(code, message)
            busy += 1
            if busy >= self.policy.busy_attempts:
                raise JobFailed(code, f"{message} (gave up after {busy} tries)")
            wait = retry_after_s(response)
            await self.sleep(self.policy.delay_s(busy, wait, self.jitter()))
