"""Reading order of the blocks of a page: a recursive XY-cut aware of columns.

The page is cut into horizontal bands wherever no block spans a gap in y, and a
band is cut into columns wherever no block spans a gap in x. Plain XY-cut reads
a two-column section row by row when paragraph breaks of both columns line up,
because every such break is a horizontal gap across the page. So consecutive
bands that together still have a clear gutter are joined into one run first,
and the run is read column by column: full-width blocks, then the left column
top to bottom, then the right one.

    title             title
    intro             intro
    L1   R1     ->    L1 L2 R1 R2
    L2   R2           table
    table
"""

from __future__ import annotations

from collections.abc import Sequence

from stream.backends.local.geometry import Box

# Detector boxes are loose by a few pixels; overlaps smaller than this share of
# the page do not join blocks into one band or column.
OVERLAP_TOLERANCE = 0.004


def reading_order(
    boxes: Sequence[Box],
    page_width: float,
    page_height: float,
    *,
    anchors: Sequence[bool] | None = None,
) -> list[int]:
    """Indices of ``boxes`` in reading order.

    ``anchors`` marks blocks (page headers and footers) whose band never joins
    a column run, so a running header is not read as the top of a column.
    """
    order = _Order(
        boxes,
        tol_x=OVERLAP_TOLERANCE * page_width,
        tol_y=OVERLAP_TOLERANCE * page_height,
        anchors=anchors or [False] * len(boxes),
    )
    return order.sort(list(range(len(boxes))))


class _Order:
    def __init__(
        self,
        boxes: Sequence[Box],
        *,
        tol_x: float,
        tol_y: float,
        anchors: Sequence[bool],
    ) -> None:
        self.boxes = boxes
        self.tol_x = tol_x
        self.tol_y = tol_y
        self.anchors = anchors

    def sort(self, ids: list[int]) -> list[int]:
        if len(ids) <= 1:
            return ids
        bands = self.cut(ids, vertical=False)
        if len(bands) > 1:
            runs = self.join_column_runs(bands)
            if len(runs) > 1:
                return [i for run in runs for i in self.sort(run)]
            # Everything is one multi-column run: read it by columns below.
        columns = self.cut(ids, vertical=True)
        if len(columns) > 1:
            return [i for column in columns for i in self.sort(column)]
        # Blocks overlap both ways, no cut exists: top to bottom, then left.
        return sorted(ids, key=lambda i: (self.boxes[i].y1, self.boxes[i].x1))

    def cut(self, ids: list[int], *, vertical: bool) -> list[list[int]]:
        """Groups of ids separated by gaps across x (vertical) or y, in order."""
        tolerance = self.tol_x if vertical else self.tol_y
        spans: list[tuple[float, float, int]] = []
        for i in ids:
            box = self.boxes[i]
            start, end = (box.x1, box.x2) if vertical else (box.y1, box.y2)
            shrink = min(tolerance, (end - start) / 4)
            spans.append((start + shrink, end - shrink, i))
        spans.sort()
        groups: list[list[int]] = []
        reach = float("-inf")
        for start, end, i in spans:
            if start >= reach:
                groups.append([])
            groups[-1].append(i)
            reach = max(reach, end)
        return groups

    def columnar(self, ids: list[int]) -> bool:
        return len(ids) > 1 and len(self.cut(ids, vertical=True)) > 1

    def join_column_runs(self, bands: list[list[int]]) -> list[list[int]]:
        runs = [bands[0]]
        for band in bands[1:]:
            last = runs[-1]
            joined = last + band
            if (
                not any(self.anchors[i] for i in joined)
                and (self.columnar(last) or self.columnar(band))
                and self.columnar(joined)
            ):
                runs[-1] = joined
            else:
                runs.append(band)
        return runs
