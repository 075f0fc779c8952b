"""The files for Docker machines stay consistent with the local stack."""

from __future__ import annotations

from pathlib import Path

import yaml

from common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_services_use_only_known_settings() -> None:
    """Every environment variable given to the API and worker is a real setting."""
    compose = _compose()
    known = {f"DOLPHIN_{name.upper()}" for name in Settings.model_fields} | {
        "KAFKA_BOOTSTRAP_SERVERS",
        "REDIS_URL",
        "MODAL_API_ENDPOINT",
        "LOG_LEVEL",
        "CONFIG_PATH",
    }
    for name in ("api", "worker"):
        env = compose["services"][name]["environment"]
        assert set(env) <= known, (name, set(env) - known)


def test_core_services_wait_for_healthy_dependencies() -> None:
    """The API and the worker start only once Kafka and Redis are healthy."""
    services = _compose()["services"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["kafka"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]
    assert services["kafka"]["image"].startswith("apache/kafka:4.")


def test_observability_tools_stay_behind_a_profile() -> None:
    """The core stack stays small; monitoring tools need --profile observability."""
    services = _compose()["services"]
    for name in ("prometheus", "grafana", "kafka-ui", "kafka-exporter"):
        assert services[name]["profiles"] == ["observability"]
    for name in ("kafka", "redis", "api", "worker"):
        assert "profiles" not in services[name]


def test_image_runs_as_a_non_root_user() -> None:
    """The Dockerfile switches to an unprivileged user before the command."""
    lines = (ROOT / "infra/docker/Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
