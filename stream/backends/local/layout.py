"""From layout regions and OCR lines to Dolphin's page elements.

Each OCR line goes to the region holding its centre (the smallest such region
when they nest). Lines in no region are grouped into paragraphs of their own
rather than dropped: the layout model misses blocks far more often than OCR
misses lines. The blocks are then numbered in reading order.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.backends.local.geometry import Box, enclosing
from stream.backends.local.models import LayoutRegion, TextLine
from stream.backends.local.reading_order import reading_order

DOLPHIN_LABELS = {
    "text": "para",
    "title": "title",
    "figure": "fig",
    "figure_caption": "cap",
    "table": "tab",
    "table_caption": "cap",
    "header": "header",
    "footer": "foot",
    "reference": "para",
    "equation": "equ",
}
ORPHAN_LABEL = "para"

# Regions that own whatever text regions the detector also found inside them.
_CONTAINERS = frozenset({"table", "figure"})
# Labels worth returning without any recognised text.
_KEEP_EMPTY = frozenset({"fig", "tab", "equ"})
# Header and footer bands never join a column run in the reading order.
_ANCHORS = frozenset({"header", "foot"})

# The same block detected under two classes.
_DUPLICATE_IOU = 0.6
# A text region this much inside a table or figure is part of it.
_CONTAINED = 0.85
# A line whose centre lies in no region still belongs to one it mostly covers.
_LINE_OVERLAP = 0.5
# Lines this many times the page's median height, in a block of few rows, are
# a heading.
_HEADING_SCALE = 1.5
_HEADING_MAX_ROWS = 3


@dataclass(slots=True)
class Block:
    label: str
    box: Box
    lines: list[TextLine] = field(default_factory=list)

    def text(self) -> str:
        rows = [" ".join(line.text for line in row) for row in rows_of(self.lines)]
        return ("\n" if self.label == "tab" else " ").join(rows)


def page_elements(
    regions: Sequence[LayoutRegion],
    lines: Sequence[TextLine],
    *,
    width: int,
    height: int,
    scale_x: float = 1.0,
    scale_y: float = 1.0,
    original_width: int | None = None,
    original_height: int | None = None,
) -> list[dict[str, Any]]:
    """Dolphin elements in reading order; boxes in original-image pixels.

    ``width``/``height`` is the size the models saw; ``scale_*`` multiply their
    coordinates back to the original image of ``original_width`` x
    ``original_height``.
    """
    blocks = build_blocks(regions, lines)
    order = reading_order(
        [block.box for block in blocks],
        width,
        height,
        anchors=[block.label in _ANCHORS for block in blocks],
    )
    max_x = original_width if original_width is not None else width
    max_y = original_height if original_height is not None else height
    elements: list[dict[str, Any]] = []
    for rank, index in enumerate(order):
        block = blocks[index]
        box = block.box.scaled(scale_x, scale_y)
        elements.append(
            {
                "label": block.label,
                "bbox": [
                    _clamp(math.floor(box.x1), max_x),
                    _clamp(math.floor(box.y1), max_y),
                    _clamp(math.ceil(box.x2), max_x),
                    _clamp(math.ceil(box.y2), max_y),
                ],
                "text": block.text(),
                "reading_order": rank,
            }
        )
    return elements


def build_blocks(
    regions: Sequence[LayoutRegion], lines: Sequence[TextLine]
) -> list[Block]:
    kept = distinct_regions(regions)
    owned: list[list[TextLine]] = [[] for _ in kept]
    orphans: list[TextLine] = []
    for line in lines:
        index = _owner(line, kept)
        if index is None:
            orphans.append(line)
        else:
            owned[index].append(line)

    blocks: list[Block] = []
    for region, own in zip(kept, owned, strict=True):
        label = DOLPHIN_LABELS.get(region.kind, ORPHAN_LABEL)
        if not own and label not in _KEEP_EMPTY:
            continue
        box = enclosing([region.box, *(line.box for line in own)])
        blocks.append(Block(label, box, own))
    for group in group_orphans(orphans):
        blocks.append(Block(ORPHAN_LABEL, enclosing(line.box for line in group), group))
    promote_headings(blocks, lines)
    return blocks


def promote_headings(blocks: Sequence[Block], lines: Sequence[TextLine]) -> None:
    """Relabel as title short paragraphs set in a much larger type than the page.

    The layout model often calls a heading "text"; type size is the cue it
    missed. Only paragraphs of up to ``_HEADING_MAX_ROWS`` rows qualify.
    """
    if len(lines) < 3:
        return
    body = statistics.median(line.box.height for line in lines)
    for block in blocks:
        if block.label != "para" or not block.lines:
            continue
        if len(rows_of(block.lines)) > _HEADING_MAX_ROWS:
            continue
        size = statistics.median(line.box.height for line in block.lines)
        if size >= _HEADING_SCALE * body:
            block.label = "title"


def distinct_regions(regions: Sequence[LayoutRegion]) -> list[LayoutRegion]:
    """Drop empty boxes, cross-class duplicates and text inside tables/figures.

    The detector suppresses overlaps within a class only, so one paragraph can
    come back as both text and title, and a table's cells as text regions.
    """
    kept: list[LayoutRegion] = []
    for region in sorted(regions, key=lambda r: r.score, reverse=True):
        if region.box.area <= 1.0:
            continue
        if any(region.box.iou(other.box) > _DUPLICATE_IOU for other in kept):
            continue
        kept.append(region)
    containers = [r for r in kept if r.kind in _CONTAINERS]
    return [
        region
        for region in kept
        if region.kind in _CONTAINERS
        or not any(
            container.box.intersection(region.box) >= _CONTAINED * region.box.area
            for container in containers
        )
    ]


def _owner(line: TextLine, regions: Sequence[LayoutRegion]) -> int | None:
    cx, cy = line.box.center
    holding = [i for i, region in enumerate(regions) if region.box.contains(cx, cy)]
    if holding:
        return min(holding, key=lambda i: regions[i].box.area)
    if line.box.area <= 0:
        return None
    best, best_share = None, _LINE_OVERLAP
    for i, region in enumerate(regions):
        share = region.box.intersection(line.box) / line.box.area
        if share >= best_share:
            best, best_share = i, share
    return best


def rows_of(lines: Sequence[TextLine]) -> list[list[TextLine]]:
    """Lines grouped into rows top to bottom, each row left to right.

    Lines share a row when they overlap vertically by half the smaller height,
    which keeps table cells of one row together despite ragged baselines.
    """
    rows: list[tuple[Box, list[TextLine]]] = []
    for line in sorted(lines, key=lambda ln: (ln.box.center[1], ln.box.x1)):
        if rows:
            span, row = rows[-1]
            overlap = min(span.y2, line.box.y2) - max(span.y1, line.box.y1)
            smaller = min(span.height, line.box.height)
            if smaller > 0 and overlap >= 0.5 * smaller:
                row.append(line)
                rows[-1] = (span.union(line.box), row)
                continue
        rows.append((line.box, [line]))
    return [sorted(row, key=lambda ln: ln.box.x1) for _, row in rows]


def group_orphans(lines: Sequence[TextLine]) -> list[list[TextLine]]:
    """Stack lines that read as one paragraph: similar height, a small gap
    below the previous line, overlapping horizontally."""
    groups: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda ln: (ln.box.y1, ln.box.x1)):
        for group in reversed(groups):
            if _continues(group, line):
                group.append(line)
                break
        else:
            groups.append([line])
    return groups


def _continues(group: list[TextLine], line: TextLine) -> bool:
    last = group[-1].box
    box = line.box
    height = statistics.median([last.height, box.height])
    if height <= 0 or not 0.6 <= box.height / max(last.height, 1e-6) <= 1.6:
        return False
    gap = box.y1 - last.y2
    if not -0.3 * height <= gap <= 0.9 * height:
        return False
    overlap = min(last.x2, box.x2) - max(last.x1, box.x1)
    return overlap >= 0.3 * min(last.width, box.width)


def _clamp(value: int, upper: int) -> int:
    return max(0, min(value, upper))
