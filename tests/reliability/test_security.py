"""Authentication, per-key rate limits, secrets and image data kept out of logs,
and Kafka security options reaching every Kafka client.

Size limits that hold before a body is read are in ``test_hostile_http.py``
(a 10 GB Content-Length answered 413 from the headers alone); the image's
non-root user is checked by ``tests/infra/test_deploy_files.py``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import httpx
import orjson
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from api.context import ApiContext
from bench.images import unique_png
from bench.simulator import RunningSimulator
from common.client import DolphinClient
from common.kafka import ensure_topics
from common.settings import Settings
from common.store import Keys
from infra.localstack.procs import free_port, spawn, stop_group
from infra.localstack.redis import redis_binary
from stream.app import create_app
from stream.worker import Worker
from tests.api.conftest import QueueProbe
from tests.conftest import ServiceProcess, StartService
from tests.reliability.kit import page
from tests.reliability.secure_kafka import USERNAME as secure_kafka_user
from tests.reliability.secure_kafka import secure_kafka
from tests.reliability.tls import Certs, make_certs
from tests.stream.worker_kit import worker_env

pytestmark = pytest.mark.integration

ALPHA = "alpha-" + secrets.token_hex(16)
BETA = "beta-" + secrets.token_hex(16)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_api_keys_gate_parse_and_lookup_before_anything_is_queued(
    settings: Settings,
    redis_client: Redis,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
) -> None:
    """With API keys on, calls without a key or with a wrong one get 401 and
    queue nothing; a valid key is served."""
    start_worker(**worker_env(simulator))
    api = start_api(DOLPHIN_API_KEYS=orjson.dumps([ALPHA, BETA]).decode())
    probe = QueueProbe(settings, redis_client, Keys(settings.redis_key_prefix))
    before = await probe.snapshot()

    refused = [
        await http.post(f"{api.url}/parse", json=page(1, "auth")),
        await http.post(f"{api.url}/parse", json=page(2, "auth"), headers=bearer("x")),
        await http.post(
            f"{api.url}/parse", json=page(3, "auth"), headers=bearer(ALPHA + "x")
        ),
        await http.post(
            f"{api.url}/parse",
            json=page(4, "auth"),
            headers={"Authorization": f"Basic {ALPHA}"},
        ),
    ]
    assert [r.status_code for r in refused] == [401] * 4
    assert {r.json()["error"]["code"] for r in refused} == {"unauthorized"}
    assert all(r.headers["WWW-Authenticate"] == "Bearer" for r in refused)
    assert await probe.snapshot() == before

    served = await http.post(
        f"{api.url}/parse", json=page(5, "auth"), headers=bearer(BETA)
    )
    assert served.status_code == 200, served.text
    request_id = served.json()["request_id"]
    lookup = f"{api.url}/parse/{request_id}"
    assert (await http.get(lookup)).status_code == 401
    assert (await http.get(lookup, headers=bearer(ALPHA))).status_code == 200


async def test_rate_limit_is_per_api_key_with_retry_after(
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
) -> None:
    """Over its per-minute quota one key gets 429 with Retry-After, before its
    body is read; another key is not slowed by it."""
    start_worker(**worker_env(simulator))
    api = start_api(
        DOLPHIN_API_KEYS=orjson.dumps([ALPHA, BETA]).decode(),
        DOLPHIN_RATE_LIMIT_PER_MINUTE="3",
    )

    async def call(key: str, sequence: int) -> httpx.Response:
        return await http.post(
            f"{api.url}/parse", json=page(sequence, key[:5]), headers=bearer(key)
        )

    alpha = [await call(ALPHA, i) for i in range(5)]
    beta = [await call(BETA, i) for i in range(3)]

    assert [r.status_code for r in alpha] == [200, 200, 200, 429, 429]
    assert alpha[3].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(alpha[3].headers["Retry-After"]) <= 60
    assert [r.status_code for r in beta] == [200, 200, 200]


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A second Redis server behind TLS and a password: (rediss URL, password).

    Plain-text connections and connections without the password are refused.
    """
    certs = make_certs(tmp_path / "tls")
    password = "redis-" + secrets.token_hex(16)
    port = free_port()
    argv = [
        redis_binary(),
        "--port", "0",
        "--tls-port", str(port),
        "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
        "--bind", "127.0.0.1",
        "--requirepass", password,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(tmp_path),
    ]  # fmt: skip
    proc = spawn(argv, tmp_path / "redis-locked.log")
    url = (
        f"rediss://:{password}@127.0.0.1:{port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={certs.ca}"
    )
    client = sync_redis.Redis.from_url(url, socket_timeout=1)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except sync_redis.ConnectionError:
                time.sleep(0.1)
        without_password = url.replace(f":{password}@", "")
        with pytest.raises(sync_redis.AuthenticationError):
            sync_redis.Redis.from_url(without_password, socket_timeout=1).ping()
        with pytest.raises(sync_redis.ConnectionError):
            sync_redis.Redis(port=port, password=password, socket_timeout=1).ping()
        yield url, password
    finally:
        client.close()
        stop_group(proc.pid, 5)


# Runs of base64 long enough to be image data; hex digests are not.
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{60,}={0,2}")
HEX_ONLY = re.compile(rb"[0-9a-f]+")


async def test_secrets_and_image_data_never_reach_the_logs(
    locked_redis: tuple[str, str],
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
) -> None:
    """API and worker at DEBUG, Redis behind TLS and a password, API keys on
    and a Kafka SASL password configured: a run with good, bad and refused calls
    leaves no secret, no base64 and no image bytes in any log line, and
    /health reports the protected Redis up."""
    redis_url, redis_password = locked_redis
    sasl_password = "sasl-" + secrets.token_hex(16)
    wrong_key = "wrong-" + secrets.token_hex(16)
    env = {
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "DEBUG",
        # Only read for SASL protocols; set so the config log line must mask it.
        "DOLPHIN_KAFKA_SASL_USERNAME": "dolphin",
        "DOLPHIN_KAFKA_SASL_PASSWORD": sasl_password,
    }
    worker = start_worker(**worker_env(simulator), **env)
    api = start_api(**env, DOLPHIN_API_KEYS=orjson.dumps([ALPHA]).decode())
    images = [unique_png(i, 4096) for i in range(6)]

    health = await http.get(f"{api.url}/health")
    assert health.status_code == 200, health.text
    assert health.json()["redis"]["ok"] is True
    # Four pages, then the first again with its Idempotency-Key.
    answers = [
        await http.post(
            f"{api.url}/parse",
            json={"image_data": base64.b64encode(image).decode(), "filename": "p.png"},
            headers={**bearer(ALPHA), "Idempotency-Key": f"k{i % 4}"},
        )
        for i, image in enumerate([*images[:4], images[0]])
    ]
    answers.append(
        await http.post(
            f"{api.url}/parse",
            files={"file": ("scan.png", images[5], "image/png")},
            headers=bearer(ALPHA),
        )
    )
    assert [r.status_code for r in answers] == [200] * 6
    assert answers[4].json()["request_id"] == answers[0].json()["request_id"]
    bad = [
        await http.post(
            f"{api.url}/parse", json=page(9, "x"), headers=bearer(wrong_key)
        ),
        await http.post(
            f"{api.url}/parse",
            json={"image_data": base64.b64encode(images[0]).decode()[:-3] + "!!!"},
            headers=bearer(ALPHA),
        ),
        await http.post(
            f"{api.url}/parse",
            json={
                "image_data": base64.b64encode(b"%PDF" * 200).decode(),
                "filename": "a",
            },
            headers=bearer(ALPHA),
        ),
    ]
    assert [r.status_code for r in bad] == [401, 422, 415]
    lookup = answers[0].json()["request_id"]
    assert (
        await http.get(f"{api.url}/parse/{lookup}", headers=bearer(ALPHA))
    ).is_success
    worker.terminate()
    api.terminate()

    secrets_sent = [redis_password, sasl_password, ALPHA, wrong_key]
    leaks = scan_logs([worker, api], secrets_sent, images)
    assert leaks == [], leaks[:5]
    config_lines = [
        line for line in api.log_text().splitlines() if '"config_loaded"' in line
    ]
    assert config_lines and ":****@" in config_lines[0]


def scan_logs(
    processes: list[ServiceProcess], secrets_sent: list[str], images: list[bytes]
) -> list[str]:
    """Log lines that hold a secret, a slice of an image, or a base64 run."""
    encoded = [base64.b64encode(image) for image in images]
    needles = [s.encode() for s in secrets_sent]
    # A slice from the middle of each image, as bytes, base64 and repr().
    needles += [image[100:130] for image in images]
    needles += [e[200:240] for e in encoded]
    needles += [repr(image[100:130]).encode()[2:-1] for image in images]
    leaks: list[str] = []
    for process in processes:
        raw = process.log.read_bytes()
        assert raw.count(b"\n") > 20, f"{process.name} logged too little to judge"
        for line in raw.splitlines():
            found = [n for n in needles if n in line]
            runs = [
                m.group() for m in BASE64_RUN.finditer(line)
                if not HEX_ONLY.fullmatch(m.group())
            ]  # fmt: skip
            if found or runs:
                leaks.append(f"{process.name}: {line[:300]!r}")
    return leaks


class _Recorder:
    """Stands in for the aiokafka client classes and records their options."""

    def __init__(self) -> None:
        self.made: list[tuple[str, dict[str, Any]]] = []

    def fake(self, where: str) -> type:
        made = self.made

        class FakeClient:
            def __init__(self, *args: Any, **options: Any) -> None:
                made.append((where, options))

            def subscribe(self, *args: Any, **kwargs: Any) -> None:
                return None

            async def start(self) -> None:
                return None

            async def stop(self) -> None:
                return None

            async def close(self) -> None:
                return None

            async def list_topics(self) -> list[str]:
                return []

            async def create_topics(self, topics: Any) -> None:
                return None

        return FakeClient


KAFKA_CLIENTS = [
    ("api.producer", "AIOKafkaProducer"),
    ("api.replies", "AIOKafkaConsumer"),
    ("api.kafka_status", "AIOKafkaAdminClient"),
    ("api.kafka_status", "AIOKafkaConsumer"),
    ("stream.consumer", "AIOKafkaConsumer"),
    ("stream.producing", "AIOKafkaProducer"),
    ("common.kafka", "AIOKafkaAdminClient"),
]


async def test_every_kafka_client_gets_the_tls_and_sasl_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each Kafka client the API and the worker build, the topic set-up, the
    internal client and the Faust app all take the configured security."""
    import importlib

    recorder = _Recorder()
    for module, name in KAFKA_CLIENTS:
        monkeypatch.setattr(
            importlib.import_module(module), name, recorder.fake(f"{module}.{name}")
        )
    secure = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="dolphin",
        kafka_sasl_password="sasl-secret",
        modal_api_endpoint="http://127.0.0.1:9",
    )

    ctx = ApiContext.build(secure)
    worker = Worker(secure, on_fatal=_never)
    await ensure_topics(secure)
    client_options = DolphinClient.from_settings(secure)._kafka_options
    faust_credentials = create_app(secure).conf.broker_credentials
    await ctx.redis.aclose()
    await worker.backend.aclose()
    await worker.redis.aclose()

    built = {where for where, _ in recorder.made}
    assert built == {f"{module}.{name}" for module, name in KAFKA_CLIENTS}
    for where, options in [*recorder.made, ("common.client", client_options)]:
        assert options["security_protocol"] == "SASL_SSL", where
        assert options["sasl_mechanism"] == "SCRAM-SHA-512", where
        assert options["sasl_plain_username"] == "dolphin", where
        assert options["sasl_plain_password"] == "sasl-secret", where
        assert isinstance(options["ssl_context"], ssl.SSLContext), where
    assert isinstance(faust_credentials, faust.SASLCredentials)
    assert faust_credentials.protocol.value == "SASL_SSL"
    assert faust_credentials.mechanism.value == "SCRAM-SHA-512"


async def _never(exc: BaseException) -> None:
    raise AssertionError(f"the worker was not started: {exc!r}")


@dataclass(frozen=True)
class SecureKafka:
    bootstrap: str
    certs: Certs
    password: str

    def env(self, password: str | None = None) -> dict[str, str]:
        """Settings of a client of this broker (``password`` overrides)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DOLPHIN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "DOLPHIN_KAFKA_SASL_MECHANISM": "PLAIN",
            "DOLPHIN_KAFKA_SASL_USERNAME": secure_kafka_user,
            "DOLPHIN_KAFKA_SASL_PASSWORD": password or self.password,
            "DOLPHIN_KAFKA_SSL_CAFILE": str(self.certs.ca),
        }


@pytest.fixture
def sasl_ssl_kafka(tmp_path: Path) -> Iterator[SecureKafka]:
    """A second broker whose client listener takes only SASL_SSL."""
    certs = make_certs(tmp_path / "tls")
    password = "kafka-" + secrets.token_hex(16)
    with secure_kafka(tmp_path / "kafka", certs, password) as bootstrap:
        yield SecureKafka(bootstrap, certs, password)


async def test_api_and_worker_work_over_kafka_sasl_ssl(
    sasl_ssl_kafka: SecureKafka,
    start_worker: StartService,
    start_api: StartService,
    simulator: RunningSimulator,
    http: httpx.AsyncClient,
) -> None:
    """Against a broker that wants TLS and SASL/PLAIN, the worker and the API
    create their topics, parse a page end to end, and log no password; with a
    wrong password the API refuses to start."""
    env = sasl_ssl_kafka.env()
    worker = start_worker(**worker_env(simulator), **env)
    api = start_api(**env)

    response = await http.post(f"{api.url}/parse", json=page(1, "sasl"))
    health = await http.get(f"{api.url}/health")

    assert response.status_code == 200, response.text
    assert health.json()["kafka"]["ok"] is True
    denied = start_api(wait=False, **sasl_ssl_kafka.env(password="wrong"))
    assert await asyncio.to_thread(denied.proc.wait, 90) != 0
    for process in (worker, api, denied):
        assert sasl_ssl_kafka.password.encode() not in process.log.read_bytes()
