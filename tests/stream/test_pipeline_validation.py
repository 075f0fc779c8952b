"""Checks the worker adds to the message codec, and how failures are answered."""

from __future__ import annotations

from datetime import timedelta

import pytest

from common.messages import ParseRequest, PoisonMessage, utc_now
from common.store import RequestState
from stream.replies import error_for, refusal_body
from stream.validation import check_image, sniff_image
from tests.stream.worker_kit import fake_png


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        pytest.param(fake_png(1), "png", id="png"),
        pytest.param(b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg", id="jpeg"),
        pytest.param(b"II*\x00\x08\x00\x00\x00", "tiff", id="tiff-le"),
        pytest.param(b"MM\x00*\x00\x00\x00\x08", "tiff", id="tiff-be"),
        pytest.param(b"RIFF\x24\x00\x00\x00WEBPVP8 ", "webp", id="webp"),
        pytest.param(b"GIF89a", None, id="gif"),
        pytest.param(b"%PDF-1.7", None, id="pdf"),
        pytest.param(b"RIFF\x24\x00\x00\x00WAVE", None, id="wav"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_sniff_image_knows_the_formats_the_parser_reads(
    data: bytes, kind: str | None
) -> None:
    """Only PNG, JPEG, TIFF and WebP signatures are recognised."""
    assert sniff_image(data) == kind


def _request(image: bytes, content_type: str = "image/png") -> ParseRequest:
    return ParseRequest(
        request_id="r1",
        filename="page.png",
        image=image,
        content_type=content_type,
        deadline=utc_now() + timedelta(minutes=1),
        reply_topic="replies",
    )


@pytest.mark.parametrize(
    ("image", "content_type", "reason"),
    [
        pytest.param(b"just text", "image/png", "not_an_image", id="text-as-png"),
        pytest.param(fake_png(2), "text/plain", "unsupported_content_type", id="text"),
    ],
)
def test_check_image_refuses_what_the_parser_cannot_read(
    image: bytes, content_type: str, reason: str
) -> None:
    """A bad signature or a non-image content type is a poison message."""
    with pytest.raises(PoisonMessage) as caught:
        check_image(_request(image, content_type))
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "content_type", ["image/png", "application/octet-stream", "image/png; q=1"]
)
def test_check_image_trusts_the_signature_under_generic_types(
    content_type: str,
) -> None:
    """The bytes decide; a generic or parameterised content type is fine."""
    assert check_image(_request(fake_png(3), content_type)) == "png"


@pytest.mark.parametrize(
    ("code", "answer_code", "state"),
    [
        pytest.param("deadline_exceeded", "deadline_exceeded", RequestState.EXPIRED),
        pytest.param("cancelled", "cancelled", RequestState.CANCELLED),
        pytest.param("parse_failed", "parse_failed", RequestState.FAILED),
        pytest.param("unavailable", "backend_unavailable", RequestState.FAILED),
        pytest.param("undecodable_image", "parse_failed", RequestState.FAILED),
    ],
)
def test_item_errors_map_to_client_codes_and_final_states(
    code: str, answer_code: str, state: RequestState
) -> None:
    """Backend-specific reasons reach clients as parse_failed, with the reason
    kept in the detail."""
    error, final = error_for(code, "message")
    body = error.body("r1")
    assert body["error"]["code"] == answer_code
    assert final is state
    if answer_code == "parse_failed" and code != "parse_failed":
        assert body["error"]["detail"] == {"reason": code}


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        pytest.param("too_large", "payload_too_large"),
        pytest.param("not_an_image", "unsupported_image"),
        pytest.param("empty_value", "empty_image"),
        pytest.param("bad_filename", "invalid_filename"),
        pytest.param("key_mismatch", "invalid_field"),
        pytest.param("processing_error", "internal_error"),
    ],
)
def test_refused_requests_are_told_a_catalog_code(reason: str, code: str) -> None:
    """A dead-lettered request's caller gets a code of the shared error
    catalog, with the dead-letter reason in the detail."""
    body = refusal_body("r1", reason, "why")
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["detail"] == {"reason": reason}
