"""Unit tests of the request checks: each bad input gets its own code and status."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from api.admission import DEFAULT_RETRY_AFTER_S, retry_after_s
from api.errors import CATALOG, api_error, status_for_body
from api.metrics import outcome_for
from api.validation import (
    check_request_id,
    decode_base64,
    encoded_limit,
    inspect_image,
    json_body_limit,
    parse_idempotency_key,
    parse_timeout_header,
    sanitize_filename,
)
from common.errors import ConnectorError
from tests.api.images import make_image

PNG = make_image(fmt="PNG")
MAX = 10_000


def raised(call: object, *args: object) -> ConnectorError:
    with pytest.raises(ConnectorError) as info:
        call(*args)  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("", "empty_image", id="empty"),
        pytest.param(
            base64.b64encode(PNG).decode()[:-2], "invalid_base64", id="no-pad"
        ),
        pytest.param("iVBO Rw0K", "invalid_base64", id="space"),
        pytest.param("iVBORw0K\nGgo=", "invalid_base64", id="newline"),
        pytest.param("ab-_cd==", "invalid_base64", id="urlsafe-alphabet"),
        pytest.param("data:image/png;base64,iVBORw0K", "invalid_base64", id="data-url"),
        pytest.param("aéb=", "invalid_base64", id="non-ascii"),
        pytest.param("QQ==QQ==", "invalid_base64", id="padding-inside"),
        pytest.param(
            "A" * (encoded_limit(MAX) + 4), "payload_too_large", id="too-long"
        ),
    ],
)
def test_bad_base64_is_refused_with_its_code(text: str, code: str) -> None:
    """Only strict, padded base64 of an image within the limit decodes."""
    error = raised(decode_base64, text, MAX)
    assert error.code == code
    assert error.status == CATALOG[code].status


def test_strict_base64_decodes_to_the_image() -> None:
    """A correctly encoded image comes back byte for byte."""
    assert decode_base64(base64.b64encode(PNG).decode(), MAX) == PNG


def test_data_url_error_says_to_drop_the_prefix() -> None:
    """The message tells a caller sending a data: URL what to change."""
    error = raised(decode_base64, "data:image/png;base64,AAAA", MAX)
    assert "data: URL prefix" in error.message


def _webp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20)).save(buffer, format="WEBP")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "content_type", "size"),
    [
        pytest.param(make_image(64, 48, "PNG"), "image/png", (64, 48), id="png"),
        pytest.param(make_image(40, 30, "JPEG"), "image/jpeg", (40, 30), id="jpeg"),
        pytest.param(make_image(12, 9, "TIFF"), "image/tiff", (12, 9), id="tiff"),
        pytest.param(_webp(), "image/webp", (30, 20), id="webp"),
    ],
)
def test_supported_images_are_recognised_from_their_header(
    image: bytes, content_type: str, size: tuple[int, int]
) -> None:
    """PNG, JPEG, TIFF and WebP pass with their type and pixel size."""
    info = inspect_image(image)
    assert (info.content_type, (info.width, info.height)) == (content_type, size)


@pytest.mark.parametrize(
    ("image", "code"),
    [
        pytest.param(b"", "empty_image", id="empty"),
        pytest.param(make_image(fmt="GIF"), "unsupported_image", id="gif"),
        pytest.param(make_image(fmt="BMP"), "unsupported_image", id="bmp"),
        pytest.param(b"%PDF-1.7 not an image", "unsupported_image", id="pdf"),
        pytest.param(PNG[:8], "invalid_image", id="png-magic-only"),
        pytest.param(PNG[:8] + b"\x00" * 40, "invalid_image", id="png-corrupt-header"),
        pytest.param(b"\xff\xd8\xff\xe0garbage", "invalid_image", id="jpeg-truncated"),
        pytest.param(b"RIFF\x00\x00\x00\x00WEBPVP8 ", "invalid_image", id="webp-empty"),
    ],
)
def test_bad_images_are_refused_with_their_code(image: bytes, code: str) -> None:
    """Unknown formats get 415, broken headers of known formats 422."""
    error = raised(inspect_image, image)
    assert (error.code, error.status) == (code, CATALOG[code].status)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("page.png", "page.png", id="plain"),
        pytest.param("scans/2026/page.png", "page.png", id="posix-path"),
        pytest.param("C:\\scans\\page.png", "page.png", id="windows-path"),
        pytest.param("../../etc/passwd", "passwd", id="traversal"),
        pytest.param("mixed\\dirs/page 1.png", "page 1.png", id="mixed-separators"),
        pytest.param("  página.png ", "página.png", id="unicode-trimmed"),
    ],
)
def test_filenames_keep_only_their_last_path_part(raw: str, expected: str) -> None:
    """Directories of either separator are stripped; the name itself is kept."""
    assert sanitize_filename(raw, 255) == expected


@pytest.mark.parametrize(
    ("raw", "max_chars"),
    [
        pytest.param("", 255, id="empty"),
        pytest.param("scans/", 255, id="directory-only"),
        pytest.param("..", 255, id="dot-dot"),
        pytest.param("page\x00.png", 255, id="nul"),
        pytest.param("page\n.png", 255, id="newline"),
        pytest.param("dir\x1b/page.png", 255, id="escape-in-directory"),
        pytest.param("page\u200b.png", 255, id="zero-width-space"),
        pytest.param("a" * 256, 255, id="over-contract-limit"),
        pytest.param("a" * 300, 4096, id="setting-above-contract-limit"),
        pytest.param("abcdef.png", 8, id="over-configured-limit"),
    ],
)
def test_bad_filenames_are_refused(raw: str, max_chars: int) -> None:
    """Control characters, empty names and long names get invalid_filename."""
    error = raised(sanitize_filename, raw, max_chars)
    assert (error.code, error.status) == ("invalid_filename", 422)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, 1800.0, id="absent"),
        pytest.param("30", 30.0, id="integer"),
        pytest.param(" 2.5 ", 2.5, id="float"),
        pytest.param("86400", 1800.0, id="above-default-is-capped"),
    ],
)
def test_timeout_header_may_only_lower_the_default(
    header: str | None, expected: float
) -> None:
    """X-Request-Timeout shortens the wait, never extends it."""
    assert parse_timeout_header(header, 1800.0) == expected


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("", id="empty"),
        pytest.param("soon", id="word"),
        pytest.param("0", id="zero"),
        pytest.param("-5", id="negative"),
        pytest.param("nan", id="nan"),
        pytest.param("inf", id="inf"),
    ],
)
def test_bad_timeout_header_is_invalid_header(header: str) -> None:
    """A timeout that is not a positive finite number is a 400."""
    error = raised(parse_timeout_header, header, 1800.0)
    assert (error.code, error.status) == ("invalid_header", 400)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("k" * 256, id="too-long"),
        pytest.param("has space", id="space"),
        pytest.param("clé", id="non-ascii"),
    ],
)
def test_bad_idempotency_keys_are_invalid_header(key: str) -> None:
    """Idempotency keys are 1-255 visible ASCII characters."""
    assert raised(parse_idempotency_key, key).code == "invalid_header"


def test_idempotency_key_is_optional_and_kept_verbatim() -> None:
    """A missing key means no idempotency; a valid one is returned as sent."""
    assert parse_idempotency_key(None) is None
    assert parse_idempotency_key("order-42:page-1") == "order-42:page-1"


@pytest.mark.parametrize(
    "request_id",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("../etc", id="path"),
        pytest.param("id with space", id="space"),
    ],
)
def test_malformed_request_ids_are_refused(request_id: str) -> None:
    """Request ids in paths are checked before Redis is asked."""
    assert raised(check_request_id, request_id).code == "invalid_request_id"


@pytest.mark.parametrize(
    ("depth", "threshold", "throughput", "expected"),
    [
        pytest.param(41, 41, 0.0, DEFAULT_RETRY_AFTER_S, id="no-throughput-default"),
        pytest.param(41, 41, 100.0, 1.0, id="fast-clamped-to-1"),
        pytest.param(8400, 8300, 0.5, 60.0, id="slow-clamped-to-60"),
        pytest.param(8309, 8300, 2.0, 5.0, id="ten-needed-at-2-per-s"),
    ],
)
def test_retry_after_follows_measured_throughput(
    depth: int, threshold: int, throughput: float, expected: float
) -> None:
    """Retry-After is the time to free one slot, clamped to 1-60 s."""
    assert retry_after_s(depth, threshold, throughput) == expected


def test_json_body_limit_admits_the_largest_image_as_base64() -> None:
    """The body cap leaves room for the base64 of a maximal image."""
    max_bytes = 50 * 1024 * 1024
    encoded = len(base64.b64encode(b"\x00" * max_bytes))
    assert encoded == encoded_limit(max_bytes)
    assert json_body_limit(max_bytes) > encoded + 1000


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"success": True}, 200, id="result"),
        pytest.param(api_error("parse_failed", "x").body("r"), 502, id="parse-failed"),
        pytest.param(api_error("deadline_exceeded", "x").body("r"), 504, id="deadline"),
        pytest.param({"success": False, "error": {"code": "new"}}, 502, id="unknown"),
        pytest.param({"success": False}, 502, id="no-error-object"),
    ],
)
def test_stored_bodies_map_to_their_status(
    body: dict[str, object], status: int
) -> None:
    """A worker's error body answers the status of its code; unknown codes 502."""
    assert status_for_body(body) == status


def test_every_code_has_one_status_and_an_outcome() -> None:
    """The catalog is consistent with the exception classes and metric outcomes."""
    for entry in CATALOG.values():
        error = api_error(entry.code, "message")
        assert (error.code, error.status) == (entry.code, entry.status)
        assert outcome_for(entry.status) != "ok"
