"""The one settings object of the connector.

Values come, highest priority first, from keyword arguments, the environment and
the YAML file named by ``CONFIG_PATH``. Every field reads ``DOLPHIN_<NAME>`` from
the environment; a few also read the plain names that deployments already use
(``REDIS_URL``, ``MODAL_API_ENDPOINT``, ``LOG_LEVEL``, ``KAFKA_BOOTSTRAP_SERVERS``).
Unknown keys and bad values stop start-up with a message that names the key.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

logger = logging.getLogger(__name__)

ENV_PREFIX = "DOLPHIN_"
MiB = 1024 * 1024


def _env(name: str, *plain: str) -> AliasChoices:
    """Accept ``DOLPHIN_<NAME>`` and, for seed variables, their plain name."""
    return AliasChoices(name, ENV_PREFIX + name.upper(), *plain)


class ConfigError(Exception):
    """The configuration is invalid; the message names each bad key."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
        case_sensitive=False,
    )

    # --- HTTP API ---
    api_host: str = Field("127.0.0.1", validation_alias=_env("api_host"))
    """Address the API binds to. Env DOLPHIN_API_HOST."""
    api_port: int = Field(8080, ge=1, le=65535, validation_alias=_env("api_port"))
    """TCP port of the API. Env DOLPHIN_API_PORT."""
    worker_host: str = Field("127.0.0.1", validation_alias=_env("worker_host"))
    """Address the worker's metrics/health server binds to."""
    worker_port: int = Field(6066, ge=1, le=65535, validation_alias=_env("worker_port"))
    """TCP port of the worker's metrics/health server. Env DOLPHIN_WORKER_PORT."""

    # --- Kafka ---
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=_env("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    """Comma-separated host:port list. Env KAFKA_BOOTSTRAP_SERVERS."""
    kafka_security_protocol: Literal[
        "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"
    ] = Field("PLAINTEXT", validation_alias=_env("kafka_security_protocol"))
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = (
        Field(None, validation_alias=_env("kafka_sasl_mechanism"))
    )
    kafka_sasl_username: str | None = Field(
        None, validation_alias=_env("kafka_sasl_username")
    )
    kafka_sasl_password: SecretStr | None = Field(
        None, validation_alias=_env("kafka_sasl_password")
    )
    kafka_ssl_cafile: Path | None = Field(
        None, validation_alias=_env("kafka_ssl_cafile")
    )
    kafka_ssl_certfile: Path | None = Field(
        None, validation_alias=_env("kafka_ssl_certfile")
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, validation_alias=_env("kafka_ssl_keyfile")
    )
    requests_topic: str = Field(
        "dolphin.parse.requests", validation_alias=_env("requests_topic")
    )
    replies_topic: str = Field(
        "dolphin.parse.replies", validation_alias=_env("replies_topic")
    )
    dlq_topic: str = Field("dolphin.parse.dlq", validation_alias=_env("dlq_topic"))
    consumer_group: str = Field(
        "dolphin-connector", validation_alias=_env("consumer_group")
    )
    topic_partitions: int = Field(
        8, ge=1, le=1024, validation_alias=_env("topic_partitions")
    )
    """Partitions of the requests topic: the most workers that can share it."""
    topic_replication_factor: int = Field(
        1, ge=1, le=7, validation_alias=_env("topic_replication_factor")
    )

    # --- Redis ---
    redis_url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=_env("redis_url", "REDIS_URL"),
    )
    """redis:// or rediss:// URL, may hold a password. Env REDIS_URL."""
    redis_key_prefix: str = Field("dolphin", validation_alias=_env("redis_key_prefix"))

    # --- Parser backend ---
    modal_api_endpoint: str | None = Field(
        None, validation_alias=_env("modal_api_endpoint", "MODAL_API_ENDPOINT")
    )
    """Modal base URL; unset selects the embedded CPU parser. Env MODAL_API_ENDPOINT."""
    backend_timeout_s: float = Field(
        600.0, gt=0, validation_alias=_env("backend_timeout_s")
    )
    backend_attempts: int = Field(
        3, ge=1, le=10, validation_alias=_env("backend_attempts")
    )
    """Tries per batch on connection errors, timeouts and 5xx."""
    backend_retry_base_s: float = Field(
        0.5, ge=0, validation_alias=_env("backend_retry_base_s")
    )
    breaker_failure_threshold: int = Field(
        5, ge=1, validation_alias=_env("breaker_failure_threshold")
    )
    breaker_cooldown_s: float = Field(
        30.0, gt=0, validation_alias=_env("breaker_cooldown_s")
    )
    local_parser_threads: int = Field(
        0, ge=0, le=64, validation_alias=_env("local_parser_threads")
    )
    """Parallel inferences of the embedded parser; 0 sizes it to the machine."""
    local_parser_max_side_px: int = Field(
        2048, ge=256, le=16384, validation_alias=_env("local_parser_max_side_px")
    )
    """Longer pages are downscaled to this side for inference."""

    # --- Batching ---
    max_batch_size: int = Field(
        32, ge=1, le=32, validation_alias=_env("max_batch_size")
    )
    max_batch_bytes: int = Field(
        96 * MiB, ge=1, validation_alias=_env("max_batch_bytes")
    )
    max_concurrent_batches: int = Field(
        4, ge=1, le=256, validation_alias=_env("max_concurrent_batches")
    )
    """Batches in flight at once: the number of backend containers."""
    latency_target_s: float = Field(
        2.0, gt=0, validation_alias=_env("latency_target_s")
    )
    """p99 end-to-end latency the batcher may spend waiting to fill batches."""
    batch_policy: Literal["adaptive", "greedy"] = Field(
        "adaptive", validation_alias=_env("batch_policy")
    )
    buffer_max_messages: int = Field(
        512, ge=1, validation_alias=_env("buffer_max_messages")
    )
    buffer_max_bytes: int = Field(
        64 * MiB, ge=MiB, validation_alias=_env("buffer_max_bytes")
    )
    """Image bytes waiting in the worker's batcher at most (a single larger image
    is still taken alone)."""
    commit_interval_s: float = Field(
        2.0, gt=0, le=60, validation_alias=_env("commit_interval_s")
    )
    shutdown_grace_s: float = Field(
        30.0, ge=0, validation_alias=_env("shutdown_grace_s")
    )

    # --- Requests and admission ---
    max_image_bytes: int = Field(
        50 * MiB, ge=1, validation_alias=_env("max_image_bytes")
    )
    max_filename_chars: int = Field(
        255, ge=1, le=4096, validation_alias=_env("max_filename_chars")
    )
    request_timeout_s: float = Field(
        1800.0, gt=0, validation_alias=_env("request_timeout_s")
    )
    max_concurrent_uploads: int = Field(
        16, ge=1, le=4096, validation_alias=_env("max_concurrent_uploads")
    )
    """Requests reading, checking and producing their image at once, per API
    process; the rest wait before their body is read, so memory stays flat."""
    queue_capacity: int = Field(10_000, ge=1, validation_alias=_env("queue_capacity"))
    backpressure_ratio: float = Field(
        0.83, gt=0, le=1, validation_alias=_env("backpressure_ratio")
    )
    result_ttl_s: int = Field(3600, ge=1, validation_alias=_env("result_ttl_s"))
    rate_limit_per_minute: int | None = Field(
        None, ge=1, validation_alias=_env("rate_limit_per_minute")
    )
    """Requests per client per minute; unset turns rate limiting off."""
    api_keys: list[SecretStr] = Field(
        default_factory=list, validation_alias=_env("api_keys")
    )
    """Accepted bearer tokens; empty turns authentication off."""

    # --- Logging ---
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env("log_level", "LOG_LEVEL")
    )
    log_format: Literal["json", "text"] = Field(
        "json", validation_alias=_env("log_format")
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("modal_api_endpoint", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = os.environ.get("CONFIG_PATH")
        if config_path:
            sources.append(
                YamlConfigSettingsSource(settings_cls, yaml_file=config_path)
            )
        return tuple(sources)

    @property
    def admission_threshold(self) -> int:
        """Depth from which new requests are refused with 503."""
        return max(1, int(self.queue_capacity * self.backpressure_ratio))

    def redacted(self) -> dict[str, Any]:
        """The effective config with secrets masked, fit for a log line."""
        data = self.model_dump(mode="python")
        for name, value in data.items():
            if isinstance(value, SecretStr):
                data[name] = "**********"
            elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
                data[name] = [f"**** ({len(value)} keys)"]
            elif isinstance(value, Path):
                data[name] = str(value)
        data["redis_url"] = mask_url(self.redis_url.get_secret_value())
        return data


def mask_url(url: str) -> str:
    """Replace the password of a URL with stars."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings, turning errors into one readable message."""
    config_path = os.environ.get("CONFIG_PATH")
    if config_path and not Path(config_path).is_file():
        msg = f"CONFIG_PATH={config_path!r} does not name a readable file"
        raise ConfigError(msg)
    unknown = sorted(
        name
        for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in _known_env()
    )
    if unknown:
        msg = (
            f"invalid configuration: unknown environment variable(s) {unknown}; "
            f"allowed {ENV_PREFIX}* names are {sorted(_known_env())}"
        )
        raise ConfigError(msg)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from None


def _known_env() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def describe_errors(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        value = error.get("input")
        if error["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {value!r}); check its spelling")
            continue
        shown = "****" if "password" in key or "key" in key else repr(value)
        lines.append(f"  {key}={shown}: {error['msg']}")
    return "\n".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def log_effective(settings: Settings, component: str) -> None:
    logger.info("config_loaded", extra={"component": component, **settings.redacted()})
