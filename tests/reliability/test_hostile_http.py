"""A corpus of hostile POST /parse requests against a real API process.

Every request gets the status and code the error catalog (``api/errors.py``)
documents for what is wrong with it, in the one error shape, and none of them
is queued: the requests topic's end offsets and the admission set are the same
after the corpus as before, and a good request still succeeds afterwards.
``tests/api/test_parse.py`` and ``tests/api/test_validation.py`` pin the same
checks in-process and one function at a time; this is the complete list, over
real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
import sys
import uuid
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from api.errors import CATALOG
from api.validation import multipart_body_limit
from bench.simulator import SimConfig, start_in_thread
from common.kafka import ensure_topics
from common.settings import MiB, Settings
from common.store import Keys
from infra.localstack.procs import free_port
from tests.api.conftest import QueueProbe
from tests.api.images import make_image
from tests.conftest import ServiceProcess, StartService
from tests.reliability.conftest import FAST_BACKEND
from tests.reliability.kit import page
from tests.stream.worker_kit import worker_env

pytestmark = pytest.mark.integration

MAX_IMAGE_BYTES = 200_000
BOUNDARY = "dolphin-hostile-boundary"
PNG = make_image(fmt="PNG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def body(image_data: object = b64(PNG), filename: object = "page.png") -> bytes:
    return orjson.dumps({"image_data": image_data, "filename": filename})


def part(name: str, content: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return (
        f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        + content
        + b"\r\n"
    )


def form(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def png_claiming(width: int, height: int) -> bytes:
    """A complete PNG file whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


JSON = "application/json"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    content: bytes = b""
    content_type: str | None = JSON
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    """A whole HTTP request sent as bytes, for what httpx will not send."""

    @property
    def status(self) -> int:
        return CATALOG[self.code].status


def raw_head(content_type: str, length: int | str) -> bytes:
    return (
        f"POST /parse HTTP/1.1\r\nHost: api\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def chunked_over_limit() -> bytes:
    piece = b"A" * 16384
    chunks = b"4000\r\n" + b'{"image_data":"' + piece[15:] + b"\r\n"
    chunks += (b"4000\r\n" + piece + b"\r\n") * 20 + b"0\r\n\r\n"
    head = (
        b"POST /parse HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    return head + chunks


OVER_LIMIT = b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_IMAGE_BYTES - 7)

CORPUS = [
    # --- the body is not a JSON object ---
    Case("not-json", "invalid_json", b"{not json"),
    Case("json-array", "invalid_json", b"[]"),
    Case("json-string", "invalid_json", b'"page.png"'),
    Case("json-null", "invalid_json", b"null"),
    Case("empty-body", "invalid_json", b""),
    Case("truncated-json", "invalid_json", b'{"image_data": "iVBOR'),
    Case("invalid-utf8", "invalid_json", b'{"image_data": "\xff\xfe", "x": 1}'),
    Case("utf16-json", "invalid_json", body().decode().encode("utf-16")),
    Case("deep-nesting", "invalid_json", nested(100_000)),
    Case(
        "deep-nesting-in-field",
        "invalid_json",
        b'{"image_data": ' + nested(5_000) + b', "filename": "a.png"}',
    ),
    # --- fields missing, extra or mistyped ---
    Case("no-fields", "invalid_field", b"{}"),
    Case("missing-image_data", "invalid_field", b'{"filename": "a.png"}'),
    Case("missing-filename", "invalid_field", orjson.dumps({"image_data": b64(PNG)})),
    Case(
        "extra-field",
        "invalid_field",
        orjson.dumps({"image_data": b64(PNG), "filename": "a.png", "priority": 9}),
    ),
    Case("image_data-number", "invalid_field", body(12345)),
    Case("image_data-true", "invalid_field", body(True)),
    Case("image_data-list", "invalid_field", body([b64(PNG)])),
    Case("image_data-object", "invalid_field", body({"data": b64(PNG)})),
    Case(
        "image_data-null",
        "invalid_field",
        orjson.dumps({"image_data": None, "filename": "a.png"}),
    ),
    Case("filename-number", "invalid_field", body(filename=7)),
    Case("filename-null", "invalid_field", body(filename=None)),
    Case("filename-list", "invalid_field", body(filename=["a.png"])),
    # --- image_data is not strict base64 ---
    Case("base64-bad-characters", "invalid_base64", body("!!!!****")),
    Case("base64-unpadded", "invalid_base64", body(b64(PNG).rstrip("=") + "A")),
    Case("base64-over-padded", "invalid_base64", body(b64(PNG) + "====")),
    Case("base64-line-breaks", "invalid_base64", body(b64(PNG)[:60] + "\n" + "AAAA")),
    Case("base64-urlsafe", "invalid_base64", body("ab-_cd==")),
    Case("base64-data-url", "invalid_base64", body("data:image/png;base64,AAAA")),
    Case("base64-non-ascii", "invalid_base64", body("aéb=")),
    Case("image_data-empty", "empty_image", body("")),
    # --- not an image, or a broken one, whatever its name says ---
    Case("text-named-png", "unsupported_image", body(b64(b"hello world"))),
    Case("pdf-named-png", "unsupported_image", body(b64(b"%PDF-1.7\n%\xe2\xe3"))),
    Case("html-named-jpg", "unsupported_image", body(b64(b"<html></html>"), "a.jpg")),
    Case("gif", "unsupported_image", body(b64(make_image(fmt="GIF")))),
    Case("bmp", "unsupported_image", body(b64(make_image(fmt="BMP")))),
    Case("png-magic-only", "invalid_image", body(b64(PNG[:8]))),
    Case("png-truncated-header", "invalid_image", body(b64(PNG[:20]))),
    Case("jpeg-truncated", "invalid_image", body(b64(b"\xff\xd8\xff\xe0garbage"))),
    Case("webp-empty", "invalid_image", body(b64(b"RIFF\x00\x00\x00\x00WEBPVP8 "))),
    Case("zero-pixels", "invalid_image", body(b64(png_claiming(0, 0)))),
    Case("pixel-bomb", "payload_too_large", body(b64(png_claiming(100_000, 100_000)))),
    Case("decoded-over-limit", "payload_too_large", body(b64(OVER_LIMIT))),
    # --- the filename ---
    Case("filename-empty", "invalid_filename", body(filename="")),
    Case("filename-dot-dot", "invalid_filename", body(filename="..")),
    Case("filename-directory-only", "invalid_filename", body(filename="scans/")),
    Case("filename-huge", "invalid_filename", body(filename="a" * 10_000 + ".png")),
    Case("filename-nul", "invalid_filename", body(filename="page\x00.png")),
    Case("filename-newline", "invalid_filename", body(filename="page\r\nX: y.png")),
    Case("filename-escape", "invalid_filename", body(filename="\x1b[31mred.png")),
    Case("filename-rtl-override", "invalid_filename", body(filename="\u202egnp.exe")),
    # --- content types ---
    Case("text-plain", "unsupported_media_type", body(), "text/plain"),
    Case("no-content-type", "unsupported_media_type", body(), None),
    Case(
        "form-urlencoded",
        "unsupported_media_type",
        b"image_data=AAAA&filename=a.png",
        "application/x-www-form-urlencoded",
    ),
    Case("xml", "unsupported_media_type", b"<parse/>", "application/xml"),
    Case("json-lookalike", "unsupported_media_type", body(), "application/json-seq"),
    Case("image-png-body", "unsupported_media_type", PNG, "image/png"),
    # --- multipart abuse ---
    Case(
        "multipart-no-file-field",
        "invalid_field",
        form(part("filename", b"a.png")),
        MULTIPART,
    ),
    Case(
        "multipart-two-file-fields",
        "invalid_multipart",
        form(part("file", PNG, "a.png"), part("file", PNG, "b.png")),
        MULTIPART,
    ),
    Case(
        "multipart-unknown-field",
        "invalid_field",
        form(part("file", PNG, "a.png"), part("priority", b"9")),
        MULTIPART,
    ),
    Case(
        "multipart-file-as-text",
        "invalid_field",
        form(part("file", b64(PNG).encode())),
        MULTIPART,
    ),
    # A second file part breaks the one-file limit before fields are looked at.
    Case(
        "multipart-filename-as-file",
        "invalid_multipart",
        form(part("file", PNG, "a.png"), part("filename", b"a.png", "x.txt")),
        MULTIPART,
    ),
    Case(
        "multipart-wrong-boundary",
        "invalid_multipart",
        form(part("file", PNG, "a.png")),
        "multipart/form-data; boundary=something-else",
    ),
    Case(
        "multipart-no-boundary",
        "invalid_multipart",
        form(part("file", PNG, "a.png")),
        "multipart/form-data",
    ),
    Case(
        "multipart-huge-part",
        "payload_too_large",
        form(part("file", OVER_LIMIT + b"\x00" * 1024, "a.png")),
        MULTIPART,
    ),
    Case(
        "multipart-empty-file",
        "empty_image",
        form(part("file", b"", "a.png")),
        MULTIPART,
    ),
    Case(
        "multipart-non-image",
        "unsupported_image",
        form(part("file", b"MZ\x90\x00 not a page", "a.png")),
        MULTIPART,
    ),
    # --- headers ---
    Case(
        "timeout-header-word",
        "invalid_header",
        body(),
        headers={"X-Request-Timeout": "soon"},
    ),
    Case(
        "timeout-header-negative",
        "invalid_header",
        body(),
        headers={"X-Request-Timeout": "-1"},
    ),
    Case(
        "idempotency-key-space",
        "invalid_header",
        body(),
        headers={"Idempotency-Key": "a b"},
    ),
    Case(
        "idempotency-key-huge",
        "invalid_header",
        body(),
        headers={"Idempotency-Key": "k" * 300},
    ),
    # --- sizes that must be refused before the body is read ---
    Case(
        "content-length-huge-small-body",
        "payload_too_large",
        raw=raw_head(JSON, 10 * 1024**3) + b'{"image_data": "',
    ),
    Case("chunked-over-limit", "payload_too_large", raw=chunked_over_limit()),
]


@dataclass
class Hostile:
    api: ServiceProcess
    probe: QueueProbe
    before: tuple[int, int]


@pytest.fixture(scope="module")
async def hostile(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Hostile]:
    """One API (small image limit), worker and simulator for the whole corpus."""
    namespace = f"t{uuid.uuid4().hex[:10]}"
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        requests_topic=f"{namespace}.dolphin.parse.requests",
        replies_topic=f"{namespace}.dolphin.parse.replies",
        dlq_topic=f"{namespace}.dolphin.parse.dlq",
        consumer_group=f"{namespace}-dolphin-connector",
        redis_key_prefix=namespace,
        topic_partitions=2,
        max_image_bytes=MAX_IMAGE_BYTES,
    )
    await ensure_topics(settings)
    logs = tmp_path_factory.mktemp("hostile")
    simulator = start_in_thread(SimConfig(**FAST_BACKEND))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "REDIS_URL": redis_url,
        "DOLPHIN_REQUESTS_TOPIC": settings.requests_topic,
        "DOLPHIN_REPLIES_TOPIC": settings.replies_topic,
        "DOLPHIN_DLQ_TOPIC": settings.dlq_topic,
        "DOLPHIN_CONSUMER_GROUP": settings.consumer_group,
        "DOLPHIN_REDIS_KEY_PREFIX": namespace,
        "DOLPHIN_TOPIC_PARTITIONS": "2",
        "DOLPHIN_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "LOG_LEVEL": "DEBUG",
    }
    worker_port, api_port = free_port(), free_port()
    worker = ServiceProcess(
        "worker",
        [sys.executable, "-m", "stream.main"],
        {**env, **worker_env(simulator), "DOLPHIN_WORKER_PORT": str(worker_port)},
        logs / "worker.log",
        worker_port,
    )
    api = ServiceProcess(
        "api",
        [sys.executable, "-m", "api.main"],
        {**env, "DOLPHIN_API_PORT": str(api_port)},
        logs / "api.log",
        api_port,
    )
    redis = Redis.from_url(redis_url)
    try:
        await asyncio.to_thread(worker.wait_healthy)
        await asyncio.to_thread(api.wait_healthy)
        probe = QueueProbe(settings, redis, Keys(namespace))
        yield Hostile(api, probe, await probe.snapshot())
    finally:
        api.stop()
        worker.stop()
        simulator.stop()
        await redis.aclose()


def exchange(port: int, request: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes, tolerate an early close, parse the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        reply = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            reply += data
    head, _, content = reply.partition(b"\r\n\r\n")
    parsed = orjson.loads(content)
    assert isinstance(parsed, dict)
    return int(head.split()[1]), parsed


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
async def test_hostile_request_gets_its_documented_code(
    hostile: Hostile, http: httpx.AsyncClient, case: Case
) -> None:
    """The request is refused with the catalog's status and code, in the one
    error shape, and the API process stays up."""
    if case.raw is not None:
        status, answer = await asyncio.to_thread(exchange, hostile.api.port, case.raw)
    else:
        headers = dict(case.headers)
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type
        response = await http.post(
            f"{hostile.api.url}/parse", content=case.content, headers=headers
        )
        status, answer = response.status_code, response.json()

    assert (status, answer["error"]["code"]) == (case.status, case.code), answer
    assert answer["success"] is False
    assert answer["error"]["message"]
    assert hostile.api.proc.poll() is None


def test_corpus_is_large_and_names_are_unique() -> None:
    """At least 40 cases, each with its own readable id."""
    names = [case.name for case in CORPUS]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


async def test_path_traversal_in_filename_is_stripped_not_refused(
    hostile: Hostile, http: httpx.AsyncClient
) -> None:
    """Directories are cut from a filename (both separators) and the page is
    parsed under its last path part; nothing is ever written under the name."""
    names = {"../../etc/passwd": "passwd", "..\\..\\windows\\win.ini": "win.ini"}
    for sent, kept in names.items():
        request = {**page(len(sent), "traversal"), "filename": sent}
        response = await http.post(f"{hostile.api.url}/parse", json=request)
        assert response.status_code == 200, response.text
        assert response.json()["filename"] == kept


async def test_nothing_was_queued_and_a_good_request_still_succeeds(
    hostile: Hostile, http: httpx.AsyncClient
) -> None:
    """After the corpus (and the two traversal pages) the queue holds exactly
    what the good requests added, and a good request is answered."""
    produced, admitted = await hostile.probe.snapshot()
    traversal_pages = 2
    assert (produced, admitted) == (hostile.before[0] + traversal_pages, 0)

    response = await http.post(f"{hostile.api.url}/parse", json=page(1, "after"))
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "after-1.png"


async def test_true_size_limit_is_checked_from_content_length_alone(
    start_api: StartService,
) -> None:
    """With the default 50 MB limit, a multipart body one byte over the limit
    (and a 10 GB JSON body) is refused from its Content-Length, before the
    server reads a byte of it: the answer comes although no body was sent."""
    api = start_api()
    limit = multipart_body_limit(50 * MiB)
    over = raw_head(MULTIPART, limit + 1)
    huge = raw_head(JSON, 10 * 1024**3)

    for request in (over, huge):
        status, answer = await asyncio.to_thread(exchange, api.port, request)
        assert (status, answer["error"]["code"]) == (413, "payload_too_large")
