"""The life of one POST /parse: check, admit, produce, wait, answer.

Nothing reaches Redis admission or Kafka before every check of the request has
passed. Once admitted, the request ends in exactly one of: the worker's answer,
a withdrawal when Kafka refused it, or a cancellation (deadline or caller gone)
recorded in Redis so the worker skips it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError
from starlette.requests import Request

from common.errors import ConnectorError
from common.logging import bind
from common.messages import ParseRequest
from common.store import RequestState, now_ms, record_answer

from .admission import Admitted, Duplicate, Overloaded, idempotency_key
from .body import Upload, read_upload
from .context import ApiContext
from .errors import api_error
from .validation import (
    fingerprint,
    inspect_image,
    parse_idempotency_key,
    parse_timeout_header,
    sanitize_filename,
)
from .waiting import Body, ClientDisconnected, stored_result, wait_for_answer

logger = logging.getLogger(__name__)

# Images above this are decoded and inspected in a thread, off the event loop.
THREAD_CHECK_BYTES = 1024 * 1024
# Set in a request's state hash once its message is in Kafka.
PRODUCED_FIELD = "produced_ms"


@dataclass(frozen=True, slots=True)
class Checked:
    image: bytes
    filename: str
    content_type: str
    body_hash: str | None


@dataclass(slots=True)
class Pending:
    """An admitted (or joined) request being waited on."""

    request_id: str
    deadline: float
    """time.monotonic() at which the caller gets 504."""
    timeout_s: float
    owner: bool
    """True for the call that queued it; only the owner cancels it."""
    idempotency_redis_key: str | None


async def submit(
    ctx: ApiContext,
    request: Request,
    *,
    client_id: str,
    started: float,
    timeout_header: str | None,
    idempotency_header: str | None,
) -> Body:
    """Run one parse request to its answer body; raises ConnectorError on refusal."""
    settings = ctx.settings
    timeout_s = parse_timeout_header(timeout_header, settings.request_timeout_s)
    idempotency = parse_idempotency_key(idempotency_header)
    deadline_at = datetime.now(UTC) + timedelta(seconds=timeout_s)

    # Cheap refusals first, before a possibly large body is read.
    await ctx.rate_limiter.check(client_id)
    await ctx.breaker.check()
    ctx.producer.check_available()
    # Only a bounded number of bodies are read and held at once; the others
    # wait in their sockets, so memory stays flat however many callers come.
    async with ctx.uploads:
        pending, future = await _admit_and_produce(
            ctx, request, client_id, started, timeout_s, idempotency, deadline_at
        )
    return await _wait(ctx, request, pending, future)


async def _admit_and_produce(
    ctx: ApiContext,
    request: Request,
    client_id: str,
    started: float,
    timeout_s: float,
    idempotency: str | None,
    deadline_at: datetime,
) -> tuple[Pending, asyncio.Future[Body]]:
    """Read, check, admit and produce; answers what to wait on."""
    settings = ctx.settings
    request_id: str = request.state.request_id
    upload = await read_upload(request, settings.max_image_bytes)
    checked = await _check(upload, ctx, with_hash=idempotency is not None)
    del upload

    # Keys are per API key when there are keys; without, callers share one space
    # (an address is no identity: a retry may come from another one).
    scope = client_id if ctx.settings.api_keys else "public"
    redis_key = idempotency_key(ctx.keys, scope, idempotency) if idempotency else None
    pending = Pending(
        request_id=request_id,
        deadline=started + timeout_s,
        timeout_s=timeout_s,
        owner=True,
        idempotency_redis_key=redis_key,
    )
    decision = await ctx.admission.admit(
        request_id,
        checked.filename,
        int(deadline_at.timestamp() * 1000),
        idempotency=(redis_key, checked.body_hash or "") if redis_key else None,
    )
    if isinstance(decision, Overloaded):
        ctx.metrics.queue_depth.set(decision.depth)
        retry_after_s = await ctx.admission.retry_after_s(decision.depth)
        raise api_error(
            "overloaded",
            f"{decision.depth} requests are queued, the limit is "
            f"{ctx.admission.limit}; retry in {retry_after_s:.0f} s",
            retry_after_s=retry_after_s,
        )
    if isinstance(decision, Duplicate):
        return await _join(ctx, request, pending, decision, checked)
    assert isinstance(decision, Admitted)
    ctx.metrics.queue_depth.set(decision.depth)
    logger.debug("request_admitted", extra={"depth": decision.depth})

    # Subscribe before producing: the reply may come back before send() returns.
    future = ctx.router.subscribe(request_id)
    message = ParseRequest(
        request_id=request_id,
        filename=checked.filename,
        image=checked.image,
        content_type=checked.content_type,
        deadline=deadline_at,
        reply_topic=settings.replies_topic,
    )
    try:
        await ctx.producer.send(message, timeout_s=pending.deadline - time.monotonic())
    except BaseException:
        ctx.router.unsubscribe(request_id, future)
        await _withdraw(ctx, pending)
        raise
    await _mark_produced(ctx, request_id)
    return pending, future


async def _check(upload: Upload, ctx: ApiContext, *, with_hash: bool) -> Checked:
    def check() -> Checked:
        image = upload.image_bytes(ctx.settings.max_image_bytes)
        info = inspect_image(image)
        filename = sanitize_filename(upload.filename, ctx.settings.max_filename_chars)
        body_hash = fingerprint(image, filename) if with_hash else None
        return Checked(image, filename, info.content_type, body_hash)

    if upload.size_hint > THREAD_CHECK_BYTES:
        return await asyncio.to_thread(check)
    return check()


async def _join(
    ctx: ApiContext,
    request: Request,
    pending: Pending,
    duplicate: Duplicate,
    checked: Checked,
) -> tuple[Pending, asyncio.Future[Body]]:
    """Answer a repeated Idempotency-Key with the first request's answer."""
    if not duplicate.same_body:
        raise api_error(
            "idempotency_conflict",
            "this Idempotency-Key was already used with a different image or "
            "filename; use a new key for a new request",
            detail={"request_id": duplicate.request_id},
        )
    logger.debug("idempotent_repeat", extra={"joins": duplicate.request_id})
    pending.request_id = duplicate.request_id
    pending.owner = False
    request.state.request_id = duplicate.request_id
    # From here on the lines carry the joined id; the caller's bound() restores.
    bind(request_id=duplicate.request_id)
    future = ctx.router.subscribe(duplicate.request_id)
    try:
        await _adopt_if_unproduced(ctx, pending, checked)
    except BaseException:
        ctx.router.unsubscribe(duplicate.request_id, future)
        raise
    return pending, future


async def _mark_produced(ctx: ApiContext, request_id: str) -> None:
    """Note in the state hash that the request is in Kafka (see _join)."""
    try:
        await ctx.redis.hset(ctx.keys.state(request_id), PRODUCED_FIELD, now_ms())
    except (RedisError, OSError) as exc:
        # A repeat of its Idempotency-Key will produce it again: harmless.
        logger.warning("produced_mark_failed", extra={"error": repr(exc)})


async def _adopt_if_unproduced(
    ctx: ApiContext, pending: Pending, checked: Checked
) -> None:
    """Produce the joined request when nothing says it reached Kafka.

    The API process that admitted it may have died before producing it; its
    caller never learnt the request id, and a repeat would otherwise wait for
    an answer nobody works on. The repeat carries the same image and filename
    (its fingerprint matched), so it produces the request under the first id.
    Should the first produce have landed after all, the worker answers the one
    request id once; only the message is duplicated.
    """
    fields = await ctx.redis.hgetall(ctx.keys.state(pending.request_id))
    state = fields.get(b"state")
    if state != RequestState.QUEUED.value.encode() or PRODUCED_FIELD.encode() in fields:
        return
    try:
        deadline = datetime.fromtimestamp(int(fields[b"deadline_ms"]) / 1000, UTC)
    except (KeyError, ValueError):
        return
    logger.warning("unproduced_request_adopted")
    message = ParseRequest(
        request_id=pending.request_id,
        filename=checked.filename,
        image=checked.image,
        content_type=checked.content_type,
        deadline=deadline,
        reply_topic=ctx.settings.replies_topic,
    )
    await ctx.producer.send(message, timeout_s=pending.deadline - time.monotonic())
    await _mark_produced(ctx, pending.request_id)


async def _wait(
    ctx: ApiContext, request: Request, pending: Pending, future: asyncio.Future[Body]
) -> Body:
    ctx.metrics.inflight.inc()
    try:
        body = await wait_for_answer(
            ctx.router,
            future,
            ctx.redis,
            ctx.keys,
            pending.request_id,
            deadline=pending.deadline,
            disconnected=_disconnected(request),
        )
        if body is None:
            # The worker may have answered between the last poll and now.
            body = await stored_result(ctx.redis, ctx.keys, pending.request_id)
    except ClientDisconnected:
        error = api_error(
            "cancelled", "the caller closed the connection; the request was cancelled"
        )
        await _cancel(ctx, pending, error, "client_disconnected")
        raise error from None
    finally:
        ctx.metrics.inflight.dec()
    if body is not None:
        return body

    error = api_error(
        "deadline_exceeded",
        f"no answer within {pending.timeout_s:g} s; retry later or allow more time "
        "with X-Request-Timeout",
        detail={"timeout_s": pending.timeout_s},
    )
    await _cancel(ctx, pending, error, "deadline_exceeded")
    raise error


async def _disconnected(request: Request) -> None:
    """Completes when the caller closes the connection (the body is read by now)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel(
    ctx: ApiContext, pending: Pending, error: ConnectorError, reason: str
) -> None:
    """Record the request as cancelled, so the worker skips it and GET shows it.

    Only the call that queued the request cancels it: a repeat with the same
    Idempotency-Key that gives up does not take the work from the first caller.
    """
    if not pending.owner:
        return
    logger.info("request_cancelled", extra={"reason": reason})
    try:
        await record_answer(
            ctx.redis,
            ctx.keys,
            pending.request_id,
            error.body(pending.request_id),
            state=RequestState.CANCELLED,
            ttl_s=ctx.settings.result_ttl_s,
        )
        if pending.idempotency_redis_key is not None:
            await ctx.admission.release_idempotency(
                pending.request_id, pending.idempotency_redis_key
            )
    except Exception as exc:
        # The admission entry still expires at the deadline; the worker checks it.
        logger.warning("cancel_record_failed", extra={"error": repr(exc)})


async def _withdraw(ctx: ApiContext, pending: Pending) -> None:
    try:
        await ctx.admission.withdraw(pending.request_id, pending.idempotency_redis_key)
    except Exception as exc:
        logger.warning("withdraw_failed", extra={"error": repr(exc)})
