"""POST /parse against real Kafka and Redis: answers, refusals and cancellations."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from common.store import Keys, RequestState, get_state, now_ms
from tests.api.conftest import QueueProbe, StartApp, StartWorker
from tests.api.fake_worker import image_digest
from tests.api.images import b64, make_image, noisy_png, parse_json

pytestmark = pytest.mark.integration

BOUNDARY = "dolphin-test-boundary"


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """A multipart body of (field, filename, content) parts and its content type."""
    lines = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        lines += (
            f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    lines += f"--{BOUNDARY}--\r\n".encode()
    return lines, f"multipart/form-data; boundary={BOUNDARY}"


async def test_json_request_gets_its_own_result(
    start_app: StartApp, start_fake_worker: StartWorker
) -> None:
    """A JSON page comes back as the worker's result body, for that very image."""
    api = await start_app()
    await start_fake_worker()
    image = make_image(seed=7)

    response = await api.client.post(
        "/parse", json={"image_data": b64(image), "filename": "scans/p7.png"}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert body["filename"] == "p7.png"
    assert body["elements"][0]["text"] == f"p7.png {image_digest(image)}"
    assert set(body) >= {
        "processing_time_seconds", "timestamp", "element_count", "batch_id",
    }  # fmt: skip


async def test_multipart_upload_is_parsed_like_json(
    start_app: StartApp, start_fake_worker: StartWorker
) -> None:
    """curl-style uploads work, the upload's name used unless filename is given."""
    api = await start_app()
    await start_fake_worker()
    image = make_image(seed=3, fmt="JPEG")

    content, ctype = multipart([("file", "photo.jpg", image)])
    plain = await api.client.post(
        "/parse", content=content, headers={"Content-Type": ctype}
    )
    content, ctype = multipart(
        [("file", "x.bin", image), ("filename", None, b"named.jpg")]
    )
    named = await api.client.post(
        "/parse", content=content, headers={"Content-Type": ctype}
    )

    assert (plain.status_code, plain.json()["filename"]) == (200, "photo.jpg")
    assert (named.status_code, named.json()["filename"]) == (200, "named.jpg")
    assert named.json()["elements"][0]["text"].endswith(image_digest(image))


async def test_result_is_found_in_redis_when_no_reply_arrives(
    start_app: StartApp, start_fake_worker: StartWorker
) -> None:
    """A result stored in Redis without a Kafka reply still reaches the caller."""
    api = await start_app()
    worker = await start_fake_worker()
    worker.send_replies = False

    response = await api.client.post("/parse", json=parse_json(11))

    assert response.status_code == 200
    assert response.json()["success"] is True


async def test_parser_failure_answers_502_with_the_worker_body(
    start_app: StartApp, start_fake_worker: StartWorker
) -> None:
    """An error body from the worker is answered as is, with its code's status."""
    api = await start_app()
    worker = await start_fake_worker()
    worker.fail_filenames.add("broken.png")

    response = await api.client.post("/parse", json=parse_json(1, "broken.png"))

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "parse_failed"
    assert response.json()["request_id"] == response.headers["X-Request-Id"]


BAD_REQUESTS: list[Any] = [
    pytest.param({"content": b"{not json", "ctype": "application/json"},
                 400, "invalid_json", id="not-json"),
    pytest.param({"json": [1, 2]}, 400, "invalid_json", id="json-array"),
    pytest.param({"json": {"filename": "a.png"}}, 422, "invalid_field",
                 id="missing-image"),
    pytest.param({"json": {"image_data": b64(make_image())}}, 422, "invalid_field",
                 id="missing-filename"),
    pytest.param({"json": {**parse_json(), "extra": 1}}, 422, "invalid_field",
                 id="extra-field"),
    pytest.param({"json": {"image_data": 123, "filename": "a.png"}}, 422,
                 "invalid_field", id="image-not-string"),
    pytest.param({"json": {"image_data": b64(make_image()), "filename": ["a"]}}, 422,
                 "invalid_field", id="filename-not-string"),
    pytest.param({"json": {"image_data": "aGVsbG8gd29ybGQ", "filename": "a.png"}},
                 400, "invalid_base64", id="bad-padding"),
    pytest.param({"json": {"image_data": "aGVs bG8=", "filename": "a.png"}}, 400,
                 "invalid_base64", id="whitespace"),
    pytest.param({"json": {"image_data": "", "filename": "a.png"}}, 400,
                 "empty_image", id="empty-image"),
    pytest.param({"json": {"image_data": b64(make_image(fmt="GIF")),
                           "filename": "a.gif"}}, 415, "unsupported_image", id="gif"),
    pytest.param({"json": {"image_data": b64(make_image()[:30]), "filename": "a.png"}},
                 422, "invalid_image", id="truncated-png"),
    pytest.param({"json": parse_json(filename="a\x07.png")}, 422, "invalid_filename",
                 id="control-char-filename"),
    pytest.param({"json": parse_json(filename="x" * 300)}, 422, "invalid_filename",
                 id="long-filename"),
    pytest.param({"json": parse_json(filename="dir/")}, 422, "invalid_filename",
                 id="directory-filename"),
    pytest.param({"content": b"hello", "ctype": "text/plain"}, 415,
                 "unsupported_media_type", id="text-plain"),
    pytest.param({"content": b"a=b", "ctype": None}, 415, "unsupported_media_type",
                 id="no-content-type"),
    pytest.param({"json": {"image_data": b64(noisy_png(200, 200)), "filename": "a"},
                  "max_image_bytes": 2000}, 413, "payload_too_large",
                 id="body-over-limit"),
    pytest.param({"json": {"image_data": b64(noisy_png(30, 30)), "filename": "a"},
                  "max_image_bytes": 2000}, 413, "payload_too_large",
                 id="image-over-limit"),
    pytest.param({"multipart": [("file", "a.png", noisy_png(30, 30))],
                  "max_image_bytes": 2000}, 413, "payload_too_large",
                 id="multipart-image-over-limit"),
    pytest.param({"json": parse_json(), "headers": {"X-Request-Timeout": "soon"}},
                 400, "invalid_header", id="bad-timeout-header"),
    pytest.param({"json": parse_json(), "headers": {"Idempotency-Key": "a b"}},
                 400, "invalid_header", id="bad-idempotency-key"),
    pytest.param({"multipart": [("filename", None, b"a.png")]}, 422, "invalid_field",
                 id="multipart-without-file"),
    pytest.param({"multipart": [("file", "a.png", make_image()), ("x", None, b"1")]},
                 422, "invalid_field", id="multipart-extra-field"),
    pytest.param({"multipart": [("file", "a.png", b"")]}, 400, "empty_image",
                 id="multipart-empty-file"),
    pytest.param({"content": b"--nope\r\n", "ctype": "multipart/form-data"}, 400,
                 "invalid_multipart", id="multipart-without-boundary"),
    pytest.param({"json": parse_json(), "api_keys": [SecretStr("s3cret")]}, 401,
                 "unauthorized", id="missing-api-key"),
    pytest.param({"json": parse_json(), "api_keys": [SecretStr("s3cret")],
                  "headers": {"Authorization": "Bearer wrong"}}, 401, "unauthorized",
                 id="wrong-api-key"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_are_refused_before_anything_is_queued(
    start_app: StartApp,
    queue_probe: QueueProbe,
    case: dict[str, Any],
    status: int,
    code: str,
) -> None:
    """Every bad input gets its status and code in the one error shape, unqueued."""
    overrides = {k: case[k] for k in ("max_image_bytes", "api_keys") if k in case}
    api = await start_app(**overrides)
    headers = dict(case.get("headers", {}))
    kwargs: dict[str, Any] = {}
    if "json" in case:
        kwargs["json"] = case["json"]
    elif "multipart" in case:
        kwargs["content"], headers["Content-Type"] = multipart(case["multipart"])
    else:
        kwargs["content"] = case["content"]
        if case["ctype"] is not None:
            headers["Content-Type"] = case["ctype"]
    before = await queue_probe.snapshot()

    response = await api.client.post("/parse", headers=headers, **kwargs)

    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert await queue_probe.snapshot() == before


async def test_open_breaker_refuses_fast_with_retry_after(
    start_app: StartApp, redis_client: Redis, keys: Keys, queue_probe: QueueProbe
) -> None:
    """While the worker reports the backend breaker open, requests get 503."""
    api = await start_app()
    await redis_client.hset(
        keys.breaker, mapping={"state": "open", "until_ms": now_ms() + 20_000}
    )
    before = await queue_probe.snapshot()

    response = await api.client.post("/parse", json=parse_json())

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backend_unavailable"
    assert 15 <= int(response.headers["Retry-After"]) <= 20
    assert await queue_probe.snapshot() == before


async def test_rate_limit_is_per_client_with_retry_after(
    start_app: StartApp, start_fake_worker: StartWorker
) -> None:
    """Over the per-minute quota a client gets 429; other API keys are unaffected."""
    api = await start_app(
        rate_limit_per_minute=2, api_keys=[SecretStr("alpha"), SecretStr("beta")]
    )
    await start_fake_worker()
    alpha = {"Authorization": "Bearer alpha"}

    first = [
        await api.client.post("/parse", json=parse_json(i), headers=alpha)
        for i in range(3)
    ]
    other = await api.client.post(
        "/parse", json=parse_json(9), headers={"Authorization": "Bearer beta"}
    )

    assert [r.status_code for r in first] == [200, 200, 429]
    assert first[2].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(first[2].headers["Retry-After"]) <= 30
    assert other.status_code == 200


async def test_kafka_refusal_withdraws_the_admission(
    start_app: StartApp, redis_client: Redis, keys: Keys
) -> None:
    """When the produce fails the caller gets 503 and the slot is given back."""
    api = await start_app(requests_topic="no.such.topic")

    response = await api.client.post(
        "/parse", json=parse_json(), headers={"X-Request-Timeout": "2"}
    )

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "kafka_unavailable"
    assert "Retry-After" in response.headers
    assert await redis_client.zcard(keys.admission) == 0
    request_id = response.headers["X-Request-Id"]
    assert await get_state(redis_client, keys, request_id) == RequestState.CANCELLED


async def test_deadline_gives_504_and_the_worker_skips_the_request(
    start_app: StartApp,
    start_fake_worker: StartWorker,
    redis_client: Redis,
    keys: Keys,
) -> None:
    """Past its deadline a request is cancelled in Redis and never processed."""
    api = await start_app()
    worker = await start_fake_worker()
    worker.pause()
    worker.check_state = True

    response = await api.client.post(
        "/parse", json=parse_json(), headers={"X-Request-Timeout": "1.5"}
    )
    request_id = response.headers["X-Request-Id"]
    worker.resume()
    await worker.wait_seen(1)
    await asyncio.sleep(0.2)

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert await get_state(redis_client, keys, request_id) == RequestState.CANCELLED
    assert await redis_client.zcard(keys.admission) == 0
    assert worker.skipped == [request_id]
    assert worker.answered == []


async def test_same_idempotency_key_and_body_reuses_the_first_request(
    start_app: StartApp, start_fake_worker: StartWorker
) -> None:
    """A repeat, even while the first is in flight, joins it instead of queuing."""
    api = await start_app()
    worker = await start_fake_worker()
    worker.pause()
    headers = {"Idempotency-Key": "order-1"}

    first = asyncio.create_task(
        api.client.post("/parse", json=parse_json(5), headers=headers)
    )
    await worker.wait_seen(1)
    second = asyncio.create_task(
        api.client.post("/parse", json=parse_json(5), headers=headers)
    )
    await asyncio.sleep(0.5)
    worker.resume()
    answers = [await first, await second]
    later = await api.client.post("/parse", json=parse_json(5), headers=headers)

    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json() == later.json()
    assert later.headers["X-Request-Id"] == answers[0].json()["request_id"]
    assert len(worker.seen) == 1


async def test_same_idempotency_key_with_another_body_conflicts(
    start_app: StartApp, start_fake_worker: StartWorker, queue_probe: QueueProbe
) -> None:
    """Reusing a key for a different image is a 422, and nothing is queued."""
    api = await start_app()
    await start_fake_worker()
    headers = {"Idempotency-Key": "order-2"}
    first = await api.client.post("/parse", json=parse_json(1), headers=headers)
    before = await queue_probe.produced()

    other = await api.client.post("/parse", json=parse_json(2), headers=headers)
    renamed = await api.client.post(
        "/parse", json=parse_json(1, "other.png"), headers=headers
    )

    assert first.status_code == 200
    assert [other.status_code, renamed.status_code] == [422, 422]
    assert other.json()["error"]["code"] == "idempotency_conflict"
    assert await queue_probe.produced() == before


async def test_get_parse_reports_results_and_states(
    start_app: StartApp,
    start_fake_worker: StartWorker,
    redis_client: Redis,
    keys: Keys,
) -> None:
    """GET /parse/{id} answers the stored body, else the state, else 404."""
    api = await start_app()
    worker = await start_fake_worker()
    done = await api.client.post("/parse", json=parse_json(1))
    worker.pause()
    pending = asyncio.create_task(
        api.client.post(
            "/parse", json=parse_json(2), headers={"X-Request-Timeout": "2"}
        )
    )
    await worker.wait_seen(2)
    queued_id = worker.seen[-1].request_id
    await redis_client.hset(
        keys.state("orphan"),
        mapping={"state": "queued", "deadline_ms": now_ms() - 1000},
    )

    queued = await api.client.get(f"/parse/{queued_id}")
    timed_out = await pending
    cancelled = await api.client.get(f"/parse/{queued_id}")
    result = await api.client.get(f"/parse/{done.json()['request_id']}")
    orphan = await api.client.get("/parse/orphan")
    unknown = await api.client.get("/parse/0123456789abcdef")
    malformed = await api.client.get("/parse/bad%20id")

    assert (queued.status_code, queued.json()["state"]) == (202, "queued")
    assert timed_out.status_code == 504
    assert (cancelled.status_code, cancelled.json()) == (504, timed_out.json())
    assert (result.status_code, result.json()) == (200, done.json())
    assert (orphan.status_code, orphan.json()["state"]) == (200, "expired")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_request_id"


async def test_unknown_routes_and_methods_use_the_error_shape(
    start_app: StartApp,
) -> None:
    """FastAPI's own 404 and 405 come in the same JSON error shape."""
    api = await start_app()

    missing = await api.client.get("/nowhere")
    method = await api.client.put("/parse")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert method.status_code == 405
    assert method.json()["error"]["code"] == "method_not_allowed"
    assert orjson.loads(method.content)["success"] is False
