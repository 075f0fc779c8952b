"""Consumer lag is the work accepted but not answered, as Kafka's own tool reads it.

The figures come from ``kafka-consumer-groups --describe`` run from the broker's
jars, not from our code: the worker commits an offset only once its request is
answered, so while the backend holds every batch the committed offsets stay
below the held requests and the tool's lag counts exactly those.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from common.messages import ParseRequest, encode_request
from infra.localstack.kafka import consumer_groups_command, parse_lag
from infra.localstack.procs import REPO_ROOT
from tests.observability.conftest import PARTITIONS, MakeStack, Stack
from tests.stream.worker_kit import client, make_request, replies, wait_until

pytestmark = pytest.mark.integration

HELD = 12
TOOL_TIMEOUT_S = 120.0
LAG_WAIT_S = 120.0


async def group_lag(stack: Stack) -> tuple[dict[int, int], str]:
    """Lag per partition of the stack's group, as Kafka's tool prints it."""
    command = consumer_groups_command(
        stack.settings.kafka_bootstrap_servers,
        "--describe",
        "--group",
        stack.settings.consumer_group,
    )
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )
    return parse_lag(done.stdout), done.stdout + done.stderr


async def wait_lag(stack: Stack, expected: dict[int, int], what: str) -> None:
    last = ""

    async def reached() -> bool:
        nonlocal last
        lag, last = await group_lag(stack)
        return lag == expected

    try:
        await wait_until(reached, LAG_WAIT_S, what)
    except AssertionError:
        raise AssertionError(
            f"timed out waiting for {what}; the tool said:\n{last}"
        ) from None


async def produce(stack: Stack, requests: list[ParseRequest]) -> None:
    """Straight to the requests topic, partition i % PARTITIONS for request i."""
    async with client(stack.settings, stack.redis) as kafka:
        for i, request in enumerate(requests):
            key, value, headers = encode_request(request)
            await kafka.producer.send_and_wait(
                stack.settings.requests_topic,
                value=value,
                key=key,
                headers=headers,
                partition=i % PARTITIONS,
            )


async def worker_health(stack: Stack) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        body: dict[str, Any] = (await http.get(stack.worker.url + "/health")).json()
    return body


async def worker_lag(stack: Stack) -> dict[str, float]:
    return (await stack.scrape_worker()).by_label(
        "dolphin_worker_consumer_lag", "partition"
    )


@pytest.fixture(scope="module")
async def stack(make_stack: MakeStack) -> Stack:
    """A worker whose group has a committed offset on every partition.

    One request per partition is answered first: for a partition the group never
    committed, the tool prints "-" as its lag.
    """
    stack = await make_stack(api=False)
    primers = [make_request(f"primer-{p}", stack.settings) for p in range(PARTITIONS)]
    async with replies(stack.settings) as inbox:
        await produce(stack, primers)
        await inbox.wait_for(r.request_id for r in primers)
    await wait_lag(stack, dict.fromkeys(range(PARTITIONS), 0), "the primers' commits")
    return stack


async def test_lag_counts_held_requests_and_falls_to_zero_once_answered(
    stack: Stack,
) -> None:
    """With the backend paused, requests the worker holds are lag to Kafka's tool
    (and to the worker's gauge), partition by partition; answered, it is 0."""
    settings = stack.settings
    zero = dict.fromkeys(range(PARTITIONS), 0)
    billed = stack.simulator.stats(include_processed=False)["batches"]

    stack.simulator.control(paused=True)
    held = [make_request(f"held-{i}", settings) for i in range(HELD)]
    async with replies(settings) as inbox:
        await produce(stack, held)

        async def all_held() -> bool:
            consumer = (await worker_health(stack))["consumer"]
            return bool(consumer["unanswered"] == HELD)

        await wait_until(all_held, 60, "the worker to hold every request")
        per_partition = dict.fromkeys(range(PARTITIONS), HELD // PARTITIONS)
        await wait_lag(stack, per_partition, "the tool to report the held requests")
        # The worker kept committing meanwhile; the offsets stay where they were.
        assert (await group_lag(stack))[0] == per_partition

        expected = {str(p): float(n) for p, n in per_partition.items()}

        async def gauge_agrees() -> bool:
            return await worker_lag(stack) == expected

        await wait_until(gauge_agrees, 60, "the worker's lag gauge")
        assert stack.simulator.stats(include_processed=False)["batches"] == billed

        stack.simulator.control(paused=False)
        await inbox.wait_for(r.request_id for r in held)
    await wait_lag(stack, zero, "the lag to fall to 0")

    async def gauge_zero() -> bool:
        return set((await worker_lag(stack)).values()) == {0.0}

    await wait_until(gauge_zero, 60, "the worker's lag gauge to read 0")


async def test_task_lag_describes_the_configured_group(stack: Stack) -> None:
    """``python -m infra.localstack lag`` (``task lag``) runs Kafka's tool on the
    group named by the settings and lists every partition of it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOLPHIN_")}
    env.pop("CONFIG_PATH", None)
    env["KAFKA_BOOTSTRAP_SERVERS"] = stack.settings.kafka_bootstrap_servers
    env["DOLPHIN_CONSUMER_GROUP"] = stack.settings.consumer_group

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "infra.localstack", "lag"],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env=env,
        cwd=REPO_ROOT,
    )

    assert done.returncode == 0, done.stderr
    assert stack.settings.requests_topic in done.stdout
    assert set(parse_lag(done.stdout)) == set(range(PARTITIONS))
