"""An API process is SIGKILLed while its callers wait for their answers.

The callers lose their connections, never having learnt their request ids (an
id travels with the answer). What they sent is in Kafka, so the worker parses
it all the same; a caller that retries with the same ``Idempotency-Key`` on
another API process gets the first request's id and result, and no new work is
queued or parsed.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

import httpx
import pytest
from redis.asyncio import Redis

from api.admission import Admission, Admitted, idempotency_key
from api.validation import fingerprint
from bench.loadgen import Run
from bench.simulator import RunningSimulator
from common.messages import new_request_id
from common.settings import Settings
from common.store import Keys, now_ms
from tests.conftest import StartService
from tests.reliability.kit import Audit, Load, Summary, page, topic_keys, wait_for
from tests.stream.worker_kit import all_committed, worker_env

pytestmark = pytest.mark.integration

CALLS = 24


class Keyed(Load):
    """Calls that carry an Idempotency-Key derived from their sequence number."""

    def headers_for(self, sequence: int) -> dict[str, str]:
        return {**self.headers, "Idempotency-Key": f"{self.tag}-{sequence}"}


async def test_api_sigkilled_while_callers_wait_loses_nothing(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
    record_property: Callable[[str, object], None],
) -> None:
    """Requests of a killed API are parsed once; retried with their
    Idempotency-Key on a second API they answer with the first request's id
    and result, whether the retry comes before or after the parse."""
    simulator.control(paused=True)
    start_worker(**worker_env(simulator))
    doomed, survivor = start_api(), start_api()
    first = Keyed(http, [doomed.url], "apikill")
    calls = asyncio.gather(*(first.run.call(first.send, i) for i in range(CALLS)))

    await wait_for(lambda: in_topic(settings, CALLS), "every call queued")
    doomed.kill()
    await calls
    ids_in_topic = set(await topic_keys(settings, settings.requests_topic))

    # Half retry while the backend still holds the batches, half after.
    retry = Keyed(http, [survivor.url], "apikill")
    retry.run = Run()
    early = asyncio.gather(*(retry.run.call(retry.send, i) for i in range(0, 12)))
    await asyncio.sleep(1.0)
    simulator.control(paused=False)
    await early
    await asyncio.gather(*(retry.run.call(retry.send, i) for i in range(12, CALLS)))

    audit = await Audit.of(settings, redis_client, survivor.url, list(ids_in_topic))
    stored = await stored_ids(redis_client, Keys(settings.redis_key_prefix))
    stats = simulator.stats(include_processed=False)
    summary = Summary(
        scenario="api_sigkill_idempotent_retry",
        accepted=len(ids_in_topic),
        ok=retry.ok,
        error=len(retry.samples) - retry.ok,
        lost=audit.lost + len(ids_in_topic - set(retry.request_ids.values())),
        sent_twice=len(stats["duplicates"]),
        extra={
            "callers_cut_off": first.count(lambda s: s.status == 0),
            "in_topic_after_retries": audit.in_topic,
            "parsed": stats["images"],
        },
    )
    print("\n" + summary.line())
    for name, value in vars(summary).items():
        record_property(name, value)

    assert first.count(lambda s: s.status == 0) == CALLS
    assert summary.lost == 0
    assert summary.ok == CALLS
    assert set(retry.request_ids.values()) == ids_in_topic
    assert audit.in_topic == CALLS, "a retry queued new work"
    assert stats["images"] == CALLS and summary.sent_twice == 0
    assert ids_in_topic <= stored
    await wait_for(lambda: all_committed(settings), "every offset committed")


async def in_topic(settings: Settings, count: int) -> bool:
    return len(await topic_keys(settings, settings.requests_topic)) >= count


async def stored_ids(redis: Redis, keys: Keys) -> set[str]:
    """Request ids with a stored result, found by scanning Redis."""
    prefix = keys.result("")
    found: set[str] = set()
    async for key in redis.scan_iter(match=prefix + "*", count=500):
        found.add(key.decode().removeprefix(prefix))
    return found


async def test_repeat_adopts_a_request_its_dead_api_never_produced(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
) -> None:
    """An API that died between admitting a request and producing it left the
    request in Redis only; a repeat with its Idempotency-Key and body produces
    it under the first id and is answered, instead of waiting for its deadline."""
    start_worker(**worker_env(simulator))
    api = start_api()
    keys = Keys(settings.redis_key_prefix)
    body = page(1, "orphan")
    image = base64.b64decode(body["image_data"])
    # What the dead API left: the admission, the state and the idempotency record.
    request_id = new_request_id()
    decision = await Admission(redis_client, keys, settings).admit(
        request_id,
        body["filename"],
        now_ms() + 120_000,
        idempotency=(
            idempotency_key(keys, "public", "orphan-1"),
            fingerprint(image, body["filename"]),
        ),
    )
    assert isinstance(decision, Admitted)

    started = time.monotonic()
    response = await http.post(
        f"{api.url}/parse",
        json=body,
        headers={"Idempotency-Key": "orphan-1", "X-Request-Timeout": "30"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["request_id"] == request_id
    assert time.monotonic() - started < 15
    assert simulator.stats(include_processed=False)["images"] == 1
    assert '"unproduced_request_adopted"' in api.log_text()
