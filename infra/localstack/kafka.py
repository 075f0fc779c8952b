"""An Apache Kafka broker in single-node KRaft mode, assembled from Maven Central.

``resolve()`` copies the broker's jars into ``.cache/kafka/libs`` with Maven once;
``start_kafka()`` formats the storage of a data dir if needed and runs
``java -cp 'libs/*' kafka.Kafka`` as combined broker and controller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from common.kafka import metadata_round_trip

from .procs import CACHE_DIR, REPO_ROOT, spawn

POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
LOG4J_CONFIG = REPO_ROOT / "infra" / "kafka" / "log4j2.yaml"
LIBS_DIR = CACHE_DIR / "kafka" / "libs"
STAMP = LIBS_DIR / ".resolved-from"
HEAP = "-Xmx512m"


def resolve(quiet: bool = True) -> Path:
    """Copy the broker's jars from Maven Central into the cache, once per pom."""
    import hashlib

    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text() == digest:
        return LIBS_DIR
    if shutil.which("mvn") is None:
        raise RuntimeError(
            "Maven (mvn) is needed to fetch the Kafka jars; install maven"
        )
    if LIBS_DIR.exists():
        shutil.rmtree(LIBS_DIR)
    argv = [
        "mvn", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={LIBS_DIR}", "-DincludeScope=runtime",
    ]  # fmt: skip
    if quiet:
        argv.insert(1, "-q")
    subprocess.run(argv, check=True)
    STAMP.write_text(digest)
    return LIBS_DIR


def java_command(main_class: str, *args: str, heap: str = HEAP) -> list[str]:
    java = (
        os.path.join(os.environ["JAVA_HOME"], "bin", "java")
        if os.environ.get("JAVA_HOME")
        else "java"
    )
    return [java, heap, "-cp", f"{resolve()}/*", main_class, *args]


def write_config(port: int, controller_port: int, data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "server.properties"
    config.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},"
                f"CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={data_dir / 'logs'}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=8",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                # Room for the largest allowed image plus headers.
                "message.max.bytes=56623104",
                "replica.fetch.max.bytes=56623104",
                "socket.request.max.bytes=209715200",
                "log.flush.interval.messages=10000",
                "",
            ]
        )
    )
    return config


def format_storage(config: Path, data_dir: Path) -> None:
    """Format KRaft storage once; a formatted dir keeps its cluster id."""
    if (data_dir / "logs" / "meta.properties").exists():
        return
    cluster_id = _cluster_id()
    subprocess.run(
        java_command(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)
        ),
        check=True,
        capture_output=True,
        env={**os.environ, "KAFKA_LOG4J_OPTS": ""},
    )


def _cluster_id() -> str:
    # KRaft wants 16 random bytes in URL-safe base64 without padding.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def start_kafka(
    port: int, controller_port: int, data_dir: Path, log_file: Path
) -> subprocess.Popen[bytes]:
    config = write_config(port, controller_port, data_dir)
    format_storage(config, data_dir)
    logs_dir = log_file.parent
    argv = java_command("kafka.Kafka", str(config))
    argv[2:2] = [
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
    ]
    return spawn(argv, log_file)


def wait_kafka(bootstrap: str, timeout_s: float = 60.0) -> float:
    """Block until the broker answers a metadata request; returns seconds waited."""
    # The client logs every refused connection while the broker boots.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if asyncio.run(metadata_round_trip(bootstrap, 2.0)):
            return time.monotonic() - started
        time.sleep(0.3)
    raise TimeoutError(f"kafka at {bootstrap} answered no metadata in {timeout_s}s")


def consumer_groups_command(bootstrap: str, *args: str) -> list[str]:
    """Kafka's own consumer-group tool, from the broker's jars."""
    return java_command(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        bootstrap,
        *args,
        heap="-Xmx256m",
    )


def parse_lag(output: str) -> dict[int, int]:
    """Lag per partition from `--describe` output of the consumer-group tool."""
    lag: dict[int, int] = {}
    for line in output.splitlines():
        fields = re.split(r"\s+", line.strip())
        if len(fields) >= 6 and fields[2].isdigit() and fields[5].lstrip("-").isdigit():
            lag[int(fields[2])] = int(fields[5])
    return lag
