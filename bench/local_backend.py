"""Pages per second and per-page latency of the embedded CPU backend.

Run from the repository root:

    .venv/bin/python -m bench.local_backend [--threads N] [--batch 8] [--runs 3]

The pages are the rendered test pages of ``tests/pages.py`` (A4 at 150 dpi: a
title, a paragraph, two columns, a ruled table, a footer; about 140 words), so
the figures are for text-dense pages, the expensive case: OCR time grows with
the number of text lines. Model loading is done and reported before timing.
Wall-clock figures move with whatever else runs on the machine; the CPU time
per page is the steadier number for capacity planning.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from stream.backends.base import BatchItem, ItemResult
from stream.backends.local import LocalBackend
from tests.pages import render_page


async def measure(threads: int, max_side_px: int, batch: int, runs: int) -> None:
    backend = LocalBackend(threads=threads, max_side_px=max_side_px)
    pages = [render_page(seed)[0] for seed in range(max(batch, 1))]
    items = [BatchItem(png, f"page-{i}.png") for i, png in enumerate(pages)]
    print(
        f"machine: {backend.cpus} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"backend: {backend.workers} parallel inferences x "
        f"{backend.intra_op_threads} onnxruntime threads, max side {max_side_px} px"
    )
    started = time.perf_counter()
    await backend.warm_up()
    print(f"model load: {time.perf_counter() - started:.2f} s")
    # One untimed page: onnxruntime tunes its kernels on the first runs.
    await backend.parse_batch(items[:1])

    single: list[float] = []
    for run in range(runs):
        started = time.perf_counter()
        outcome = await backend.parse_batch([items[run % len(items)]])
        single.append(time.perf_counter() - started)
        assert isinstance(outcome.items[0], ItemResult), outcome.items[0]
    one = statistics.median(single)
    print(
        f"1 page:   latency {one:.2f} s (median of {runs}, "
        f"min {min(single):.2f}, max {max(single):.2f}), {1 / one:.2f} pages/s"
    )

    walls: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), time.process_time()
        outcome = await backend.parse_batch(items[:batch])
        walls.append(time.perf_counter() - started)
        cpu.append((time.process_time() - cpu_started) / batch)
        assert all(isinstance(item, ItemResult) for item in outcome.items)
    wall = statistics.median(walls)
    cpu_per_page = statistics.median(cpu)
    print(
        f"{batch} pages: batch latency {wall:.2f} s (median of {runs}, "
        f"min {min(walls):.2f}, max {max(walls):.2f}), {batch / wall:.2f} pages/s, "
        f"{wall / batch:.2f} s of wall time per page"
    )
    # CPU seconds hardly depend on what else runs on the machine, wall time
    # does: this is the ceiling an idle machine would reach.
    print(
        f"CPU time: {cpu_per_page:.2f} s per page, so at most "
        f"{backend.cpus / cpu_per_page:.2f} pages/s on {backend.cpus} idle CPUs"
    )
    await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="0 sizes to machine")
    parser.add_argument("--max-side-px", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(measure(args.threads, args.max_side_px, args.batch, args.runs))


if __name__ == "__main__":
    main()
