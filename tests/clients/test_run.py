"""The bulk run: results written, failures counted, an unreachable service stops it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from common.cli import main
from common.cli.inputs import Input, expand_inputs, plan
from common.cli.run import JobFailed, RunAborted, run_jobs, summary_table
from infra.localstack.procs import free_port


def _console() -> Console:
    return Console(file=io.StringIO(), width=120)


def _pages(root: Path, count: int) -> list[Input]:
    for index in range(count):
        path = root / f"p{index:02d}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([index]))
    return expand_inputs([root])


def _results(root: Path) -> list[str]:
    return sorted(path.name for path in root.glob("*.json"))


async def _echo(item: Input) -> dict[str, Any]:
    if item.path.read_bytes()[-1] % 3 == 0:
        raise JobFailed("parse_failed", "the parser could not read it")
    return {"filename": item.path.name, "success": True}


async def test_successes_are_written_and_failures_counted(tmp_path: Path) -> None:
    """Each success gets its result file; each failure counts under its code."""
    todo, _ = plan(_pages(tmp_path, 9), None, force=False)

    summary = await run_jobs(todo, _echo, concurrency=4, console=_console())

    assert summary.parsed == 6
    assert dict(summary.failures) == {"parse_failed": 3}
    assert summary.exit_code == 1
    assert _results(tmp_path) == [f"p{i:02d}.png.json" for i in range(9) if i % 3]


async def test_an_aborted_run_stops_sending(tmp_path: Path) -> None:
    """Once the service is unreachable no further input is tried."""
    todo, _ = plan(_pages(tmp_path, 20), None, force=False)
    tried: list[Path] = []

    async def unreachable(item: Input) -> dict[str, Any]:
        tried.append(item.path)
        raise RunAborted("cannot reach the API")

    summary = await run_jobs(todo, unreachable, concurrency=2, console=_console())

    assert summary.aborted == "cannot reach the API"
    assert len(tried) <= 2
    assert summary.not_run == 20 and summary.exit_code == 1


async def test_the_summary_lists_each_error_code(tmp_path: Path) -> None:
    """The table shows successes, skips and one row per failure code."""
    console = _console()
    todo, _ = plan(_pages(tmp_path, 3), None, force=False)
    summary = await run_jobs(todo, _echo, concurrency=1, console=console, skipped=5)

    console.print(summary_table(summary))
    text = console.file.getvalue()  # type: ignore[attr-defined]

    assert "│ parsed                  │      2 │" in text
    assert "│ skipped (result exists) │      5 │" in text
    assert "│ failed: parse_failed    │      1 │" in text


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """``dolphin --help`` lists parse, produce and status."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])

    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert all(name in out for name in ("parse", "produce", "status"))


@pytest.mark.parametrize("command", ["parse", "produce"])
def test_subcommand_help_explains_results_and_exit_status(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each run command documents where results go and what the exit code means."""
    with pytest.raises(SystemExit):
        main([command, "--help"])

    out = capsys.readouterr().out
    assert "page.png.json" in out and "Exit status" in out and "--force" in out


def test_parse_without_an_api_says_so_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed port ends the run with the hint to start the stack."""
    _pages(tmp_path, 2)
    url = f"http://127.0.0.1:{free_port()}"

    status = main(["parse", str(tmp_path), "--url", url, "--concurrency", "1"])

    out = capsys.readouterr().out
    assert status == 1
    assert f"cannot reach the API at {url}: is the stack up? (./dev up)" in out
    assert _results(tmp_path) == []


def test_status_without_an_api_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """``dolphin status`` against nothing is unhealthy."""
    url = f"http://127.0.0.1:{free_port()}"

    assert main(["status", "--url", url]) == 1
    assert "cannot reach the API" in capsys.readouterr().out


def test_a_missing_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo'd path exits 2 before anything is sent."""
    assert main(["parse", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().out
