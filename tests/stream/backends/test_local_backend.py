"""The embedded CPU backend on real pages, with the real models.

Pages are rendered by ``tests/pages.py`` with known words; what comes back is
checked against them. One backend and one parsed page are shared by the module:
a text-dense page costs a few seconds of CPU.
"""

from __future__ import annotations

import asyncio
import io
import re
import warnings
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from common.settings import Settings
from stream.backends.base import (
    Backend,
    BackendError,
    BatchItem,
    ItemError,
    ItemResult,
)
from stream.backends.local import (
    EMPTY_IMAGE,
    IMAGE_TOO_LARGE,
    UNDECODABLE_IMAGE,
    LocalBackend,
    ModelFilesMissing,
    ModelPaths,
    plan_parallelism,
)
from stream.backends.local.ctc import ctc_decode
from stream.backends.local.geometry import Box
from stream.backends.local.images import decode_page
from stream.backends.local.layout import page_elements
from stream.backends.local.models import LayoutRegion, TextLine
from stream.backends.local.reading_order import reading_order
from tests.pages import (
    PageLayout,
    corrupt_image,
    png_header_only,
    render_page_layout,
    render_text_image,
    render_word_strip,
    to_jpeg,
    to_png,
)

ELEMENT_KEYS = {"label", "bbox", "text", "reading_order"}


def words_of(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def first_order(elements: list[dict[str, Any]], word: str) -> int | None:
    """Reading order of the first element whose text has ``word``."""
    for element in elements:
        if word.lower() in words_of(element["text"]):
            return int(element["reading_order"])
    return None


def assert_dolphin_elements(
    elements: list[dict[str, Any]], width: int, height: int
) -> None:
    assert [e["reading_order"] for e in elements] == list(range(len(elements)))
    for element in elements:
        assert set(element) == ELEMENT_KEYS
        assert isinstance(element["label"], str)
        assert isinstance(element["text"], str)
        x1, y1, x2, y2 = element["bbox"]
        assert all(type(v) is int for v in element["bbox"]), element
        assert 0 <= x1 <= x2 <= width, element
        assert 0 <= y1 <= y2 <= height, element


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backend() -> AsyncIterator[LocalBackend]:
    local = LocalBackend()
    await local.warm_up()
    yield local
    await local.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def parsed_page(backend: LocalBackend) -> tuple[PageLayout, ItemResult]:
    page = render_page_layout(seed=11)
    outcome = await backend.parse_batch([BatchItem(page.png(), "page.png")])
    result = outcome.items[0]
    assert isinstance(result, ItemResult), result
    return page, result


# --- A full page ---------------------------------------------------------------


async def test_page_elements_have_dolphins_shape(
    parsed_page: tuple[PageLayout, ItemResult],
) -> None:
    page, result = parsed_page
    assert result.filename == "page.png"
    assert_dolphin_elements(result.elements, *page.image.size)


async def test_page_words_are_recovered(
    parsed_page: tuple[PageLayout, ItemResult],
) -> None:
    page, result = parsed_page
    found = {w for e in result.elements for w in words_of(e["text"])}
    known = [w.lower() for words in page.words.values() for w in words]
    missing = [w for w in known if w not in found]
    assert len(missing) <= 0.1 * len(known), f"missing {missing}"


async def test_title_and_table_are_labelled(
    parsed_page: tuple[PageLayout, ItemResult],
) -> None:
    page, result = parsed_page
    by_word = {w: e for e in result.elements for w in words_of(e["text"])}
    title = page.words["title"][0].lower()
    assert by_word[title]["label"] == "title"
    table_words = [w.lower() for w in page.words["table"] if w.lower() in by_word]
    assert table_words
    assert all(by_word[w]["label"] == "tab" for w in table_words)
    # One table element, its cells row by row.
    (table,) = [e for e in result.elements if e["label"] == "tab"]
    rows = table["text"].split("\n")
    assert words_of(rows[0]) == [w.lower() for w in page.words["table"][:4]]


async def test_reading_order_follows_the_columns(
    parsed_page: tuple[PageLayout, ItemResult],
) -> None:
    page, result = parsed_page
    elements = result.elements

    def orders(section: str) -> list[int]:
        found = [first_order(elements, w) for w in page.words[section]]
        return [o for o in found if o is not None]

    left, right = orders("left"), orders("right")
    assert left and right
    assert max(left) < min(right), "a right-column word is read before the left"
    assert max(orders("title")) < min(orders("intro")) <= max(orders("intro"))
    assert max(orders("intro")) < min(left)
    assert max(right) < min(orders("table"))
    assert max(orders("table")) < min(orders("footer"))
    # Left column words in the order they were printed.
    assert left == sorted(left)


async def test_boxes_locate_the_sections(
    parsed_page: tuple[PageLayout, ItemResult],
) -> None:
    page, result = parsed_page
    title_word = page.words["title"][0].lower()
    (title,) = [e for e in result.elements if title_word in words_of(e["text"])]
    x1, y1, x2, y2 = title["bbox"]
    tx1, ty1, tx2, ty2 = page.boxes["title"]
    assert abs(y1 - ty1) < 25 and abs(y2 - ty2) < 25
    assert x1 < tx1 + 25 and x2 > tx2 - 25


# --- Failures stay with their image ---------------------------------------------


async def test_a_corrupt_image_fails_alone(backend: LocalBackend) -> None:
    good = [["harbor", "window", "garden"], ["river", "market", "village"]]
    items = [
        BatchItem(to_png(render_text_image(good[0])), "a.png"),
        BatchItem(corrupt_image(), "broken.png"),
        BatchItem(to_jpeg(render_text_image(good[1])), "b.jpg"),
    ]
    outcome = await backend.parse_batch(items)

    assert [o.filename for o in outcome.items] == ["a.png", "broken.png", "b.jpg"]
    first, broken, last = outcome.items
    assert isinstance(broken, ItemError)
    assert broken.code == UNDECODABLE_IMAGE
    for result, words in ((first, good[0]), (last, good[1])):
        assert isinstance(result, ItemResult), result
        text = " ".join(e["text"] for e in result.elements)
        assert words_of(text) == words
    assert outcome.batch_id
    assert outcome.processing_time_s > 0
    assert outcome.backend_seconds > 0


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"", EMPTY_IMAGE, id="zero-bytes"),
        pytest.param(b"%PDF-1.7\n%binary", UNDECODABLE_IMAGE, id="not-an-image"),
        pytest.param(png_header_only(0, 100), UNDECODABLE_IMAGE, id="zero-width"),
        pytest.param(png_header_only(500, 400), UNDECODABLE_IMAGE, id="truncated"),
        pytest.param(png_header_only(30_000, 30_000), IMAGE_TOO_LARGE, id="30000px"),
        pytest.param(png_header_only(25_000, 100), IMAGE_TOO_LARGE, id="long-side"),
        pytest.param(png_header_only(12_000, 9_000), IMAGE_TOO_LARGE, id="108MP"),
    ],
)
async def test_unreadable_images_are_item_errors(
    backend: LocalBackend, data: bytes, code: str
) -> None:
    with warnings.catch_warnings():
        # Pillow warns about >89 MP headers before our own limit rejects them.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        outcome = await backend.parse_batch([BatchItem(data, "x.png")])
    (error,) = outcome.items
    assert isinstance(error, ItemError)
    assert error.filename == "x.png"
    assert error.code == code
    assert error.message


async def test_an_empty_batch_is_an_empty_outcome(backend: LocalBackend) -> None:
    outcome = await backend.parse_batch([])
    assert outcome.items == []


async def test_a_blank_page_has_no_elements(backend: LocalBackend) -> None:
    blank = to_png(Image.new("RGB", (800, 1100), "white"))
    outcome = await backend.parse_batch([BatchItem(blank, "blank.png")])
    (result,) = outcome.items
    assert isinstance(result, ItemResult)
    assert result.elements == []


# --- Large pages ----------------------------------------------------------------


async def test_a_wide_page_is_downscaled_and_boxes_map_back(
    backend: LocalBackend,
) -> None:
    words = ["harbor", "window", "garden", "village", "market", "river"]
    image, boxes = render_word_strip(words, width=9000, height=300, size=110)
    outcome = await backend.parse_batch([BatchItem(to_png(image), "wide.png")])
    (result,) = outcome.items
    assert isinstance(result, ItemResult), result
    assert_dolphin_elements(result.elements, 9000, 300)
    text = " ".join(e["text"] for e in result.elements)
    assert words_of(text) == words

    # Every word lies inside the box of the element holding it: boxes come back
    # in the strip's own pixels, far beyond the 2048 px the models saw.
    for word, (wx1, wy1, wx2, wy2) in boxes.items():
        (element,) = [e for e in result.elements if word in words_of(e["text"])]
        x1, y1, x2, y2 = element["bbox"]
        assert x1 <= wx1 + 20 and y1 <= wy1 + 20, (word, element)
        assert x2 >= wx2 - 20 and y2 >= wy2 - 20, (word, element)


def test_decoding_fits_the_longest_side() -> None:
    image = Image.new("RGB", (6000, 3000), "white")
    page = decode_page(to_jpeg(image), 2048)
    assert page.bgr.shape == (1024, 2048, 3)
    assert (page.original_width, page.original_height) == (6000, 3000)
    assert page.scale_x == pytest.approx(6000 / 2048)
    assert page.downscaled


def test_decoding_puts_transparent_areas_on_white() -> None:
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    page = decode_page(to_png(rgba), 2048)
    assert page.bgr.shape == (30, 40, 3)
    assert int(page.bgr.min()) == 255


def test_decoding_rescales_16_bit_grey() -> None:
    values = np.full((20, 30), 30_000, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    page = decode_page(buffer.getvalue(), 2048)
    assert 100 < int(page.bgr[0, 0, 0]) < 140


# --- Concurrency, health, lifecycle -------------------------------------------


async def test_concurrent_batches_all_complete(backend: LocalBackend) -> None:
    words = [["forest", "ocean"], ["bridge", "island"], ["garden", "winter"]]
    batches = [
        [BatchItem(to_png(render_text_image(w, width=700)), f"{i}.png")]
        for i, w in enumerate(words)
    ]
    outcomes = await asyncio.gather(*(backend.parse_batch(b) for b in batches))
    for outcome, expected in zip(outcomes, words, strict=True):
        (result,) = outcome.items
        assert isinstance(result, ItemResult)
        assert words_of(" ".join(e["text"] for e in result.elements)) == expected


async def test_health_reports_the_backend(backend: LocalBackend) -> None:
    health = await backend.health()
    assert health.name == "local-cpu" == backend.name
    assert health.healthy
    assert "models loaded" in health.detail


async def test_a_closed_backend_is_unhealthy_and_refuses_batches() -> None:
    local = LocalBackend(threads=1)
    assert (await local.health()).healthy
    await local.aclose()
    await local.aclose()
    health = await local.health()
    assert not health.healthy
    with pytest.raises(BackendError) as caught:
        await local.parse_batch([BatchItem(b"x", "x.png")])
    assert caught.value.retriable


def test_missing_model_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "layout_cdla.onnx"
    paths = replace(ModelPaths.bundled(), layout=missing)
    with pytest.raises(ModelFilesMissing) as caught:
        LocalBackend(model_paths=paths)
    assert str(missing) in str(caught.value)
    assert "layout" in str(caught.value)


def test_bundled_model_files_are_installed() -> None:
    assert ModelPaths.bundled().missing() == []


async def test_built_from_settings() -> None:
    values = Settings(local_parser_threads=1, local_parser_max_side_px=1024)
    local = LocalBackend.from_settings(values)
    assert (local.workers, local.max_side_px) == (1, 1024)
    as_protocol: Backend = local  # mypy checks the protocol is met
    await as_protocol.aclose()


@pytest.mark.parametrize(
    ("threads", "cpus", "expected"),
    [
        (0, 1, (1, 1)),
        (0, 2, (2, 1)),
        (0, 4, (4, 1)),
        (0, 8, (8, 1)),
        (0, 16, (16, 1)),
        (0, 40, (16, 2)),
        (1, 2, (1, 2)),
        (3, 2, (3, 1)),
        (2, 8, (2, 4)),
    ],
)
def test_parallelism_never_oversubscribes_by_default(
    threads: int, cpus: int, expected: tuple[int, int]
) -> None:
    assert plan_parallelism(threads, cpus) == expected


# --- Pure parts: reading order and text decoding -------------------------------


def test_xy_cut_reads_aligned_columns_column_by_column() -> None:
    boxes = {
        "title": Box(100, 100, 1100, 150),
        "L1": Box(100, 200, 580, 400),
        "R1": Box(620, 200, 1100, 400),
        "L2": Box(100, 450, 580, 650),
        "R2": Box(620, 450, 1100, 600),
        "table": Box(100, 700, 1100, 900),
        "footer": Box(100, 1600, 400, 1620),
    }
    names = list(boxes)
    shuffled = names[::-1]
    order = reading_order([boxes[n] for n in shuffled], 1240, 1754)
    assert [shuffled[i] for i in order] == [
        "title", "L1", "L2", "R1", "R2", "table", "footer",
    ]  # fmt: skip


def test_xy_cut_joins_a_left_column_that_runs_longer() -> None:
    boxes = [
        Box(100, 100, 580, 180),  # left-column heading
        Box(100, 200, 580, 400),
        Box(620, 200, 1100, 400),
        Box(100, 450, 580, 700),  # left column continues after the right ends
        Box(100, 800, 1100, 900),  # full width again
    ]
    assert reading_order(boxes, 1240, 1754) == [0, 1, 3, 2, 4]


def test_xy_cut_keeps_running_headers_out_of_columns() -> None:
    boxes = [
        Box(100, 40, 300, 60),  # header, left
        Box(900, 40, 1100, 60),  # header, right (page number)
        Box(100, 200, 580, 400),
        Box(620, 200, 1100, 400),
    ]
    anchors = [True, True, False, False]
    assert reading_order(boxes, 1240, 1754, anchors=anchors) == [0, 1, 2, 3]


def test_xy_cut_reads_a_letter_top_to_bottom() -> None:
    boxes = [Box(800, 100, 1100, 130), Box(100, 200, 400, 230)]  # date, greeting
    assert reading_order(boxes, 1240, 1754) == [0, 1]


def test_lines_are_assigned_grouped_and_mapped_back() -> None:
    regions = [
        LayoutRegion("title", Box(100, 50, 900, 110), 0.9),
        LayoutRegion("table", Box(100, 300, 900, 500), 0.95),
        LayoutRegion("text", Box(110, 310, 890, 390), 0.6),  # a cell row, inside
    ]

    def line(text: str, x1: float, y1: float, x2: float, y2: float) -> TextLine:
        return TextLine(Box(x1, y1, x2, y2), text, 0.99)

    lines = [
        line("Big Title", 120, 60, 600, 105),
        line("name value", 120, 320, 400, 350),
        line("cost", 500, 322, 600, 352),
        line("alpha beta", 120, 420, 400, 450),
        line("gamma", 500, 418, 600, 448),
        # Two stacked lines outside every region: one paragraph.
        line("first orphan line", 100, 150, 800, 180),
        line("second orphan", 100, 188, 500, 218),
        # A line far below: a paragraph of its own.
        line("far away", 100, 700, 300, 730),
    ]
    elements = page_elements(
        regions,
        lines,
        width=1000,
        height=800,
        scale_x=2.0,
        scale_y=2.0,
        original_width=2000,
        original_height=1590,
    )
    assert [(e["label"], e["text"]) for e in elements] == [
        ("title", "Big Title"),
        ("para", "first orphan line second orphan"),
        ("tab", "name value cost\nalpha beta gamma"),
        ("para", "far away"),
    ]
    assert elements[0]["bbox"] == [200, 100, 1800, 220]
    assert elements[3]["bbox"] == [200, 1400, 600, 1460]
    assert elements[2]["bbox"][3] == 1000


def test_a_large_paragraph_the_model_called_text_is_a_title() -> None:
    body = [
        TextLine(Box(100, 150 + 40 * i, 900, 180 + 40 * i), "body", 0.99)
        for i in range(5)
    ]
    lines = [TextLine(Box(100, 50, 700, 110), "Heading", 0.99), *body]
    regions = [
        LayoutRegion("text", Box(90, 40, 710, 120), 0.9),
        LayoutRegion("text", Box(90, 140, 910, 360), 0.9),
    ]
    elements = page_elements(regions, lines, width=1000, height=1000)
    assert [e["label"] for e in elements] == ["title", "para"]


def test_ctc_decoding_restores_dropped_spaces() -> None:
    charset = ["blank", "a", "b", "中", "文", " "]
    steps = [1, 0, 2, 0, 1, 0, 3, 0, 4]  # a b | a 中 文, blanks between
    probs = np.zeros((len(steps), len(charset)), dtype=np.float32)
    for t, c in enumerate(steps):
        probs[t, c] = 0.9
    probs[3, 5] = 0.3  # the space lost to the blank after "b"
    probs[7, 5] = 0.3  # CJK text never gets spaces
    text, score = ctc_decode(probs, charset)
    assert text == "ab a中文"
    assert score == pytest.approx(0.9)
    assert ctc_decode(probs, charset, space_threshold=0.5)[0] == "aba中文"
    assert ctc_decode(np.zeros((4, 6), dtype=np.float32), charset) == ("", 0.0)
