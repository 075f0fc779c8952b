"""Messages that can never be parsed end in the dead-letter topic, with why."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from bench.simulator import RunningSimulator
from common.messages import encode_request
from common.settings import Settings
from common.store import Keys
from tests.conftest import StartService
from tests.stream.worker_kit import (
    client,
    fake_png,
    make_request,
    reading,
    replies,
    wait_until,
    worker_env,
)
from tests.stream.worker_kit import simulator_fixture as simulator_fixture

pytestmark = pytest.mark.integration

MAX_IMAGE_BYTES = 100_000

Headers = list[tuple[str, bytes]]


@dataclass
class Case:
    name: str
    reason: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def _valid(settings: Settings, index: int) -> tuple[bytes, bytes, Headers]:
    return encode_request(make_request(f"poison-{index}", settings))


def _replace(headers: Headers, name: str, value: bytes | None) -> Headers:
    kept = [(n, v) for n, v in headers if n != name]
    return kept if value is None else [*kept, (name, value)]


_KEEP = b"<keep>"


def poison_cases(settings: Settings) -> list[Case]:
    """Valid requests, each spoiled in one way."""
    cases: list[Case] = []

    def case(
        name: str,
        reason: str,
        *,
        key: bytes | None = _KEEP,
        value: bytes | None = _KEEP,
        headers: dict[str, bytes | None] | None = None,
        no_headers: bool = False,
    ) -> None:
        valid_key, valid_value, valid_headers = _valid(settings, len(cases))
        for header, header_value in (headers or {}).items():
            valid_headers = _replace(valid_headers, header, header_value)
        cases.append(
            Case(
                name,
                reason,
                valid_key if key is _KEEP else key,
                valid_value if value is _KEEP else value,
                [] if no_headers else valid_headers,
            )
        )

    case("no headers", "missing_headers", no_headers=True)
    case("wrong specversion", "bad_specversion", headers={"ce_specversion": b"0.3"})
    case("wrong type", "bad_type", headers={"ce_type": b"com.example.other"})
    case("missing type", "missing_header", headers={"ce_type": None})
    case("missing id", "missing_header", headers={"ce_id": None})
    case("missing filename", "missing_header", headers={"ce_filename": None})
    case(
        "control char in filename",
        "bad_filename",
        headers={"ce_filename": b"a\x01.png"},
    )
    case("request id too long", "bad_request_id", headers={"ce_id": b"x" * 200})
    case("key mismatch", "key_mismatch", key=b"some-other-id")
    case("empty value", "empty_value", value=b"")
    case("tombstone", "empty_value", value=None)
    case("not an image", "not_an_image", value=b"hello, this is text")
    case("too large", "too_large", value=fake_png("big") + b"\0" * MAX_IMAGE_BYTES)
    case("bad deadline", "bad_time", headers={"ce_deadline": b"tomorrow"})
    case(
        "deadline without offset",
        "bad_time",
        headers={"ce_deadline": b"2030-01-01T00:00:00"},
    )
    case("bad time", "bad_time", headers={"ce_time": b"yesterday"})
    case("non-UTF-8 header", "bad_header", headers={"ce_source": b"\xff\xfe\xfd"})
    case(
        "invalid reply topic", "bad_reply_topic", headers={"ce_replyto": b"no spaces!"}
    )
    case(
        "unknown reply topic",
        "unknown_reply_topic",
        headers={"ce_replyto": b"no.such.topic"},
    )
    case(
        "unsupported content type",
        "unsupported_content_type",
        headers={"content-type": b"text/plain"},
    )
    return cases


async def test_poison_messages_are_dead_lettered_and_good_ones_still_answered(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """Each kind of unprocessable message lands in the DLQ once, with its
    reason, the original key, value and headers, and where it came from; the
    worker keeps answering the good requests produced after them."""
    start_worker(**worker_env(simulator, DOLPHIN_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES)))
    cases = poison_cases(settings)
    assert len({c.reason for c in cases}) >= 15

    async with (
        reading(settings, settings.dlq_topic) as dlq,
        replies(settings) as inbox,
        client(settings, redis_client) as kafka,
    ):
        sources = {}
        for c in cases:
            where = await kafka.produce_raw(key=c.key, value=c.value, headers=c.headers)
            sources[where] = c
        good = [make_request(f"good-{i}", settings) for i in range(5)]
        await kafka.send_many(good)

        await inbox.wait_for(r.request_id for r in good)
        await wait_until(lambda: len(dlq.messages) >= len(cases), what="dead letters")

    assert len(dlq.messages) == len(cases)
    for letter in dlq.messages:
        headers = dict(letter.headers)
        where = (
            int(headers["dlq_source_partition"]),
            int(headers["dlq_source_offset"]),
        )
        c = sources.pop(where)
        assert headers["dlq_reason"].decode() == c.reason, c.name
        assert headers["dlq_source_topic"].decode() == settings.requests_topic
        assert headers["dlq_error"]
        assert letter.key == c.key
        assert (letter.value or b"") == (c.value or b"")
        assert [h for h in letter.headers if not h[0].startswith("dlq_")] == c.headers
    assert not sources
    for request in good:
        assert inbox.first(request.request_id)["success"] is True
    assert len(simulator.stats()["processed"]) == len(good)


async def test_a_refused_request_with_a_readable_id_gets_an_error_reply(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    simulator: RunningSimulator,
) -> None:
    """A caller waiting on a request the worker refuses hears why at once, and
    the request's admission slot is released."""
    start_worker(**worker_env(simulator))
    request = make_request("text", settings, image=b"plain text, not a page")
    keys = Keys(settings.redis_key_prefix)

    async with replies(settings) as inbox, client(settings, redis_client) as kafka:
        await kafka.send(request)
        await inbox.wait_for([request.request_id])

    body = inbox.first(request.request_id)
    assert body["success"] is False
    assert body["error"]["code"] == "unsupported_image"
    assert body["error"]["detail"]["reason"] == "not_an_image"
    assert await redis_client.zscore(keys.admission, request.request_id) is None
    assert await redis_client.hget(keys.state(request.request_id), "state") == b"failed"
