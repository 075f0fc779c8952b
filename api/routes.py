"""The /parse routes: submit a page and wait, or look a request up by id."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect

from common.errors import ConnectorError
from common.logging import bound
from common.messages import new_request_id
from common.store import RequestState, get_result, now_ms

from .context import ApiContext, context
from .errors import (
    api_error,
    body_response,
    error_response,
    json_response,
    redis_unavailable,
)
from .models import (
    LOOKUP_CODES,
    PARSE_CODES,
    ParseBody,
    ParseResult,
    RequestStatus,
    error_responses,
)
from .parse import submit
from .ratelimit import client_identity
from .validation import check_request_id

logger = logging.getLogger(__name__)

router = APIRouter(tags=["parse"])
bearer = HTTPBearer(
    auto_error=False,
    description="Required only when the API is configured with API keys.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]

_PARSE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": ParseBody.model_json_schema()},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "filename": {
                        "type": "string",
                        "description": "Defaults to the uploaded file's name.",
                    },
                },
            }
        },
    },
}


def authenticate(
    ctx: ApiContext, request: Request, credentials: HTTPAuthorizationCredentials | None
) -> str:
    """The client identity for rate limits; 401 when keys are on and none matches."""
    host = request.client.host if request.client else None
    if not ctx.settings.api_keys:
        return client_identity(None, host)
    token = credentials.credentials if credentials else ""
    matched = any(
        hmac.compare_digest(token.encode(), key.get_secret_value().encode())
        for key in ctx.settings.api_keys
    )
    if not token or not matched:
        raise api_error(
            "unauthorized",
            "send a valid API key as 'Authorization: Bearer <key>'",
        )
    return client_identity(token, host)


@router.post(
    "/parse",
    response_model=ParseResult,
    summary="Parse one page and wait for the result",
    openapi_extra={"requestBody": _PARSE_BODY},
    responses={
        200: {"description": "The parsed page (the worker's result body)."},
        **error_responses(*PARSE_CODES),
    },
)
async def parse(
    request: Request,
    credentials: Credentials,
    x_request_timeout: Annotated[
        str | None,
        Header(description="Seconds to wait at most; may only lower the default."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(description="Repeat a request without repeating the work."),
    ] = None,
) -> Response:
    """Send a page as JSON (base64) or multipart; answers when it is parsed.

    The request waits until the page is parsed or its deadline passes (504, and
    the request is cancelled). A caller that disconnects cancels it as well.
    """
    ctx = context(request)
    started = time.monotonic()
    request.state.request_id = new_request_id()
    status: int = 500
    code: str | None = "internal_error"
    with bound(request_id=request.state.request_id):
        try:
            client_id = authenticate(ctx, request, credentials)
            body = await submit(
                ctx,
                request,
                client_id=client_id,
                started=started,
                timeout_header=x_request_timeout,
                idempotency_header=idempotency_key,
            )
            response = body_response(body, request.state.request_id)
            status = response.status_code
            error = body.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            return response
        except ConnectorError as exc:
            status, code = exc.status, exc.code
            raise
        except RedisError as exc:
            failure = redis_unavailable(exc)
            status, code = failure.status, failure.code
            raise failure from exc
        except ClientDisconnect:
            logger.debug("client_disconnected_during_upload")
            failure = api_error("cancelled", "the caller closed the connection")
            status, code = failure.status, failure.code
            return error_response(failure, request.state.request_id)
        finally:
            ctx.metrics.observe(status, code, time.monotonic() - started)
            logger.debug("request_answered", extra={"status": status, "code": code})


@router.get(
    "/parse/{request_id}",
    response_model=ParseResult,
    summary="Fetch a result again, or the state of a request",
    responses={
        200: {"description": "The stored result, or the state once it is final."},
        202: {"model": RequestStatus, "description": "Queued or processing."},
        **error_responses(*LOOKUP_CODES),
    },
)
async def get_parse(
    request: Request, request_id: str, credentials: Credentials
) -> Response:
    """The stored answer while it is retained (its own status), else the state.

    States: queued and processing answer 202; done, cancelled, expired and failed
    answer 200 once the result itself is no longer retained.
    """
    ctx = context(request)
    authenticate(ctx, request, credentials)
    check_request_id(request_id)
    request.state.request_id = request_id

    body = await get_result(ctx.redis, ctx.keys, request_id)
    if body is not None:
        return body_response(body, request_id)

    fields = {
        _text(k): _text(v)
        for k, v in (await ctx.redis.hgetall(ctx.keys.state(request_id))).items()
    }
    state = fields.get("state", "")
    if not state or state == RequestState.UNKNOWN:
        raise api_error(
            "not_found",
            f"no request {request_id!r} is known; results are kept "
            f"{ctx.settings.result_ttl_s} s",
        )
    pending = state in (RequestState.QUEUED, RequestState.PROCESSING)
    if pending and 0 < _int(fields.get("deadline_ms")) < now_ms():
        # Its API process went away before the deadline; nobody will answer.
        state, pending = RequestState.EXPIRED.value, False
    return json_response(
        {"request_id": request_id, "state": state},
        202 if pending else 200,
        {"X-Request-Id": request_id},
    )


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _int(raw: str | None) -> int:
    try:
        return int(float(raw or 0))
    except ValueError:
        return 0
