"""Turn uploaded bytes into pixels the models can take, or say why not.

Every check that can be made from the header is made before a pixel is decoded,
so a small file claiming a huge canvas costs nothing. Pages above the inference
size are shrunk here; ``scale_x``/``scale_y`` map model coordinates back to the
pixels of the image as uploaded.

EXIF orientation is deliberately not applied: Dolphin reads images with a plain
``Image.open(...).convert("RGB")``, and both backends must report boxes in the
same pixel frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

MAX_SIDE_PX = 20_000
MAX_PIXELS = 100_000_000

EMPTY_IMAGE = "empty_image"
UNDECODABLE_IMAGE = "undecodable_image"
IMAGE_TOO_LARGE = "image_too_large"

Pixels = npt.NDArray[np.uint8]


class ImageRejected(Exception):
    """This image cannot be parsed; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class DecodedPage:
    bgr: Pixels
    """H x W x 3, uint8, BGR: the channel order both model packages expect."""
    original_width: int
    original_height: int
    scale_x: float
    """Original pixels per inference pixel, horizontally."""
    scale_y: float
    image_format: str

    @property
    def downscaled(self) -> bool:
        return self.scale_x != 1.0 or self.scale_y != 1.0


def decode_page(data: bytes, max_side_px: int) -> DecodedPage:
    """Decode, validate and fit an image into ``max_side_px`` for inference.

    Raises ImageRejected with code empty_image, undecodable_image or
    image_too_large.
    """
    if not data:
        raise ImageRejected(EMPTY_IMAGE, "the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(IMAGE_TOO_LARGE, str(exc)) from None
    except Exception as exc:
        # Image plugins fail on malformed input with all sorts of exceptions
        # (struct.error, IndexError, ...), not only UnidentifiedImageError.
        msg = f"not a readable image ({len(data)} bytes): {_reason(exc)}"
        raise ImageRejected(UNDECODABLE_IMAGE, msg) from None

    with image:
        width, height = image.size
        image_format = image.format or "unknown"
        _check_dimensions(width, height)
        target = _fit(width, height, max_side_px)
        if target != (width, height):
            # JPEG can decode straight at 1/2, 1/4 or 1/8 scale: a large photo
            # never has to be held at full size.
            image.draft("RGB", target)
        try:
            image.load()
            pixels = np.asarray(_to_rgb(image), dtype=np.uint8)
        except Image.DecompressionBombError as exc:
            raise ImageRejected(IMAGE_TOO_LARGE, str(exc)) from None
        except Exception as exc:
            msg = f"the {image_format} image could not be decoded: {_reason(exc)}"
            raise ImageRejected(UNDECODABLE_IMAGE, msg) from None

    if (pixels.shape[1], pixels.shape[0]) != target:
        # INTER_AREA averages source pixels, keeping thin strokes legible
        # where nearest or bilinear sampling would drop them.
        pixels = np.asarray(
            cv2.resize(pixels, target, interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
    bgr = np.ascontiguousarray(pixels[:, :, ::-1])
    return DecodedPage(
        bgr=bgr,
        original_width=width,
        original_height=height,
        scale_x=width / target[0],
        scale_y=height / target[1],
        image_format=image_format,
    )


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_dimensions(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected(EMPTY_IMAGE, f"the image has no pixels ({width}x{height})")
    if max(width, height) > MAX_SIDE_PX or width * height > MAX_PIXELS:
        msg = (
            f"the image is {width}x{height} px; the limit is {MAX_SIDE_PX} px a "
            f"side and {MAX_PIXELS // 1_000_000} megapixels"
        )
        raise ImageRejected(IMAGE_TOO_LARGE, msg)


def _fit(width: int, height: int, max_side_px: int) -> tuple[int, int]:
    longest = max(width, height)
    if longest <= max_side_px:
        return width, height
    ratio = max_side_px / longest
    return max(1, round(width * ratio)), max(1, round(height * ratio))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # A plain convert clips 16-bit and float samples at 255, turning most
        # scans white; rescale them to 8 bits instead.
        values = np.asarray(image, dtype=np.float32)
        top = float(values.max()) if values.size else 0.0
        if top > 255.0:
            values = values * (255.0 / (65535.0 if top <= 65535.0 else top))
        gray = Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        # Transparent areas become white paper, not black, as in a viewer.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
