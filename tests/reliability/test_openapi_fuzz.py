"""Schemathesis fuzzes every operation of the API's own OpenAPI description.

A real API process, with a worker and a simulated backend behind it so that a
request that happens to be valid is answered quickly, gets generated valid and
invalid requests for each operation; the only check is that none is answered
with a 5xx (``not_a_server_error``). The example count and the seed are fixed,
so a run takes well under a minute and is repeatable.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bench.simulator import RunningSimulator
from tests.conftest import StartService
from tests.stream.worker_kit import worker_env

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 200
SEED = 20260115


async def test_generated_requests_never_get_a_server_error(
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    tmp_path: Path,
) -> None:
    """No generated request, valid or not, makes any operation answer 5xx."""
    pytest.importorskip("schemathesis", reason="schemathesis is not installed")
    start_worker(**worker_env(simulator))
    api = start_api()
    report = tmp_path / "junit.xml"
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{api.url}/openapi.json",
        "--checks=not_a_server_error",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        "--request-timeout=60",
        "--workers=2",
        "--report=junit",
        f"--report-junit-path={report}",
    ]

    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"NO_COLOR": "1", "PATH": str(Path(sys.executable).parent)},
        # Hypothesis and schemathesis keep their state in the working directory.
        cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
    text = output.decode(errors="replace")
    counts = [line.strip() for line in text.splitlines() if " generated, " in line]
    print("\nschemathesis:", *counts)

    assert proc.returncode == 0, text[-6000:]
