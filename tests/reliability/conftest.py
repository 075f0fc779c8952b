"""Factories of the fault tests: simulated backends and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from bench.simulator import RunningSimulator, SimConfig, start_in_thread

StartSimulator = Callable[..., RunningSimulator]

# Fast enough that a test is quick, slow enough that batches overlap a fault.
FAST_BACKEND: dict[str, Any] = {"fixed_ms": 40, "per_image_ms": 2, "containers": 4}


@pytest.fixture
def start_simulator() -> Iterator[StartSimulator]:
    """Factory: a simulated Modal endpoint in a thread; ``port=`` pins its port."""
    started: list[RunningSimulator] = []

    def start(port: int = 0, **config: Any) -> RunningSimulator:
        running = start_in_thread(SimConfig(**{**FAST_BACKEND, **config}), port=port)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def simulator(start_simulator: StartSimulator) -> RunningSimulator:
    return start_simulator()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client with room for many callers waiting at once."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        yield client
