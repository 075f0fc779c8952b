"""Unique, valid images for load tests, made cheaply.

Every request must carry different bytes (a real client never sends the same
page twice in a row, and duplicate suppression would otherwise flatter the
figures). A base PNG is rendered once per size; each request gets a copy with a
``tEXt`` chunk holding its sequence number, which keeps it a valid PNG.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import lru_cache

from PIL import Image


@lru_cache(maxsize=8)
def base_png(target_bytes: int, seed: int = 7) -> bytes:
    """A noise PNG of about ``target_bytes`` (noise does not compress)."""
    side = max(8, int((target_bytes / 3) ** 0.5))
    rng = random.Random(seed)
    pixels = rng.randbytes(side * side * 3)
    image = Image.frombytes("RGB", (side, side), pixels)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def unique_png(sequence: int, target_bytes: int = 2048) -> bytes:
    """The base PNG with a text chunk naming ``sequence``, after the header chunk."""
    base = base_png(target_bytes)
    # 8-byte signature + IHDR chunk (4 length + 4 type + 13 data + 4 crc).
    split = 8 + 25
    text = _chunk(b"tEXt", b"seq\x00" + str(sequence).encode())
    return base[:split] + text + base[split:]
