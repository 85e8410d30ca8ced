"""The settings model: every knob comes from a ``TAGGING_*`` environment variable.

Nested sections use ``__``: ``TAGGING_KAFKA__BOOTSTRAP_SERVERS`` sets ``kafka.bootstrap_servers``.
Invalid settings raise :class:`~tagging_sidecar.errors.ConfigError` with one line per problem and
never echo a secret's value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tagging_sidecar.errors import ConfigError

ENV_PREFIX = "TAGGING_"
NESTED_DELIMITER = "__"


class Ordering(StrEnum):
    """Which records must reach the downstream in offset order."""

    KEY = "key"
    PARTITION = "partition"
    UNORDERED = "unordered"


class GrpcMode(StrEnum):
    """How records travel on the client stream."""

    BATCH = "batch"
    SINGLE = "single"


class InputFormat(StrEnum):
    """How record values are encoded in Kafka."""

    PROTOBUF = "protobuf"
    JSON = "json"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_file(path: Path | None, value: SecretStr | None, name: str) -> SecretStr | None:
    if path is None:
        return value
    if value is not None:
        raise ValueError(f"set either {name} or {name}_file, not both")
    try:
        return SecretStr(path.read_text().strip())
    except OSError as exc:
        raise ValueError(f"{name}_file {path} cannot be read: {exc.strerror}") from None


def _filled(value: str | SecretStr | None) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and value.strip() != ""


class KafkaSettings(_Section):
    """Where to read from, as which group, and how to reach the brokers."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topics: Annotated[list[str], NoDecode] = Field(default_factory=list)
    group_id: str = "tagging-sidecar"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    consume_batch_size: int = Field(default=2000, ge=1, le=100_000)
    commit_interval: float = Field(default=1.0, gt=0, le=60)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: Path | None = None
    # OAUTHBEARER through OIDC client credentials: librdkafka fetches and refreshes the token.
    sasl_oauthbearer_client_id: str | None = None
    sasl_oauthbearer_client_secret: SecretStr | None = None
    sasl_oauthbearer_client_secret_file: Path | None = None
    sasl_oauthbearer_token_endpoint_url: str | None = None
    sasl_oauthbearer_scope: str | None = None
    properties: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("properties", mode="before")
    @classmethod
    def _parse_properties(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"must be a JSON object of librdkafka properties ({exc.msg})"
                ) from None
        return value

    @model_validator(mode="after")
    def _check(self) -> KafkaSettings:
        if not self.topics:
            raise ValueError("topics: at least one topic is required (comma separated)")
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers: must not be empty")
        object.__setattr__(
            self,
            "sasl_password",
            _read_secret_file(self.sasl_password_file, self.sasl_password, "sasl_password"),
        )
        object.__setattr__(
            self,
            "ssl_key_password",
            _read_secret_file(
                self.ssl_key_password_file, self.ssl_key_password, "ssl_key_password"
            ),
        )
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError("sasl_mechanism: required when security_protocol is SASL_*")
        if self.sasl_mechanism in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"} and (
            self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError(f"sasl_username and sasl_password: required for {self.sasl_mechanism}")
        self._check_oauthbearer()
        managed = {
            "group.id",
            "bootstrap.servers",
            "enable.auto.commit",
            "enable.auto.offset.store",
        }
        clash = sorted(managed & set(self.properties))
        if clash:
            raise ValueError(f"properties: {', '.join(clash)} are managed by the sidecar")
        return self

    def _check_oauthbearer(self) -> None:
        object.__setattr__(
            self,
            "sasl_oauthbearer_client_secret",
            _read_secret_file(
                self.sasl_oauthbearer_client_secret_file,
                self.sasl_oauthbearer_client_secret,
                "sasl_oauthbearer_client_secret",
            ),
        )
        given = {
            "sasl_oauthbearer_client_id": self.sasl_oauthbearer_client_id,
            "sasl_oauthbearer_client_secret": self.sasl_oauthbearer_client_secret,
            "sasl_oauthbearer_token_endpoint_url": self.sasl_oauthbearer_token_endpoint_url,
            "sasl_oauthbearer_scope": self.sasl_oauthbearer_scope,
        }
        if self.sasl_mechanism != "OAUTHBEARER":
            if any(value is not None for value in given.values()):
                raise ValueError("sasl_oauthbearer_*: only used with sasl_mechanism=OAUTHBEARER")
            return
        required = ("client_id", "client_secret", "token_endpoint_url")
        missing = [
            f"sasl_oauthbearer_{name}"
            for name in required
            if not _filled(given[f"sasl_oauthbearer_{name}"])
        ]
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: required for OAUTHBEARER (OIDC client credentials)"
            )
        url = urlsplit(self.sasl_oauthbearer_token_endpoint_url or "")
        if url.scheme not in {"https", "http"} or not url.netloc:
            raise ValueError(
                "sasl_oauthbearer_token_endpoint_url: must be an https:// (or http://) URL"
            )

    def librdkafka_security(self) -> dict[str, str]:
        """The security part of the librdkafka configuration (contains secrets: never log it)."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol.lower()}
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username is not None:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        for key, path in (
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
        ):
            if path is not None:
                conf[key] = str(path)
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        if self.sasl_mechanism == "OAUTHBEARER":
            # Validated in _check: client id, secret and token endpoint are all set.
            assert self.sasl_oauthbearer_client_id is not None
            assert self.sasl_oauthbearer_client_secret is not None
            assert self.sasl_oauthbearer_token_endpoint_url is not None
            conf["sasl.oauthbearer.method"] = "oidc"
            conf["sasl.oauthbearer.client.id"] = self.sasl_oauthbearer_client_id
            conf["sasl.oauthbearer.client.secret"] = (
                self.sasl_oauthbearer_client_secret.get_secret_value()
            )
            conf["sasl.oauthbearer.token.endpoint.url"] = self.sasl_oauthbearer_token_endpoint_url
            if self.sasl_oauthbearer_scope:
                conf["sasl.oauthbearer.scope"] = self.sasl_oauthbearer_scope
        return conf


class GrpcSettings(_Section):
    """How to reach the downstream Havilah service."""

    target: str = "127.0.0.1:50051"
    mode: GrpcMode = GrpcMode.BATCH
    timeout: float = Field(default=10.0, gt=0, le=3600, description="deadline of one call, seconds")
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    retry_initial_backoff: float = Field(default=0.1, gt=0)
    retry_max_backoff: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=0, ge=0, description="0 retries retryable errors forever")

    @model_validator(mode="after")
    def _check(self) -> GrpcSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: set both for mTLS, or neither")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file/key_file: need tls=true")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self


class PoolSettings(_Section):
    """The adaptive worker pool."""

    min_workers: int = Field(default=1, ge=0, le=1024)
    max_workers: int = Field(default=32, ge=1, le=1024)
    queue_size: int = Field(
        default=128, ge=1, le=1_000_000, description="records queued per worker"
    )
    idle_timeout: float = Field(
        default=30.0, gt=0, description="seconds idle before a worker stops"
    )
    ordering: Ordering = Ordering.KEY
    linger: float = Field(
        default=0.005, ge=0, le=1, description="seconds a worker waits to fill a small batch"
    )
    max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="payload bytes in flight before pausing"
    )

    @model_validator(mode="after")
    def _check(self) -> PoolSettings:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers: must not exceed max_workers")
        return self


class DecodeSettings(_Section):
    """How record values are decoded."""

    format: InputFormat = InputFormat.PROTOBUF


class DlqSettings(_Section):
    """Where records that cannot be delivered go; empty topic means none."""

    topic: str = ""


class LogSettings(_Section):
    """Log output."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class HttpSettings(_Section):
    """The health and metrics endpoint."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class ShutdownSettings(_Section):
    """Graceful shutdown."""

    grace_period: float = Field(
        default=20.0, gt=0, le=600, description="seconds to drain on SIGTERM"
    )


class HealthSettings(_Section):
    """Readiness rules."""

    stall_timeout: float = Field(default=120.0, gt=0)


class Settings(BaseSettings):
    """Every setting of the sidecar, read from ``TAGGING_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    processes: int = Field(default=1, ge=1, le=64)
    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings(topics=["tagging"]))
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    dlq: DlqSettings = Field(default_factory=DlqSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets shown as ``**********``."""
        return self.model_dump(mode="json")


def _problem_lines(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        loc = [str(part) for part in item["loc"]]
        name = ENV_PREFIX + NESTED_DELIMITER.join(loc).upper() if loc else "settings"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return lines


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings from the environment; raise ConfigError listing every problem.

    An unknown variable of the sidecar's own form is a problem too: a typo must not silently fall
    back to a default. Other ``TAGGING_*`` names are left alone (see :func:`is_own_form`).
    """
    env = os.environ if environ is None else environ
    known = known_env_vars()
    problems = [
        f"{name}: unknown setting (see the configuration table in the README)"
        for name in sorted(env)
        if is_own_form(name) and name.upper() not in known
    ]
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        reported = {line.split(":", 1)[0] for line in problems}
        extra = [line for line in _problem_lines(exc) if line.split(":", 1)[0] not in reported]
        raise ConfigError(problems + extra) from None
    if problems:
        raise ConfigError(problems)
    return settings


def known_env_vars() -> set[str]:
    """Every environment variable name the settings model reads."""
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub in annotation.model_fields:
                names.add(f"{ENV_PREFIX}{field_name}{NESTED_DELIMITER}{sub}".upper())
        else:
            names.add(f"{ENV_PREFIX}{field_name}".upper())
    return names


def _sections() -> set[str]:
    return {
        name
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


def is_own_form(name: str) -> bool:
    """Whether ``name`` is shaped like one of the sidecar's variables.

    That is a known section followed by ``__`` (``TAGGING_KAFKA__...``), or exactly a section or
    top-level name (``TAGGING_PROCESSES``). Other ``TAGGING_*`` names belong to someone else:
    Kubernetes injects ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT_8080_TCP_ADDR`` and the like
    for every Service in the namespace, and a release called ``tagging`` makes those start with
    the prefix too.
    """
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX):
        return False
    rest = upper.removeprefix(ENV_PREFIX)
    if rest.lower() in Settings.model_fields:
        return True
    head, delimiter, _ = rest.partition(NESTED_DELIMITER)
    return delimiter != "" and head.lower() in _sections()
