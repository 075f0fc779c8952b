"""The client and the ``dolphin`` command against the real stack.

A real worker subprocess parses with the Modal simulator as its backend; the
HTTP tests add a real API subprocess. Kafka and Redis are the session's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.simulator import SimConfig, run_in_thread
from common.cli import main
from common.client import DolphinClient, Reply
from common.settings import Settings
from tests.conftest import ServiceProcess, StartService
from tests.pages import render_text_image, to_png

pytestmark = pytest.mark.integration

# Fast enough that 200 pages take well under a second of backend time.
FAST = SimConfig(fixed_ms=5, per_image_ms=1, containers=4)


@pytest.fixture
def simulator() -> Iterator[str]:
    base_url, stop = run_in_thread(FAST)
    yield base_url
    stop()


@pytest.fixture
def worker(start_worker: StartService, simulator: str) -> ServiceProcess:
    return start_worker(MODAL_API_ENDPOINT=simulator)


@pytest.fixture
def api(start_api: StartService, worker: ServiceProcess) -> ServiceProcess:
    return start_api()


def _page(index: int) -> bytes:
    image = render_text_image([f"page {index}"], width=240, height=60, size=20)
    return to_png(image)


def _pages(root: Path, count: int) -> list[Path]:
    """Pages spread over nested folders, e.g. root/part1/ch2/page-007.png."""
    paths = []
    for index in range(count):
        folder = root / f"part{index % 2}" / (f"ch{index % 3}" if index % 4 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"page-{index:03d}.png"
        path.write_bytes(_page(index))
        paths.append(path)
    return paths


def _row(output: str, label: str) -> int | None:
    """The count in the summary row ``label``, or None if the row is absent."""
    match = re.search(rf"│ {re.escape(label)}\s*│\s*(\d+) │", output)
    return int(match.group(1)) if match else None


async def test_the_client_round_trips_200_pages_over_kafka(
    settings: Settings, worker: ServiceProcess
) -> None:
    """200 pages submitted straight to Kafka each get the reply to their request."""
    pages = {f"page-{index:03d}.png": _page(index) for index in range(200)}

    async with DolphinClient.from_settings(settings) as client:
        sent = {await client.submit(image, name): name for name, image in pages.items()}
        replies: dict[str, Reply] = {}
        async with asyncio.timeout(60):
            async for reply in client.replies():
                assert reply.request_id not in replies, "a reply came twice"
                replies[reply.request_id] = reply
                if not client.pending:
                    break

    assert replies.keys() == sent.keys()
    for request_id, reply in replies.items():
        assert reply.ok, reply.body
        assert reply.body["request_id"] == request_id
        assert reply.body["filename"] == sent[request_id]


async def test_concurrent_parse_calls_share_one_client(
    settings: Settings, worker: ServiceProcess
) -> None:
    """parse() called 40 times at once returns each page's own result."""
    names = [f"p{index}.png" for index in range(40)]

    async with DolphinClient.from_settings(settings) as client:
        bodies = await asyncio.gather(
            *(
                client.parse(_page(i), name, timeout_s=60)
                for i, name in enumerate(names)
            )
        )

    assert [body["filename"] for body in bodies] == names


def test_dolphin_parse_writes_every_result_then_skips_them(
    api: ServiceProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder is parsed into --out mirrored; a rerun skips all; junk counts."""
    pages = _pages(tmp_path / "scans", 24)
    out = tmp_path / "results"
    argv = ["parse", str(tmp_path / "scans"), "--url", api.url, "--out", str(out)]

    first = main(argv)
    first_output = capsys.readouterr().out

    assert first == 0, first_output
    assert _row(first_output, "parsed") == 24
    for page in pages:
        relative = page.relative_to(tmp_path / "scans")
        result = orjson.loads((out / f"{relative}.json").read_bytes())
        assert result["success"] is True
        assert result["filename"] == page.name

    second = main(argv)
    second_output = capsys.readouterr().out

    assert second == 0
    assert _row(second_output, "parsed") == 0
    assert _row(second_output, "skipped (result exists)") == 24

    (tmp_path / "scans" / "part1" / "notes.png").write_text("not an image at all")
    third = main(argv)
    third_output = capsys.readouterr().out

    assert third == 1
    assert _row(third_output, "skipped (result exists)") == 24
    assert _row(third_output, "failed: unsupported_image") == 1
    assert "notes.png" in third_output
    assert not (out / "part1" / "notes.png.json").exists()


def test_dolphin_parse_writes_next_to_inputs_by_default(
    api: ServiceProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --out, page.png gets page.png.json beside it."""
    pages = _pages(tmp_path, 3)

    assert main(["parse", *map(str, pages), "--url", api.url]) == 0

    assert all(page.with_name(page.name + ".json").is_file() for page in pages)


def test_dolphin_produce_parses_a_folder_over_kafka(
    settings: Settings,
    worker: ServiceProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The produce command writes the same results without any API."""
    pages = _pages(tmp_path / "scans", 10)
    (tmp_path / "scans" / "bad.png").write_text("not an image")
    argv = [
        "produce",
        str(tmp_path / "scans"),
        "--bootstrap",
        settings.kafka_bootstrap_servers,
        "--requests-topic",
        settings.requests_topic,
        "--reply-topic",
        settings.replies_topic,
        "--timeout",
        "60",
    ]

    status = main(argv)
    output = capsys.readouterr().out

    assert status == 1, output
    assert _row(output, "parsed") == 10
    assert _row(output, "failed: unsupported_image") == 1
    results: list[dict[str, Any]] = [
        orjson.loads(page.with_name(page.name + ".json").read_bytes()) for page in pages
    ]
    assert [result["filename"] for result in results] == [p.name for p in pages]


def test_dolphin_status_shows_health_and_queue(
    api: ServiceProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """A running stack is reported healthy with its queue depth."""
    status = main(["status", "--url", api.url])
    output = capsys.readouterr().out

    assert status == 0, output
    assert "health" in output and "depth" in output and "healthy" in output
