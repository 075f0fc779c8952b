"""``dolphin parse`` talks politely to the API: what is retried, waited, counted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from common.cli.http_parse import HttpParser, RetryPolicy, retry_after_s
from common.cli.inputs import Input
from common.cli.run import JobFailed, RunAborted

URL = "http://api.test"
RESULT = {"request_id": "r1", "filename": "page.png", "elements": [], "success": True}
Handler = Callable[[httpx.Request], httpx.Response]


def _error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {
        "success": False,
        "request_id": None,
        "error": {"code": code, "message": code},
    }
    return httpx.Response(status, json=body, headers=headers)


def _script(
    *answers: httpx.Response | Exception,
) -> tuple[Handler, list[httpx.Request]]:
    """A transport answering each request with the next scripted answer."""
    seen: list[httpx.Request] = []
    remaining: Iterator[httpx.Response | Exception] = iter(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = next(remaining)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle, seen


class Harness:
    def __init__(self, handler: Handler, policy: RetryPolicy | None = None) -> None:
        self.sleeps: list[float] = []
        transport = httpx.MockTransport(handler)
        self.client = httpx.AsyncClient(base_url=URL, transport=transport)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        # jitter 1.0 makes the backoff its nominal value: 0.5, 1, 2, ...
        self.parser = HttpParser(
            self.client, url=URL, policy=policy, sleep=sleep, jitter=lambda: 1.0
        )


@pytest.fixture
def page(tmp_path: Path) -> Input:
    path = tmp_path / "page.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    return Input(path, Path("page.png"))


async def test_the_request_body_carries_base64_image_and_filename(page: Input) -> None:
    """POST /parse gets the JSON body of the HTTP contract."""
    handler, seen = _script(httpx.Response(200, json=RESULT))
    harness = Harness(handler)

    body = await harness.parser(page)

    assert body == RESULT
    sent = orjson.loads(seen[0].content)
    assert seen[0].url.path == "/parse"
    assert sent == {"image_data": "iVBORw0KGgpmYWtl", "filename": "page.png"}


async def test_503_is_retried_after_the_servers_retry_after(page: Input) -> None:
    """An overloaded API is asked again once its Retry-After has passed."""
    handler, seen = _script(
        _error(503, "overloaded", **{"Retry-After": "3"}),
        httpx.Response(200, json=RESULT),
    )
    harness = Harness(handler)

    assert await harness.parser(page) == RESULT
    assert harness.sleeps == [3.0]
    assert len(seen) == 2


async def test_429_without_retry_after_backs_off_exponentially(page: Input) -> None:
    """Rate limited answers wait 0.5, 1, 2 s ... between tries."""
    handler, _ = _script(
        _error(429, "rate_limited"),
        _error(429, "rate_limited"),
        _error(429, "rate_limited"),
        httpx.Response(200, json=RESULT),
    )
    harness = Harness(handler)

    await harness.parser(page)

    assert harness.sleeps == [0.5, 1.0, 2.0]


async def test_a_long_retry_after_is_capped(page: Input) -> None:
    """A Retry-After of an hour waits at most max_delay_s."""
    handler, _ = _script(
        _error(503, "overloaded", **{"Retry-After": "3600"}),
        httpx.Response(200, json=RESULT),
    )
    harness = Harness(handler, RetryPolicy(max_delay_s=7.0))

    await harness.parser(page)

    assert harness.sleeps == [7.0]


async def test_a_busy_api_is_given_up_on_after_bounded_attempts(page: Input) -> None:
    """After busy_attempts tries the input fails under the answer's code."""
    handler, seen = _script(*[_error(503, "overloaded") for _ in range(3)])
    harness = Harness(handler, RetryPolicy(busy_attempts=3))

    with pytest.raises(JobFailed) as failed:
        await harness.parser(page)

    assert failed.value.code == "overloaded"
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [
        pytest.param(415, "unsupported_media_type", id="415"),
        pytest.param(422, "invalid_image", id="422"),
        pytest.param(413, "image_too_large", id="413"),
        pytest.param(502, "parse_failed", id="502"),
        pytest.param(504, "deadline_exceeded", id="504"),
    ],
)
async def test_other_errors_are_final_and_counted_by_code(
    page: Input, status: int, code: str
) -> None:
    """Bad input and parser failures are not retried; their code is kept."""
    handler, seen = _script(_error(status, code))
    harness = Harness(handler)

    with pytest.raises(JobFailed) as failed:
        await harness.parser(page)

    assert failed.value.code == code
    assert len(seen) == 1 and harness.sleeps == []


async def test_an_error_without_the_json_shape_is_counted_by_status(
    page: Input,
) -> None:
    """A proxy's HTML 404 (a wrong --url) counts as http_404."""
    handler, _ = _script(httpx.Response(404, text="<html>not found</html>"))
    harness = Harness(handler)

    with pytest.raises(JobFailed) as failed:
        await harness.parser(page)

    assert failed.value.code == "http_404"


async def test_a_refused_connection_stops_the_run_after_a_few_tries(
    page: Input,
) -> None:
    """No API at the URL: a few backed-off tries, then a message naming it."""
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    handler, seen = _script(*[refused] * 4)
    harness = Harness(handler, RetryPolicy(connect_attempts=4))

    with pytest.raises(RunAborted) as aborted:
        await harness.parser(page)

    assert str(aborted.value) == (
        f"cannot reach the API at {URL}: is the stack up? (./dev up)"
    )
    assert len(seen) == 4
    assert harness.sleeps == [0.5, 1.0, 2.0]


async def test_an_api_that_comes_back_is_used(page: Input) -> None:
    """A refused connection followed by an answer succeeds without aborting."""
    handler, _ = _script(
        httpx.ConnectError("refused"), httpx.Response(200, json=RESULT)
    )
    harness = Harness(handler)

    assert await harness.parser(page) == RESULT


async def test_a_read_timeout_fails_the_input_without_retrying(page: Input) -> None:
    """Sending again after a timeout would parse the page twice."""
    handler, seen = _script(httpx.ReadTimeout("slow"))
    harness = Harness(handler)

    with pytest.raises(JobFailed) as failed:
        await harness.parser(page)

    assert failed.value.code == "client_timeout"
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("12", 12.0, id="seconds"),
        pytest.param("1.5", 1.5, id="fraction"),
        pytest.param("Thu, 15 Jan 2026 10:30:20 GMT", 20.0, id="http-date"),
        pytest.param("Thu, 15 Jan 2026 10:29:00 GMT", 0.0, id="date-in-past"),
        pytest.param("soon", None, id="garbage"),
    ],
)
def test_retry_after_reads_seconds_and_dates(header: str, expected: float) -> None:
    """Both forms of Retry-After give seconds to wait from now."""
    response = httpx.Response(503, headers={"Retry-After": header})
    now = datetime(2026, 1, 15, 10, 30, 0, tzinfo=UTC)

    assert retry_after_s(response, now) == expected


def test_retry_after_falls_back_to_the_error_body() -> None:
    """Without the header, error.retry_after_s of the body is used."""
    body = {"error": {"code": "rate_limited", "message": "", "retry_after_s": 4.5}}
    response = httpx.Response(429, json=body)

    assert retry_after_s(response) == 4.5


@pytest.mark.parametrize(
    ("attempt", "retry_after", "jitter", "expected"),
    [
        pytest.param(1, None, 1.0, 0.5, id="first-backoff"),
        pytest.param(4, None, 1.0, 4.0, id="doubles"),
        pytest.param(3, None, 0.0, 1.0, id="jitter-halves"),
        pytest.param(1, 5.0, 1.0, 5.0, id="retry-after-wins"),
        pytest.param(10, 2.0, 1.0, 30.0, id="backoff-capped"),
    ],
)
def test_delay(
    attempt: int, retry_after: float | None, jitter: float, expected: float
) -> None:
    """The wait is the larger of Retry-After and the backoff, capped."""
    assert RetryPolicy().delay_s(attempt, retry_after, jitter) == expected
