"""Small images for API tests, generated with Pillow."""

from __future__ import annotations

import base64
import io
import random

from PIL import Image


def make_image(
    width: int = 64, height: int = 48, fmt: str = "PNG", seed: int = 0
) -> bytes:
    """A small image whose bytes differ per ``seed``."""
    image = Image.new("RGB", (width, height), (seed % 256, (seed // 256) % 256, 90))
    image.putpixel((0, 0), (seed % 7, seed % 11, seed % 13))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noisy_png(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG of random pixels: it does not compress, about 3 bytes a pixel."""
    pixels = random.Random(seed).randbytes(width * height * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parse_json(seed: int = 0, filename: str = "page.png") -> dict[str, str]:
    return {"image_data": b64(make_image(seed=seed)), "filename": filename}
