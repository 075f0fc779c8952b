"""Checks of everything a caller sends, before anything is admitted or queued.

Each function either returns the cleaned value or raises the ConnectorError whose
code names what was wrong. None of them touch the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import warnings
from dataclasses import dataclass

from PIL import Image

from common.errors import ConnectorError
from common.messages import MAX_FILENAME_CHARS

from .errors import api_error

# Room for the JSON around the base64 text, escaped slashes and the filename.
BODY_SLACK_BYTES = 64 * 1024
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_IDEMPOTENCY_KEY_CHARS = 255

# Pillow format name and content type of each image kind, by leading bytes.
_PNG = (b"\x89PNG\r\n\x1a\n", "PNG", "image/png")
_JPEG = (b"\xff\xd8\xff", "JPEG", "image/jpeg")
_TIFF = ((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF", "image/tiff")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    content_type: str
    width: int
    height: int


def encoded_limit(max_image_bytes: int) -> int:
    """Length of the base64 text of the largest allowed image."""
    return math.ceil(max_image_bytes / 3) * 4


def json_body_limit(max_image_bytes: int) -> int:
    encoded = encoded_limit(max_image_bytes)
    return encoded + encoded // 32 + BODY_SLACK_BYTES


def multipart_body_limit(max_image_bytes: int) -> int:
    return max_image_bytes + BODY_SLACK_BYTES


def too_large(limit: int, what: str) -> ConnectorError:
    return api_error(
        "payload_too_large",
        f"the {what} is over the limit of {limit} bytes; send a smaller image",
        detail={"limit_bytes": limit},
    )


def decode_base64(text: str, max_image_bytes: int) -> bytes:
    """The image bytes of ``image_data``; strict RFC 4648 base64, nothing else."""
    if not text:
        raise api_error("empty_image", "image_data is empty; send the image bytes")
    if len(text) > encoded_limit(max_image_bytes):
        raise too_large(max_image_bytes, "decoded image")
    # b64decode(validate=True) checks the alphabet but takes any run of '='
    # after full groups ("QUJD====" decodes); strict base64 has whole groups
    # of four and at most two '=' of padding.
    tail = text[-4:]
    padding = len(tail) - len(tail.rstrip("="))
    try:
        if len(text) % 4 or padding > 2:
            raise ValueError("not whole, padded groups of four")
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        hint = " (drop the data: URL prefix)" if text.startswith("data:") else ""
        raise api_error(
            "invalid_base64",
            "image_data is not standard base64: use the +/ alphabet with = padding "
            f"and no whitespace or line breaks{hint}",
        ) from None
    if not image:
        raise api_error("empty_image", "image_data decodes to zero bytes")
    if len(image) > max_image_bytes:
        raise too_large(max_image_bytes, "decoded image")
    return image


def _sniff(image: bytes) -> tuple[str, str] | None:
    """Pillow format and content type from the magic bytes, if supported."""
    for magic, fmt, content_type in (_PNG, _JPEG, _TIFF):
        if image.startswith(magic):
            return fmt, content_type
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "WEBP", "image/webp"
    return None


def inspect_image(image: bytes) -> ImageInfo:
    """Type and size of the image, read from its header without decoding pixels."""
    if not image:
        raise api_error("empty_image", "the image has zero bytes")
    sniffed = _sniff(image)
    if sniffed is None:
        raise api_error(
            "unsupported_image",
            "the image is not PNG, JPEG, TIFF or WebP (judged by its first bytes); "
            "convert it to one of those",
        )
    fmt, content_type = sniffed
    try:
        with warnings.catch_warnings():
            # Large but legal pages warn; only the hard limit below is refused.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(image), formats=[fmt]) as opened:
                width, height = opened.size
    except Image.DecompressionBombError as exc:
        raise api_error(
            "payload_too_large",
            f"the image has too many pixels to parse: {exc}",
        ) from None
    except Exception as exc:
        raise api_error(
            "invalid_image",
            f"the {fmt} header does not decode ({type(exc).__name__}); "
            "the file is truncated or corrupt",
        ) from None
    if width <= 0 or height <= 0:
        raise api_error("invalid_image", f"the image is {width}x{height} pixels")
    return ImageInfo(content_type, width, height)


def _preview(text: str, limit: int = 40) -> str:
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def sanitize_filename(raw: str, max_chars: int) -> str:
    """The last path part of ``raw``, checked to be printable and short enough."""
    bad = next((c for c in raw if not c.isprintable()), None)
    if bad is not None:
        raise api_error(
            "invalid_filename",
            f"filename {_preview(raw)} contains the non-printable character "
            f"U+{ord(bad):04X}; remove it",
        )
    name = re.split(r"[\\/]", raw)[-1].strip()
    if name in {"", ".", ".."}:
        raise api_error(
            "invalid_filename", f"filename {_preview(raw)} names no file; send e.g. "
            "'page.png'"
        )  # fmt: skip
    limit = min(max_chars, MAX_FILENAME_CHARS)
    if len(name) > limit:
        raise api_error(
            "invalid_filename",
            f"filename of {len(name)} characters is longer than {limit}; shorten it",
        )
    return name


def parse_timeout_header(value: str | None, default_s: float) -> float:
    """Seconds to wait: X-Request-Timeout may shorten the default, never extend it."""
    if value is None:
        return default_s
    try:
        timeout_s = float(value.strip())
    except ValueError:
        timeout_s = math.nan
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise api_error(
            "invalid_header",
            f"X-Request-Timeout {_preview(value)} is not a positive number of seconds",
        )
    return min(timeout_s, default_s)


def parse_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 0 < len(value) <= MAX_IDEMPOTENCY_KEY_CHARS or not all(
        " " < c <= "~" for c in value
    ):
        raise api_error(
            "invalid_header",
            "Idempotency-Key must be 1 to 255 visible ASCII characters, e.g. a UUID",
        )
    return value


def check_request_id(value: str) -> str:
    if not REQUEST_ID_PATTERN.fullmatch(value):
        raise api_error(
            "invalid_request_id",
            f"{_preview(value)} is not a request id: letters, digits and ._:- "
            "up to 128 characters",
        )
    return value


def fingerprint(image: bytes, filename: str) -> str:
    """Identity of a request body, to tell a retry from a different request."""
    digest = hashlib.sha256(image)
    digest.update(b"\x00" + filename.encode())
    return digest.hexdigest()
