"""The Kafka message contract: requests round-trip and poison is named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from common.messages import (
    REPLY_TYPE,
    ParseRequest,
    PoisonMessage,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    new_request_id,
    result_body,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
LIMIT = 1024


def _request(**changes: object) -> ParseRequest:
    values: dict[str, object] = {
        "request_id": new_request_id(),
        "filename": "page.png",
        "image": PNG,
        "content_type": "image/png",
        "deadline": datetime(2030, 1, 1, tzinfo=UTC),
        "reply_topic": "dolphin.parse.replies",
    }
    values.update(changes)
    return ParseRequest(**values)  # type: ignore[arg-type]


def _decode(key: bytes | None, value: bytes | None, headers: list) -> ParseRequest:  # type: ignore[type-arg]
    return decode_request(
        key,
        value,
        headers,
        default_reply_topic="dolphin.parse.replies",
        max_image_bytes=LIMIT,
    )


def test_request_round_trips_through_cloudevents_headers() -> None:
    """What encode_request writes, decode_request reads back unchanged."""
    request = _request(deadline=datetime.now(UTC) + timedelta(minutes=5))

    key, value, headers = encode_request(request)
    decoded = _decode(key, value, headers)

    assert key == request.request_id.encode()
    assert value == PNG
    names = {name for name, _ in headers}
    assert {"ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time"} <= names
    assert decoded.request_id == request.request_id
    assert decoded.filename == "page.png"
    assert decoded.reply_topic == "dolphin.parse.replies"
    assert abs((decoded.deadline - request.deadline).total_seconds()) < 0.001


def _replace(headers: list[tuple[str, bytes]], name: str, value: bytes | None) -> list:  # type: ignore[type-arg]
    kept = [(n, v) for n, v in headers if n != name]
    return kept if value is None else [*kept, (name, value)]


def _poison_cases() -> list[object]:
    key, value, headers = encode_request(_request(request_id="abc"))
    return [
        pytest.param(key, value, [], "missing_headers", id="no-headers"),
        pytest.param(
            key, value, _replace(headers, "ce_id", None), "missing_header", id="no-id"
        ),
        pytest.param(
            key,
            value,
            _replace(headers, "ce_filename", None),
            "missing_header",
            id="no-filename",
        ),
        pytest.param(
            key,
            value,
            _replace(headers, "ce_specversion", b"0.3"),
            "bad_specversion",
            id="old-spec",
        ),
        pytest.param(
            key, value, _replace(headers, "ce_type", b"x.y"), "bad_type", id="bad-type"
        ),
        pytest.param(
            key,
            value,
            _replace(headers, "ce_filename", b"\xff\xfe"),
            "bad_header",
            id="non-utf8",
        ),
        pytest.param(b"other", value, headers, "key_mismatch", id="key-mismatch"),
        pytest.param(key, b"", headers, "empty_value", id="empty"),
        pytest.param(key, b"x" * (LIMIT + 1), headers, "too_large", id="too-large"),
        pytest.param(
            key,
            value,
            _replace(headers, "ce_deadline", b"tomorrow"),
            "bad_time",
            id="bad-deadline",
        ),
        pytest.param(
            key,
            value,
            _replace(headers, "ce_replyto", b"no spaces allowed"),
            "bad_reply_topic",
            id="bad-reply-topic",
        ),
        pytest.param(
            key,
            value,
            _replace(headers, "ce_filename", b"a\x00b"),
            "bad_filename",
            id="control-char-filename",
        ),
    ]


@pytest.mark.parametrize(("key", "value", "headers", "reason"), _poison_cases())
def test_poison_messages_are_named(
    key: bytes,
    value: bytes,
    headers: list,
    reason: str,  # type: ignore[type-arg]
) -> None:
    """Each way a request can be malformed has its own stable reason."""
    with pytest.raises(PoisonMessage) as raised:
        _decode(key, value, headers)

    assert raised.value.reason == reason


def test_reply_carries_the_body_keyed_by_request_id() -> None:
    """A reply is keyed by the request id and holds the HTTP body as JSON."""
    body = result_body(
        request_id="r1",
        filename="page.png",
        elements=[
            {"label": "para", "bbox": [0, 10, 5, 20], "text": "b", "reading_order": 1},
            {"label": "title", "bbox": [0, 0, 5, 9], "text": "a", "reading_order": 0},
        ],
        batch_id="b1",
        processing_time_s=1.23456,
    )

    key, value, headers = encode_reply("r1", body)
    request_id, decoded = decode_reply(key, value)

    assert request_id == "r1"
    assert decoded == orjson.loads(orjson.dumps(body))
    assert [e["label"] for e in decoded["elements"]] == ["title", "para"]
    assert decoded["element_count"] == 2
    assert dict(headers)["ce_type"] == REPLY_TYPE.encode()
    assert dict(headers)["ce_outcome"] == b"ok"
