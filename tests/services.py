"""Where the tests get their Kafka broker and Redis server.

In order: addresses from ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``; containers
from testcontainers when a Docker engine answers; else real local processes on
free ports with temporary data dirs. Tests see only an address either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from infra.localstack import kafka, redis
from infra.localstack.procs import free_port, stop_group

logger = logging.getLogger(__name__)


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def kafka_service(tmp: Path) -> Iterator[tuple[str, KafkaControl]]:
    if address := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield address, KafkaControl(None, None)
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server(), KafkaControl(None, None)
        return
    control = KafkaControl(tmp / "kafka", free_port())
    control.start()
    try:
        yield f"127.0.0.1:{control.port}", control
    finally:
        control.stop()


@contextlib.contextmanager
def redis_service(tmp: Path) -> Iterator[tuple[str, RedisControl]]:
    if url := os.environ.get("REDIS_URL"):
        yield url, RedisControl(None, None)
        return
    if docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0", RedisControl(None, None)
        return
    control = RedisControl(tmp / "redis", free_port())
    control.start()
    try:
        yield f"redis://127.0.0.1:{control.port}/0", control
    finally:
        control.stop()


class KafkaControl:
    """Stops and restarts a local broker, for fault tests; keeps its data."""

    def __init__(self, data_dir: Path | None, port: int | None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.controller_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def controllable(self) -> bool:
        return self.data_dir is not None

    def start(self) -> None:
        assert self.data_dir is not None and self.port is not None
        self.proc = kafka.start_kafka(
            self.port, self.controller_port, self.data_dir, self.data_dir / "server.log"
        )
        kafka.wait_kafka(f"127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid)
            self.proc = None


class RedisControl:
    def __init__(self, data_dir: Path | None, port: int | None) -> None:
        self.data_dir = data_dir
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def controllable(self) -> bool:
        return self.data_dir is not None

    def start(self) -> None:
        assert self.data_dir is not None and self.port is not None
        self.proc = redis.start_redis(
            self.port, self.data_dir, self.data_dir / "redis.log"
        )
        redis.wait_redis(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc.pid)
            self.proc = None
