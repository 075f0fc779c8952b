"""Checks on a decoded request that the message codec leaves to the worker.

``common.messages.decode_request`` checks the envelope; here the image bytes are
checked to be one of the formats the parser reads, by their signature rather
than by the declared content type, which a producer may get wrong.
"""

from __future__ import annotations

from common.messages import IMAGE_CONTENT_TYPES, ParseRequest, PoisonMessage

__all__ = ["check_image", "sniff_image"]

_GENERIC_TYPES = frozenset({"application/octet-stream", "image/*"})


def sniff_image(data: bytes) -> str | None:
    """The image format named by the leading bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check_image(request: ParseRequest) -> str:
    """Return the image format; raise PoisonMessage if it is not one we parse."""
    content_type = request.content_type.split(";", 1)[0].strip().lower()
    if content_type not in IMAGE_CONTENT_TYPES and content_type not in _GENERIC_TYPES:
        raise PoisonMessage(
            "unsupported_content_type",
            f"content-type {content_type!r} is not one of "
            f"{sorted(IMAGE_CONTENT_TYPES)}",
        )
    kind = sniff_image(request.image)
    if kind is None:
        raise PoisonMessage(
            "not_an_image",
            "the value is not a PNG, JPEG, TIFF or WebP image "
            f"(first bytes {request.image[:8].hex()})",
        )
    return kind
