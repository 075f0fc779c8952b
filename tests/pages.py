"""Document pages rendered with Pillow, with the words printed on them.

Tests that need a real page to parse (the local backend, the API, the worker)
build one here instead of shipping fixture files, and check what came back
against the words the page was drawn with. Everything is deterministic for a
given ``seed``.

    png, words = render_page(seed=3)
    words["left"]   # the words of the left column, in reading order
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]
FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont

FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/TTF"),
    Path("/usr/share/fonts/truetype/liberation"),
)
FONT_FILES = {
    "regular": ("DejaVuSerif.ttf", "LiberationSerif-Regular.ttf"),
    "bold": ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf"),
    "sans": ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"),
}

# Common words OCR models read reliably: no proper nouns, digits or look-alike
# letter pairs, at least four letters so a match is meaningful.
_WORDS = """
    about above across action active after again against agent almost along
    already also always amount animal answer anyone appear apply area argue
    around arrive article artist assume attack author avoid away back balance
    base beach become before begin behind believe below benefit better beyond
    bird black blood board body book border bottom brain branch bread break
    bridge bring brother budget build burden business button camera campaign
    cancer capital career carry catch cause cell center central century chair
    challenge chance change charge check child choice church citizen city civil
    claim class clear close coach coast cold collection college color common
    community company compare computer concern condition consider contain
    control corner cost country couple course court cover create crime culture
    current customer damage dance danger dark daughter debate decade decide
    deep defense degree design detail develop device dinner direction discover
    disease doctor door dream drive during early earth east economy edge
    effect effort eight either election energy engine enjoy enough enter entire
    environment evening event evidence exactly example expert explain family
    farmer father fear feeling field figure final finger finish fire first
    floor flower focus follow forest forget form forward friend front garden
    general glass global ground group growth guess happen harbor health heart
    heavy history hold home hope hospital hotel house human hundred idea image
    impact include income industry inside island issue itself kitchen knowledge
    land language large later launch lawyer leader learn leave letter level
    light likely line listen little local long machine magazine maintain major
    manager market material matter meeting member memory message method middle
    might minute mission model modern moment money month morning mother motion
    mountain movement music nation nature near network never news night north
    note number object ocean office often open order other owner page painting
    paper parent partner party pass past patient pattern peace people period
    person phone picture piece place plan plant player point police policy
    popular position power practice prepare present pressure price private
    problem process produce product program project property protect provide
    public purpose quality question quickly rather reach ready reason receive
    record region remain remember report research resource response result
    return river road rock room rule safe sample scene school science season
    second section security seek sense series serve service seven share shore
    short shoulder side sign silver simple single sister size skill small
    social society soldier someone south space speak special sport spring staff
    stage stand start state station stock stone store story street strong
    student study style subject success summer support surface system table
    teacher team theory thing third thought thousand three through today
    together tonight total tough toward town trade travel tree trial trouble
    truth turn under unit until upon value various video view village visit
    voice wall watch water weapon weather week weight west whatever white whole
    wide window winter within without woman wonder worker world writer yard
    young
"""
VOCABULARY = tuple(_WORDS.split())


@dataclass(slots=True)
class PageLayout:
    """A rendered page: the image, the words of each section, their boxes."""

    image: Image.Image
    words: dict[str, list[str]] = field(default_factory=dict)
    boxes: dict[str, Box] = field(default_factory=dict)

    def png(self) -> bytes:
        return to_png(self.image)


@cache
def font(kind: str, size: int) -> FontT:
    """A TrueType font of the machine, or Pillow's scalable built-in one."""
    for directory in FONT_DIRS:
        for name in FONT_FILES[kind]:
            path = directory / name
            if path.is_file():
                return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def to_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def to_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_page(
    seed: int = 0,
    *,
    width: int = 1240,
    height: int = 1754,
    two_columns: bool = True,
    table: bool = True,
) -> tuple[bytes, dict[str, list[str]]]:
    """A PNG page and its words by section.

    Sections, top to bottom: ``title``, ``intro`` (a full-width paragraph),
    ``left`` and ``right`` (a two-column section, each column two paragraphs
    whose breaks line up, the case a naive XY-cut reads row by row),
    ``table`` (a ruled 4x4 grid, row by row) and ``footer``.
    """
    page = render_page_layout(
        seed, width=width, height=height, two_columns=two_columns, table=table
    )
    return page.png(), page.words


def render_page_layout(
    seed: int = 0,
    *,
    width: int = 1240,
    height: int = 1754,
    two_columns: bool = True,
    table: bool = True,
) -> PageLayout:
    """Like :func:`render_page`, keeping the image and each section's box."""
    # Sizes are fractions of an A4 page at 150 dpi so other sizes keep the look.
    unit = width / 1240
    words = _WordSource(seed)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    page = PageLayout(image=image)
    margin = round(100 * unit)
    right_edge = width - margin
    body = font("regular", round(25 * unit))
    y = round(110 * unit)

    title_words = [w.capitalize() for w in words.take(4)]
    title_font = font("bold", round(58 * unit))
    title = " ".join(title_words)
    title_w = round(draw.textlength(title, font=title_font))
    title_x = (width - title_w) // 2
    draw.text((title_x, y), title, font=title_font, fill="black")
    page.words["title"] = title_words
    page.boxes["title"] = _box(draw, (title_x, y), title, title_font)
    y = page.boxes["title"][3] + round(70 * unit)

    intro = words.take(30)
    page.boxes["intro"] = _paragraph(draw, intro, body, margin, y, right_edge)
    page.words["intro"] = intro
    y = page.boxes["intro"][3] + round(60 * unit)

    if two_columns:
        gutter = round(70 * unit)
        col_w = (right_edge - margin - gutter) // 2
        columns = {"left": margin, "right": margin + col_w + gutter}
        bottoms = []
        for name, x in columns.items():
            first, second = words.take(20), words.take(20)
            top = _paragraph(draw, first, body, x, y, x + col_w)
            # The second paragraph starts at the same height in both columns.
            para_y = y + round(230 * unit)
            low = _paragraph(draw, second, body, x, para_y, x + col_w)
            page.words[name] = first + second
            page.boxes[name] = (top[0], top[1], max(top[2], low[2]), low[3])
            bottoms.append(low[3])
        y = max(bottoms) + round(70 * unit)

    if table:
        rows, cols = 4, 4
        cell_w = (right_edge - margin) // cols
        cell_h = round(62 * unit)
        cells = [words.take(cols) for _ in range(rows)]
        head = font("bold", round(24 * unit))
        cell_font = font("sans", round(24 * unit))
        for r in range(rows + 1):
            yy = y + r * cell_h
            draw.line([(margin, yy), (margin + cols * cell_w, yy)], "black", 2)
        for c in range(cols + 1):
            xx = margin + c * cell_w
            draw.line([(xx, y), (xx, y + rows * cell_h)], "black", 2)
        for r, row in enumerate(cells):
            for c, word in enumerate(row):
                face = head if r == 0 else cell_font
                tx = margin + c * cell_w + round(18 * unit)
                ty = y + r * cell_h + round(16 * unit)
                draw.text((tx, ty), word, font=face, fill="black")
        page.words["table"] = [word for row in cells for word in row]
        page.boxes["table"] = (margin, y, margin + cols * cell_w, y + rows * cell_h)

    footer_words = words.take(5)
    footer_font = font("sans", round(19 * unit))
    footer_y = height - round(90 * unit)
    footer = " ".join(footer_words)
    draw.text((margin, footer_y), footer, font=footer_font, fill="black")
    page.words["footer"] = footer_words
    page.boxes["footer"] = _box(draw, (margin, footer_y), footer, footer_font)
    return page


def render_text_image(
    words: list[str], *, width: int = 1400, height: int = 120, size: int = 40
) -> Image.Image:
    """One line of text: a page strip of any size, e.g. very wide or very tall."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    face = font("sans", size)
    draw.text((20, max(0, (height - size) // 2)), " ".join(words), font=face, fill=0)
    return image


def render_word_strip(
    words: list[str], *, width: int, height: int, size: int
) -> tuple[Image.Image, dict[str, Box]]:
    """Words spread evenly along a strip (very wide or very tall pages).

    Returns the image and each word's box, so a test can check that boxes come
    back in the strip's own pixels after the parser has downscaled it.
    """
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    face = font("sans", size)
    boxes: dict[str, Box] = {}
    horizontal = width >= height
    step = (width if horizontal else height) / len(words)
    for i, word in enumerate(words):
        length = draw.textlength(word, font=face)
        if horizontal:
            xy = (round(i * step + (step - length) / 2), (height - size) // 2)
        else:
            xy = ((width - round(length)) // 2, round(i * step + (step - size) / 2))
        draw.text(xy, word, font=face, fill="black")
        boxes[word] = _box(draw, xy, word, face)
    return image, boxes


def corrupt_image() -> bytes:
    """Bytes that start like a PNG and then break off."""
    png = to_png(render_text_image(["broken"]))
    return png[:64] + b"\x00garbage" * 32


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` whose pixel data is a few bytes.

    Opening it costs nothing, so it tests that size limits are checked before
    any pixel is decoded (decoding it would fail: the data is truncated).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return struct.pack(">I", len(data)) + kind + data + crc


class _WordSource:
    """Distinct words in a seeded order, so sections never share a word."""

    def __init__(self, seed: int) -> None:
        self._words = list(VOCABULARY)
        random.Random(seed).shuffle(self._words)

    def take(self, count: int) -> list[str]:
        if count > len(self._words):
            msg = f"vocabulary exhausted: {count} words wanted"
            raise ValueError(msg)
        taken, self._words = self._words[:count], self._words[count:]
        return taken


def _box(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, face: FontT) -> Box:
    x1, y1, x2, y2 = draw.textbbox(xy, text, font=face)
    return round(x1), round(y1), round(x2), round(y2)


def _paragraph(
    draw: ImageDraw.ImageDraw,
    words: list[str],
    face: FontT,
    left: int,
    top: int,
    right: int,
) -> Box:
    """Draw words wrapped between left and right; return the paragraph's box."""
    size = getattr(face, "size", 20)
    leading = round(size * 1.55)
    lines: list[str] = []
    current: list[str] = []
    for word in words:
        candidate = " ".join([*current, word])
        if current and draw.textlength(candidate, font=face) > right - left:
            lines.append(" ".join(current))
            current = [word]
        else:
            current.append(word)
    if current:
        lines.append(" ".join(current))
    x2 = left
    y = top
    bottom = top
    for line in lines:
        draw.text((left, y), line, font=face, fill="black")
        box = _box(draw, (left, y), line, face)
        x2 = max(x2, box[2])
        bottom = box[3]
        y += leading
    return left, top, x2, bottom
