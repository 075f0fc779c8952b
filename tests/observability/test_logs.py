"""The logs of one request: JSON lines that follow it, and nothing secret in them.

The API and the worker run at DEBUG with an API key configured and Redis
reached as a user with a password; one page is parsed with that key and two
calls are refused (a wrong key, no key). Their logs are read whole, as an
operator's log pipeline would read them.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from tests.api.images import noisy_png
from tests.observability.conftest import MakeStack, Stack
from tests.stream.worker_kit import wait_until

pytestmark = pytest.mark.integration

API_KEY = "secret-key-123"
WRONG_KEY = "wrong-key-456"
REDIS_PASSWORD = "redis-pass-789"
LEVELS = {"debug", "info", "warning", "error", "critical"}
# Longer than any id or hash a line carries, far shorter than an image.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}={0,2}")


@dataclass
class Logged:
    stack: Stack
    request_id: str
    batch_id: str
    image_b64: str
    api_text: str
    worker_text: str

    def lines(self, text: str) -> list[dict[str, Any]]:
        parsed = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise AssertionError(f"line {number} is not JSON: {line!r}") from None
            assert isinstance(value, dict), line
            parsed.append(value)
        return parsed

    def lines_of(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The lines carrying this request's id."""
        return [x for x in lines if x.get("request_id") == self.request_id]

    @property
    def api_lines(self) -> list[dict[str, Any]]:
        return self.lines(self.api_text)

    @property
    def worker_lines(self) -> list[dict[str, Any]]:
        return self.lines(self.worker_text)


@pytest.fixture(scope="module")
async def redis_user_url(redis_url: str) -> AsyncIterator[str]:
    """The session's Redis through a user of its own with a password."""
    admin = Redis.from_url(redis_url)
    user = f"obs-{uuid.uuid4().hex[:8]}"
    await admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{REDIS_PASSWORD}"],
        categories=["+@all"],
        keys=["*"],
        channels=["*"],
    )
    parts = urlsplit(redis_url)
    netloc = f"{user}:{REDIS_PASSWORD}@{parts.hostname}:{parts.port}"
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        await admin.acl_deluser(user)
        await admin.aclose()


@pytest.fixture(scope="module")
async def logged(make_stack: MakeStack, redis_user_url: str) -> Logged:
    """One page parsed with the API key, two calls refused, logs read after."""
    secrets = {
        "DOLPHIN_API_KEYS": orjson.dumps([API_KEY]).decode(),
        "REDIS_URL": redis_user_url,
    }
    stack = await make_stack(api_env=secrets, worker_overrides=secrets)
    # Random pixels: no run of its base64 can turn up by chance elsewhere.
    image_b64 = base64.b64encode(noisy_png(48, 48, seed=7)).decode()
    body = {"image_data": image_b64, "filename": "secret-page.png"}

    async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as client:
        refused = [
            await client.post(
                "/parse", json=body, headers={"Authorization": f"Bearer {WRONG_KEY}"}
            ),
            await client.post("/parse", json=body),
        ]
        answer = await client.post(
            "/parse", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert [r.status_code for r in refused] == [401, 401]
    assert answer.status_code == 200, answer.text
    request_id, batch_id = answer.json()["request_id"], answer.json()["batch_id"]

    # The worker logs its answer after the reply went out, so maybe after 200.
    def answer_logged() -> bool:
        return any(
            '"request_answered"' in line and request_id in line
            for line in stack.worker.log_text().splitlines()
        )

    await wait_until(answer_logged, 30, "the worker's lines of the request")
    assert stack.api is not None
    return Logged(
        stack,
        request_id,
        batch_id,
        image_b64,
        stack.api.log_text(),
        stack.worker.log_text(),
    )


async def test_every_line_is_a_json_object_with_an_event(logged: Logged) -> None:
    """Each line of both processes is one JSON object with a timestamp, a level,
    the component and an event name."""
    for lines, component in (
        (logged.api_lines, "api"),
        (logged.worker_lines, "worker"),
    ):
        assert lines, f"the {component} wrote no log"
        for line in lines:
            assert isinstance(line.get("event"), str) and line["event"], line
            assert line.get("level") in LEVELS, line
            assert line.get("component") == component, line
            assert isinstance(line.get("ts"), str), line


async def test_the_request_id_follows_the_request_through_both_processes(
    logged: Logged,
) -> None:
    """The request id is a field of API lines and of worker lines, and the worker
    line that answers it names the backend batch its reply names."""
    api = logged.lines_of(logged.api_lines)
    worker = logged.lines_of(logged.worker_lines)

    assert {x["event"] for x in api} >= {"request_admitted", "request_answered"}
    assert {x["event"] for x in worker} >= {"request_queued", "request_answered"}
    answered = [x for x in worker if x["event"] == "request_answered"]
    assert [x.get("backend_batch_id") for x in answered] == [logged.batch_id]


async def test_a_requests_batch_id_leads_to_its_batch_lines(logged: Logged) -> None:
    """From a request's worker lines, its batch id finds the batch's own lines."""
    batch_ids = {
        x["batch_id"] for x in logged.lines_of(logged.worker_lines) if "batch_id" in x
    }

    assert any(
        x["event"] == "batch_done" and x.get("batch_id") in batch_ids
        for x in logged.worker_lines
    )


async def test_no_line_carries_image_data(logged: Logged) -> None:
    """Neither the posted image's base64 nor any long base64 run is logged."""
    middle = len(logged.image_b64) // 2
    sample = logged.image_b64[middle : middle + 40]

    for text in (logged.api_text, logged.worker_text):
        assert sample not in text
        assert BASE64_RUN.search(text) is None


async def test_secrets_are_never_logged_and_masked_in_the_config(
    logged: Logged,
) -> None:
    """Neither the configured API key, a wrong one a caller sent, nor the Redis
    password is in any line; the effective config at start shows them masked."""
    for text in (logged.api_text, logged.worker_text):
        assert API_KEY not in text
        assert WRONG_KEY not in text
        assert REDIS_PASSWORD not in text

    for lines in (logged.api_lines, logged.worker_lines):
        config = [x for x in lines if x["event"] == "config_loaded"]
        assert len(config) == 1
        assert config[0]["api_keys"] == ["**** (1 keys)"]
        assert ":****@" in config[0]["redis_url"]
