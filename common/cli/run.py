"""Run one job per input with bounded concurrency, a progress bar and a summary.

A job returns the result body, which is written to the input's result file, or
raises :class:`JobFailed` with the error code it is counted under. A job that
raises :class:`RunAborted` stops the whole run: nothing else can succeed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .inputs import Input, write_result

logger = logging.getLogger(__name__)

Job = Callable[[Input], Awaitable[dict[str, Any]]]


class JobFailed(Exception):
    """This input failed; ``code`` is the error code it is counted under."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RunAborted(Exception):
    """No further input can succeed, e.g. the service cannot be reached."""


@dataclass(slots=True)
class Summary:
    parsed: int = 0
    skipped: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    not_run: int = 0
    aborted: str | None = None
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failures or self.aborted else 0


class RateColumn(ProgressColumn):
    """Completed inputs per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "-/s", style="progress.data.speed")


async def run_jobs(
    todo: list[tuple[Input, Path]],
    job: Job,
    *,
    concurrency: int,
    console: Console,
    skipped: int = 0,
) -> Summary:
    """Run ``job`` over ``todo``, ``concurrency`` at a time, writing each result."""
    summary = Summary(skipped=skipped)
    if not todo:
        return summary
    queue = list(reversed(todo))
    started = time.monotonic()
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )

    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("parsing", total=len(todo))

        async def worker() -> None:
            while queue and summary.aborted is None:
                item, target = queue.pop()
                try:
                    await _attempt(job, item, target)
                    summary.parsed += 1
                except JobFailed as exc:
                    summary.failures[exc.code] += 1
                    failed = f"[red]failed[/] {item.path}  [bold]{exc.code}[/]"
                    progress.console.print(f"{failed}: {exc.message}", highlight=False)
                except RunAborted as exc:
                    summary.aborted = summary.aborted or str(exc)
                    queue.append((item, target))
                    return
                progress.advance(task)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))

    summary.not_run = len(queue)
    summary.elapsed_s = time.monotonic() - started
    return summary


async def _attempt(job: Job, item: Input, target: Path) -> None:
    try:
        body = await job(item)
    except (JobFailed, RunAborted):
        raise
    except Exception as exc:
        # One input hitting a bug must not lose the whole run's summary.
        logger.debug("job_crashed", exc_info=True)
        raise JobFailed("unexpected_error", repr(exc)) from exc
    await _write(target, body)


async def _write(target: Path, body: dict[str, Any]) -> None:
    try:
        await asyncio.to_thread(write_result, target, body)
    except OSError as exc:
        raise JobFailed("write_failed", f"cannot write {target}: {exc}") from exc


def summary_table(summary: Summary) -> Table:
    table = Table(title="summary", title_justify="left")
    table.add_column("outcome")
    table.add_column("inputs", justify="right")
    table.add_row("[green]parsed[/]", str(summary.parsed))
    table.add_row("skipped (result exists)", str(summary.skipped))
    for code, count in sorted(summary.failures.items()):
        table.add_row(f"[red]failed: {code}[/]", str(count))
    if summary.not_run:
        table.add_row("[yellow]not run (aborted)[/]", str(summary.not_run))
    table.caption = f"{summary.elapsed_s:.1f} s"
    return table


def report(summary: Summary, console: Console) -> None:
    console.print(summary_table(summary))
    if summary.aborted:
        console.print(f"[bold red]{summary.aborted}[/]", highlight=False)
    elif summary.failures:
        console.print(
            "Failed inputs have no result file; run the same command again to "
            "retry only them.",
            highlight=False,
        )
