"""Settings load from YAML and the environment and refuse bad configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from common.settings import ConfigError, load_settings, log_effective, mask_url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DOLPHIN_") or name in {
            "CONFIG_PATH",
            "REDIS_URL",
            "MODAL_API_ENDPOINT",
            "LOG_LEVEL",
            "KAFKA_BOOTSTRAP_SERVERS",
        }:
            monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_design_brief() -> None:
    """Without configuration the documented ports, topics and limits apply."""
    settings = load_settings()
    assert settings.api_port == 8080
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.requests_topic == "dolphin.parse.requests"
    assert settings.consumer_group == "dolphin-connector"
    assert settings.max_batch_size == 32
    assert settings.max_concurrent_batches == 4
    assert settings.queue_capacity == 10_000
    assert settings.admission_threshold == 8300
    assert settings.modal_api_endpoint is None


def test_plain_seed_variables_and_prefixed_ones_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REDIS_URL and friends work unprefixed; the rest under DOLPHIN_."""
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@redis:6380/1")
    monkeypatch.setenv("MODAL_API_ENDPOINT", "https://org--dolphin")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("DOLPHIN_MAX_BATCH_SIZE", "16")

    settings = load_settings()

    assert settings.redis_url.get_secret_value().endswith("@redis:6380/1")
    assert settings.modal_api_endpoint == "https://org--dolphin"
    assert settings.log_level == "DEBUG"
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert settings.max_batch_size == 16


def test_yaml_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CONFIG_PATH names a YAML file; environment variables override it."""
    config = tmp_path / "config.yaml"
    config.write_text("max_batch_size: 8\nqueue_capacity: 100\n")
    monkeypatch.setenv("CONFIG_PATH", str(config))
    monkeypatch.setenv("DOLPHIN_QUEUE_CAPACITY", "200")

    settings = load_settings()

    assert settings.max_batch_size == 8
    assert settings.queue_capacity == 200


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        pytest.param("max_batch_size: 64\n", "max_batch_size=64", id="over-limit"),
        pytest.param("api_port: http\n", "api_port='http'", id="wrong-type"),
        pytest.param("log_level: LOUD\n", "log_level='LOUD'", id="not-allowed"),
        pytest.param("max_batch_sise: 8\n", "max_batch_sise: unknown key", id="typo"),
    ],
)
def test_bad_yaml_stops_start_up_naming_key_and_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, yaml_text: str, expected: str
) -> None:
    """A bad value or unknown key is refused with the key and value in the message."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text)
    monkeypatch.setenv("CONFIG_PATH", str(config))

    with pytest.raises(ConfigError) as raised:
        load_settings()

    assert expected in str(raised.value)


def test_unknown_prefixed_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt DOLPHIN_ variable stops start-up instead of being ignored."""
    monkeypatch.setenv("DOLPHIN_MAX_BATCH", "8")

    with pytest.raises(ConfigError, match="DOLPHIN_MAX_BATCH"):
        load_settings()


def test_missing_config_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """CONFIG_PATH pointing nowhere is an error, not silently ignored."""
    monkeypatch.setenv("CONFIG_PATH", "/nonexistent/config.yaml")

    with pytest.raises(ConfigError, match=r"/nonexistent/config\.yaml"):
        load_settings()


def test_effective_config_is_logged_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The config line shows settings but never a password or key."""
    monkeypatch.setenv("REDIS_URL", "redis://user:hunter2@redis:6379/0")
    monkeypatch.setenv("DOLPHIN_KAFKA_SASL_PASSWORD", "kafka-secret")
    monkeypatch.setenv("DOLPHIN_API_KEYS", json.dumps(["key-one", "key-two"]))
    settings = load_settings()

    with caplog.at_level(logging.INFO):
        log_effective(settings, "test")

    record = caplog.records[-1]
    text = json.dumps(record.__dict__, default=str)
    assert "hunter2" not in text
    assert "kafka-secret" not in text
    assert "key-one" not in text
    assert record.__dict__["redis_url"] == "redis://user:****@redis:6379/0"
    assert record.__dict__["max_batch_size"] == 32


def test_mask_url_leaves_password_free_urls_alone() -> None:
    """Only the password part of a URL is masked."""
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
    assert mask_url("rediss://:pw@h:1/0") == "rediss://:****@h:1/0"
