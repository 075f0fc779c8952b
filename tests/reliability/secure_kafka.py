"""A second local Kafka broker whose client listener wants SASL_SSL.

Clients reach it on a ``SASL_SSL`` listener (TLS with the test CA, SASL/PLAIN
with one user); the broker's own traffic and the KRaft controller stay on
plain-text listeners bound to 127.0.0.1.

    with secure_kafka(tmp_path, certs, password) as bootstrap:
        ...  # KAFKA_BOOTSTRAP_SERVERS=bootstrap, security SASL_SSL
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.localstack import kafka
from infra.localstack.procs import free_port, spawn, stop_group
from tests.reliability.tls import Certs

USERNAME = "dolphin"


def write_config(
    data_dir: Path, certs: Certs, password: str, ports: tuple[int, int, int]
) -> Path:
    plain, secure, controller = ports
    # Kafka reads a PEM key store as one file: the PKCS#8 key, then the chain.
    keystore = data_dir / "server.pem"
    keystore.write_text(certs.key.read_text() + certs.cert.read_text())
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{USERNAME}="{password}";'
    )
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller}",
        f"listeners=PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{secure},"
        f"CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{plain},"
        f"SASL_SSL://127.0.0.1:{secure}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map="
        "PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms=PLAIN",
        f"listener.name.sasl_ssl.plain.sasl.jaas.config={jaas}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={keystore}",
        f"log.dirs={data_dir / 'logs'}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=2",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "message.max.bytes=56623104",
        "",
    ]
    config = data_dir / "server.properties"
    config.write_text("\n".join(lines))
    return config


@contextmanager
def secure_kafka(data_dir: Path, certs: Certs, password: str) -> Iterator[str]:
    """Run the broker; yields the SASL_SSL bootstrap address."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = (free_port(), free_port(), free_port())
    config = write_config(data_dir, certs, password, ports)
    kafka.format_storage(config, data_dir)
    argv = kafka.java_command("kafka.Kafka", str(config), heap="-Xmx384m")
    argv[2:2] = [
        f"-Dlog4j2.configurationFile={kafka.LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={data_dir}",
        "-Djava.awt.headless=true",
    ]
    proc = spawn(argv, data_dir / "server.log")
    try:
        kafka.wait_kafka(f"127.0.0.1:{ports[0]}")
        yield f"127.0.0.1:{ports[1]}"
    finally:
        stop_group(proc.pid, 20)
