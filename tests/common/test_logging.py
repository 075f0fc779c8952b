"""Log lines are JSON and carry bound ids through async code."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson

from common.logging import JsonFormatter, bind, bound


def _capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger(f"test.logging.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


async def test_request_id_reaches_lines_logged_in_child_tasks() -> None:
    """A request id bound once appears on lines from tasks spawned afterwards."""
    logger, stream = _capture()

    async def deep() -> None:
        await asyncio.sleep(0)
        logger.info("batch_sent", extra={"size": 3})

    with bound(request_id="r-42"):
        await asyncio.create_task(deep())
    logger.info("after")

    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "batch_sent"
    assert first["request_id"] == "r-42"
    assert first["size"] == 3
    assert first["component"] == "test"
    assert "request_id" not in second


async def test_concurrent_tasks_keep_their_own_ids() -> None:
    """Two requests handled at once never see each other's id."""
    logger, stream = _capture()

    async def handle(request_id: str) -> None:
        bind(request_id=request_id)
        await asyncio.sleep(0.01)
        logger.info("answered")

    await asyncio.gather(handle("a"), handle("b"))

    ids = sorted(
        orjson.loads(line)["request_id"] for line in stream.getvalue().splitlines()
    )
    assert ids == ["a", "b"]
