"""The Kafka message contract, version 1.

A request is a CloudEvent in the Kafka binary binding: the image bytes are the
value, the key is the request id, and the event attributes travel as ``ce_*``
headers. A reply is keyed by the same request id and carries the JSON body of the
HTTP answer (a result or an error). See the README for the table of headers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

SPEC_VERSION = "1.0"
REQUEST_TYPE = "io.dolphin.parse.request.v1"
REPLY_TYPE = "io.dolphin.parse.reply.v1"
REQUEST_TYPES = frozenset({REQUEST_TYPE})

H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_SOURCE = "ce_source"
H_TYPE = "ce_type"
H_TIME = "ce_time"
H_SUBJECT = "ce_subject"
H_CONTENT_TYPE = "content-type"
H_FILENAME = "ce_filename"
H_DEADLINE = "ce_deadline"
H_REPLY_TO = "ce_replyto"
H_OUTCOME = "ce_outcome"

IMAGE_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/tiff", "image/webp"})
MAX_FILENAME_CHARS = 255

Headers = Sequence[tuple[str, bytes]]


class PoisonMessage(Exception):
    """A request message that can never be processed; ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def new_request_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision, e.g. 2026-01-15T10:30:00.000Z."""
    return (
        moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ParseRequest:
    request_id: str
    filename: str
    image: bytes
    content_type: str
    deadline: datetime
    reply_topic: str
    source: str = "/dolphin-connector/api"
    time: datetime = field(default_factory=utc_now)

    @property
    def deadline_ms(self) -> int:
        return int(self.deadline.timestamp() * 1000)


def encode_request(
    request: ParseRequest,
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """Key, value and headers of the Kafka message for ``request``."""
    headers = [
        (H_SPECVERSION, SPEC_VERSION),
        (H_ID, request.request_id),
        (H_SOURCE, request.source),
        (H_TYPE, REQUEST_TYPE),
        (H_TIME, format_time(request.time)),
        (H_CONTENT_TYPE, request.content_type),
        (H_FILENAME, request.filename),
        (H_DEADLINE, format_time(request.deadline)),
        (H_REPLY_TO, request.reply_topic),
    ]
    encoded = [(name, value.encode()) for name, value in headers]
    return request.request_id.encode(), request.image, encoded


def headers_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Decode headers to text; raises PoisonMessage on undecodable values."""
    decoded: dict[str, str] = {}
    for name, value in headers or ():
        if value is None:
            continue
        try:
            decoded[name.lower()] = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise PoisonMessage("bad_header", f"header {name!r} is not UTF-8") from None
    return decoded


def decode_request(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
    *,
    default_reply_topic: str,
    max_image_bytes: int,
) -> ParseRequest:
    """Check a request message against the contract and return it.

    Raises PoisonMessage with a stable reason when the message can never be
    processed. Image decoding is left to the caller.
    """
    attrs = headers_dict(headers)
    if not attrs:
        raise PoisonMessage("missing_headers", "the message has no CloudEvents headers")
    for required in (H_SPECVERSION, H_ID, H_TYPE, H_FILENAME):
        if not attrs.get(required):
            raise PoisonMessage("missing_header", f"header {required!r} is missing")
    if attrs[H_SPECVERSION] != SPEC_VERSION:
        raise PoisonMessage(
            "bad_specversion", f"ce_specversion {attrs[H_SPECVERSION]!r} is not 1.0"
        )
    if attrs[H_TYPE] not in REQUEST_TYPES:
        raise PoisonMessage(
            "bad_type", f"ce_type {attrs[H_TYPE]!r} is not {REQUEST_TYPE}"
        )

    request_id = attrs[H_ID]
    if len(request_id) > 128 or not request_id.isprintable():
        raise PoisonMessage("bad_request_id", "ce_id must be printable, <= 128 chars")
    if key is not None and key.decode("utf-8", "replace") != request_id:
        raise PoisonMessage("key_mismatch", "the message key differs from ce_id")

    filename = attrs[H_FILENAME]
    if len(filename) > MAX_FILENAME_CHARS or not filename.isprintable():
        raise PoisonMessage(
            "bad_filename", "ce_filename must be printable, <= 255 chars"
        )

    if not value:
        raise PoisonMessage("empty_value", "the message value holds no image bytes")
    if len(value) > max_image_bytes:
        raise PoisonMessage(
            "too_large", f"image of {len(value)} bytes exceeds {max_image_bytes}"
        )

    content_type = attrs.get(H_CONTENT_TYPE, "application/octet-stream")
    try:
        deadline = parse_time(attrs[H_DEADLINE]) if attrs.get(H_DEADLINE) else None
        sent = parse_time(attrs[H_TIME]) if attrs.get(H_TIME) else utc_now()
    except ValueError as exc:
        raise PoisonMessage("bad_time", str(exc)) from None
    reply_topic = attrs.get(H_REPLY_TO) or default_reply_topic
    if not _valid_topic(reply_topic):
        raise PoisonMessage("bad_reply_topic", f"ce_replyto {reply_topic!r} is invalid")

    return ParseRequest(
        request_id=request_id,
        filename=filename,
        image=bytes(value),
        content_type=content_type,
        deadline=deadline or datetime.max.replace(tzinfo=UTC),
        reply_topic=reply_topic,
        source=attrs.get(H_SOURCE, ""),
        time=sent,
    )


def _valid_topic(name: str) -> bool:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    return 0 < len(name) <= 249 and set(name) <= allowed and name not in {".", ".."}


# --- Replies ---


def result_body(
    *,
    request_id: str,
    filename: str,
    elements: list[dict[str, Any]],
    batch_id: str,
    processing_time_s: float,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """The success body shared by the HTTP 200 answer and the reply message."""
    ordered = sorted(elements, key=lambda e: e.get("reading_order", 0))
    return {
        "request_id": request_id,
        "filename": filename,
        "processing_time_seconds": round(processing_time_s, 4),
        "timestamp": format_time(timestamp or utc_now()),
        "elements": ordered,
        "element_count": len(ordered),
        "batch_id": batch_id,
        "success": True,
    }


def encode_reply(
    request_id: str, body: dict[str, Any]
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    outcome = "ok" if body.get("success") else "error"
    headers = [
        (H_SPECVERSION, SPEC_VERSION),
        (H_ID, uuid.uuid4().hex),
        (H_SOURCE, "/dolphin-connector/worker"),
        (H_TYPE, REPLY_TYPE),
        (H_TIME, format_time(utc_now())),
        (H_SUBJECT, request_id),
        (H_CONTENT_TYPE, "application/json"),
        (H_OUTCOME, outcome),
    ]
    encoded = [(name, value.encode()) for name, value in headers]
    return request_id.encode(), orjson.dumps(body), encoded


def decode_reply(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, Any]]:
    """Request id and body of a reply message; raises ValueError if malformed."""
    if not key or not value:
        raise ValueError("reply without key or value")
    body = orjson.loads(value)
    if not isinstance(body, dict):
        raise ValueError("reply body is not a JSON object")
    return key.decode(), body
