"""Reading a parse request's body, JSON or multipart, never more than the limit.

The limit is checked twice: against Content-Length before a byte is read, and
while the body streams in, so an absent or lying Content-Length cannot make the
API buffer more than the largest allowed image.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import orjson
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from common.errors import ConnectorError

from .errors import api_error
from .models import ParseBody
from .validation import (
    decode_base64,
    json_body_limit,
    multipart_body_limit,
    too_large,
)

JSON = "application/json"
MULTIPART = "multipart/form-data"
DEFAULT_UPLOAD_NAME = "upload"
MULTIPART_FIELDS = frozenset({"file", "filename"})


@dataclass(frozen=True, slots=True)
class Upload:
    """The image and filename as the caller sent them, not yet checked.

    JSON bodies carry the image as base64 text, decoded later off the event loop.
    """

    filename: str
    image: bytes = b""
    image_base64: str | None = None

    def image_bytes(self, max_image_bytes: int) -> bytes:
        if self.image_base64 is not None:
            return decode_base64(self.image_base64, max_image_bytes)
        if len(self.image) > max_image_bytes:
            raise too_large(max_image_bytes, "image")
        return self.image

    @property
    def size_hint(self) -> int:
        return len(self.image_base64 or self.image)


async def read_upload(request: Request, max_image_bytes: int) -> Upload:
    """The image and filename of a JSON or multipart body, within the size limit."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == JSON:
        limit = json_body_limit(max_image_bytes)
    elif media_type == MULTIPART:
        limit = multipart_body_limit(max_image_bytes)
    else:
        raise api_error(
            "unsupported_media_type",
            f"content type {media_type or 'none'!r} is not accepted; send "
            f"{JSON} or {MULTIPART} with a 'file' field",
        )

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit, "request body")

    chunks = _capped(request, limit)
    if media_type == JSON:
        return await _read_json(chunks)
    return await _read_multipart(request, chunks)


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(limit, "request body")
        yield chunk


async def _read_json(chunks: AsyncIterator[bytes]) -> Upload:
    raw = b"".join([chunk async for chunk in chunks])
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise api_error(
            "invalid_json", f"the body is not valid JSON: {exc.msg} at byte {exc.pos}"
        ) from None
    del raw
    if not isinstance(document, dict):
        raise api_error(
            "invalid_json",
            'the body must be a JSON object: {"image_data": ..., "filename": ...}',
        )
    try:
        body = ParseBody.model_validate(document)
    except ValidationError as exc:
        raise invalid_fields(exc) from None
    return Upload(body.filename, image_base64=body.image_data)


def invalid_fields(exc: ValidationError) -> ConnectorError:
    # The offending values are left out: they may be megabytes of base64.
    problems = [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    named = ", ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
        for e in exc.errors()
    )
    return api_error(
        "invalid_field",
        f"{named}; expected image_data (base64 string) and filename (string)",
        detail={"errors": problems},
    )


async def _read_multipart(
    request: Request, chunks: AsyncGenerator[bytes, None]
) -> Upload:
    parser = MultiPartParser(
        request.headers, chunks, max_files=1, max_fields=len(MULTIPART_FIELDS)
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise api_error("invalid_multipart", f"multipart body: {exc.message}") from None
    try:
        unknown = sorted(set(form.keys()) - MULTIPART_FIELDS)
        upload = form.get("file")
        name = form.get("filename")
        if unknown:
            raise _field_error(f"unknown field(s) {unknown}")
        if upload is None:
            raise _field_error("the 'file' field with the image is missing")
        if not isinstance(upload, UploadFile):
            raise _field_error("'file' must be a file part (curl -F file=@page.png)")
        if name is not None and not isinstance(name, str):
            raise _field_error("'filename' must be a text field, not a file")
        image = await upload.read()
        return Upload(name or upload.filename or DEFAULT_UPLOAD_NAME, image=image)
    finally:
        await form.close()


def _field_error(problem: str) -> ConnectorError:
    return api_error(
        "invalid_field",
        f"{problem}; send the image as 'file' and optionally a 'filename' field",
    )
