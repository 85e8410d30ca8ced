"""The settings model: every knob comes from a ``TAGGING_*`` environment variable.

Nested sections use ``__``: ``TAGGING_KAFKA__BOOTSTRAP_SERVERS`` sets ``kafka.bootstrap_servers``.
Invalid settings raise :class:`~tagging_sidecar.errors.ConfigError` with one line per problem and
never echo a secret's value.
"""

from __future__ import annotations

import json
import os
import re
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
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from tagging_sidecar.errors import ConfigError

ENV_PREFIX = "TAGGING_"
NESTED_DELIMITER = "__"
MASK = "**********"

# librdkafka property names whose values are credentials or key material.
_SECRET_PROPERTY = re.compile(
    r"password|secret|credential|private|\.pem$|oauthbearer\.config$", re.IGNORECASE
)


class SettingProblem(ValueError):
    """A validation problem of one or more fields of a section.

    ``fields`` are the culprits; the message may name other fields of the same section as
    ``{field_name}``. Both are turned into ``TAGGING_*`` variable names when reported.
    """

    def __init__(self, fields: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.fields = fields
        self.message = message


class Ordering(StrEnum):
    """Which records must reach the downstream in offset order."""

    KEY = "key"
    PARTITION = "partition"
    UNORDERED = "unordered"


class Scaling(StrEnum):
    """How the pool decides how many calls run at once."""

    ADAPTIVE = "adaptive"
    SEED = "seed"


class GrpcMode(StrEnum):
    """How records travel on the client stream."""

    BATCH = "batch"
    SINGLE = "single"


class SingleTransport(StrEnum):
    """Which client carries ``StreamMetric`` calls (one record per message)."""

    H2 = "h2"
    GRPCIO = "grpcio"


class InputFormat(StrEnum):
    """How record values are encoded in Kafka."""

    PROTOBUF = "protobuf"
    JSON = "json"


class TombstonePolicy(StrEnum):
    """What to do with a record whose value is null (a deletion on a compacted topic)."""

    SKIP = "skip"
    DEAD_LETTER = "dead-letter"
    STOP = "stop"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_file(path: Path | None, value: SecretStr | None, name: str) -> SecretStr | None:
    if path is None:
        return value
    if value is not None:
        raise SettingProblem((f"{name}_file",), f"set either {{{name}}} or this, not both")
    try:
        return SecretStr(path.read_text().strip())
    except OSError as exc:
        raise SettingProblem((f"{name}_file",), f"{path} cannot be read: {exc.strerror}") from None


def _filled(value: str | SecretStr | None) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is not None and value.strip() != ""


class KafkaSettings(_Section):
    """Where to read from, as which group, and how to reach the brokers."""

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="brokers")
    topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["tagging"], description="topics to read, comma separated"
    )
    group_id: str = Field(default="tagging-sidecar", description="consumer group")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="where a group with no committed offset starts (`earliest`/`latest`)",
    )
    consume_batch_size: int = Field(
        default=2000, ge=1, le=100_000, description="records per `consume()` call"
    )
    commit_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="seconds between asynchronous commits of the watermark",
    )
    commit_every: int = Field(
        default=100,
        ge=1,
        description="records settled since the last commit that trigger one before the "
        "interval is up",
    )
    max_uncommitted: int = Field(
        default=0,
        ge=0,
        description="records read and not yet covered by a commit that landed (in flight, or "
        "delivered and awaiting the commit) before the consumer stops reading: about the most a "
        "crash can deliver again; `0`: no bound beyond `TAGGING_POOL__MAX_INFLIGHT_RECORDS`",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = (
        Field(
            default=None,
            description="`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER`",
        )
    )
    sasl_username: str | None = Field(default=None, description="SASL user")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (secret)")
    sasl_password_file: Path | None = Field(
        default=None,
        description="file holding the SASL password (a mounted Kubernetes secret)",
    )
    ssl_ca_location: Path | None = Field(default=None, description="CA bundle for the brokers")
    ssl_certificate_location: Path | None = Field(
        default=None, description="client certificate (mTLS to Kafka)"
    )
    ssl_key_location: Path | None = Field(default=None, description="client key")
    ssl_key_password: SecretStr | None = Field(
        default=None, description="client key password (secret)"
    )
    ssl_key_password_file: Path | None = Field(
        default=None, description="file holding the key password"
    )
    # OAUTHBEARER through OIDC client credentials: librdkafka fetches and refreshes the token.
    sasl_oauthbearer_client_id: str | None = Field(
        default=None,
        description="OIDC client id for `OAUTHBEARER` (client credentials: the sidecar fetches "
        "and refreshes its own token)",
    )
    sasl_oauthbearer_client_secret: SecretStr | None = Field(
        default=None, description="OIDC client secret (secret)"
    )
    sasl_oauthbearer_client_secret_file: Path | None = Field(
        default=None,
        description="file holding the OIDC client secret (a mounted Kubernetes secret)",
    )
    sasl_oauthbearer_token_endpoint_url: str | None = Field(
        default=None,
        description="the identity provider's token endpoint (`https://…`); `OAUTHBEARER` "
        "requires the client id, the secret and this URL",
    )
    sasl_oauthbearer_scope: str | None = Field(
        default=None, description="scope to request (optional; otherwise the provider's default)"
    )
    properties: Annotated[dict[str, str | int | float | bool], NoDecode] = Field(
        default_factory=dict,
        description="JSON object of any other librdkafka consumer property, e.g. "
        '`{"fetch.min.bytes": 1024}`; `group.id`, `bootstrap.servers` and the commit settings '
        "are managed and refused here; values of secret-looking keys (`*password*`, "
        "`*secret*`, `*.pem`, ...) are masked by `check-config`",
    )

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
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"must be a JSON object of librdkafka properties ({exc.msg})"
                ) from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of librdkafka properties")
        wrong = sorted(
            key
            for key, item in value.items()
            if not isinstance(item, str | int | float | bool) or item is None
        )
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: each value must be a string, number or boolean")
        return value

    @model_validator(mode="after")
    def _check(self) -> KafkaSettings:
        if not self.topics:
            raise SettingProblem(("topics",), "at least one topic is required (comma separated)")
        if not self.bootstrap_servers.strip():
            raise SettingProblem(("bootstrap_servers",), "must not be empty")
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
            raise SettingProblem(
                ("sasl_mechanism",),
                f"required when {{security_protocol}} is {self.security_protocol}",
            )
        if self.sasl_mechanism in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}:
            missing = tuple(
                name for name in ("sasl_username", "sasl_password") if getattr(self, name) is None
            )
            if missing:
                raise SettingProblem(
                    missing,
                    f"required for {{sasl_mechanism}}={self.sasl_mechanism} "
                    "(the password may also come from {sasl_password_file})",
                )
        self._check_oauthbearer()
        managed = {
            "group.id",
            "bootstrap.servers",
            "enable.auto.commit",
            "enable.auto.offset.store",
        }
        clash = sorted(managed & set(self.properties))
        if clash:
            raise SettingProblem(("properties",), f"{', '.join(clash)} are managed by the sidecar")
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
            stray = tuple(name for name, value in given.items() if value is not None)
            if stray:
                raise SettingProblem(stray, "only used with {sasl_mechanism}=OAUTHBEARER")
            return
        required = ("client_id", "client_secret", "token_endpoint_url")
        missing = [
            f"sasl_oauthbearer_{name}"
            for name in required
            if not _filled(given[f"sasl_oauthbearer_{name}"])
        ]
        if missing:
            raise SettingProblem(
                tuple(missing), "required for OAUTHBEARER (OIDC client credentials)"
            )
        url = urlsplit(self.sasl_oauthbearer_token_endpoint_url or "")
        if url.scheme not in {"https", "http"} or not url.netloc:
            raise SettingProblem(
                ("sasl_oauthbearer_token_endpoint_url",), "must be an https:// (or http://) URL"
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

    target: str = Field(
        default="127.0.0.1:50051",
        description="the Havilah server (`localhost:PORT` in sidecar mode)",
    )
    mode: GrpcMode = Field(
        default=GrpcMode.BATCH,
        description="`batch`: `StreamMetricBatch` with many records per message (falls back to "
        "`single` if the server answers `UNIMPLEMENTED`); `single`: `StreamMetric`, one record "
        "per message",
    )
    single_transport: SingleTransport = Field(
        default=SingleTransport.H2,
        description="client of `StreamMetric` calls: `h2` writes all messages of a call at once "
        "on the sidecar's own HTTP/2 connection (far less CPU per record); `grpcio` writes one "
        "message at a time through grpcio",
    )
    timeout: float = Field(
        default=10.0, gt=0, le=3600, description="deadline of one call, in seconds"
    )
    max_message_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="the largest gRPC message; larger records are rejected at decode time",
    )
    tls: bool = Field(default=False, description="use TLS to the server")
    ca_file: Path | None = Field(default=None, description="CA certificate to verify the server")
    cert_file: Path | None = Field(default=None, description="client certificate (mTLS)")
    key_file: Path | None = Field(default=None, description="client key (mTLS)")
    retry_initial_backoff: float = Field(
        default=0.1,
        gt=0,
        description="first retry delay, in seconds (doubles each attempt, with jitter)",
    )
    retry_max_backoff: float = Field(
        default=10.0, gt=0, description="longest retry delay, in seconds"
    )
    max_attempts: int = Field(
        default=0,
        ge=0,
        description="attempts per batch for retryable errors the server answers (our own "
        "deadline and local failures do not count); `0` retries until shutdown",
    )

    @model_validator(mode="after")
    def _check(self) -> GrpcSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise SettingProblem(("cert_file", "key_file"), "set both for mTLS, or neither")
        files = tuple(n for n in ("ca_file", "cert_file", "key_file") if getattr(self, n))
        if not self.tls and files:
            raise SettingProblem(files, "need {tls}=true")
        for name in files:
            path = getattr(self, name)
            if not path.is_file():
                raise SettingProblem((name,), f"{path} is not a readable file")
        return self


class PoolSettings(_Section):
    """The adaptive worker pool."""

    min_workers: int = Field(default=1, ge=0, le=1024, description="workers kept even when idle")
    max_workers: int = Field(default=32, ge=1, le=1024, description="most workers")
    scaling: Scaling = Field(
        default=Scaling.ADAPTIVE,
        description="`adaptive`: calls in flight follow a limit learned from the downstream's "
        "throughput, one call while that keeps up, each carrying up to `max_batch` records; "
        "`seed`: the seed's rule, a worker per `queue_size / max_workers` records of backlog, "
        "batches of up to `queue_size`",
    )
    queue_size: int = Field(
        default=128,
        ge=1,
        le=1_000_000,
        description="records queued per worker; under `seed` scaling also the largest batch",
    )
    max_batch: int = Field(
        default=2048,
        ge=1,
        le=1_000_000,
        description="under `adaptive` scaling, the most records one call carries; a worker's "
        "queue holds as many",
    )
    idle_timeout: float = Field(
        default=30.0, gt=0, description="seconds without work before a worker stops"
    )
    ordering: Ordering = Field(
        default=Ordering.KEY,
        description="`key`: same Kafka key (or same partition for keyless records) in offset "
        "order; `partition`; `unordered`",
    )
    linger: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="while fewer than 128 records wait for a worker (or the largest batch, if "
        "smaller), the oldest of them waits this many seconds for more, counted from its "
        "arrival and including any wait for a free call; a live trickle would otherwise make "
        "one call per record. While records are in flight, the poll loop gathers a trickle for "
        "as long (at most 5 ms) and what it gathered has lingered (`0`: send at once)",
    )
    call_on_poll: bool = Field(
        default=True,
        description="under `adaptive` scaling: while the consumer has read everything ready, "
        "no call is in flight and the last call took under 50 ms, the poll loop makes the "
        "call itself (one attempt; a failed call goes to the workers) instead of handing the "
        "records to a worker, saving each record a thread switch. `false`: always a worker",
    )
    max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="payload bytes consumed and not yet delivered before the consumer pauses "
        "(bounded memory)",
    )
    max_inflight_records: int = Field(
        default=20_000, ge=1, description="records in flight before the consumer stops reading"
    )

    @model_validator(mode="after")
    def _check(self) -> PoolSettings:
        if self.min_workers > self.max_workers:
            raise SettingProblem(("min_workers",), "must not exceed {max_workers}")
        return self


class DecodeSettings(_Section):
    """How record values are decoded."""

    format: InputFormat = Field(
        default=InputFormat.PROTOBUF,
        description="record value format: `protobuf` (serialized `Tagging`) or `json` "
        "(proto3 JSON)",
    )
    tombstones: TombstonePolicy = Field(
        default=TombstonePolicy.SKIP,
        description="null-value records (deletions on compacted topics): `skip` (counted in "
        "`records_skipped_total` and committed), `dead-letter`, or `stop` the partition",
    )


class DlqSettings(_Section):
    """Where records that cannot be delivered go; empty topic means none."""

    topic: str = Field(
        default="",
        description="dead-letter topic; if unset, an undeliverable record stops its partition",
    )
    truncate_to: int = Field(
        default=512 * 1024,
        ge=1024,
        description="a dead letter the broker refuses whole is written again cut to this many "
        "bytes, its original size in the `tagging.original.size` header",
    )


class LogSettings(_Section):
    """Log output."""

    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="`json`, `console`, or `auto` (JSON unless stderr is a terminal)",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="`DEBUG` also logs which worker takes which batch"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class HttpSettings(_Section):
    """The health and metrics endpoint."""

    host: str = Field(
        default="127.0.0.1",
        description="address of `/startupz`, `/livez`, `/readyz`, `/metrics` (`0.0.0.0` in a pod)",
    )
    port: int = Field(
        default=8080, ge=0, le=65535, description="port of the same (`0`: any free port)"
    )


class ShutdownSettings(_Section):
    """Graceful shutdown."""

    grace_period: float = Field(
        default=20.0,
        gt=0,
        le=600,
        description="seconds to drain on SIGTERM, or on revoke, before giving up",
    )


class HealthSettings(_Section):
    """Readiness rules."""

    stall_timeout: float = Field(
        default=120.0,
        gt=0,
        description="`/readyz` fails when the watermark has not moved for this long while "
        "records are in flight",
    )


class Settings(BaseSettings):
    """Every setting of the sidecar, read from ``TAGGING_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="consumer processes of the same group inside one sidecar (one core each)",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    grpc: GrpcSettings = Field(default_factory=GrpcSettings)
    pool: PoolSettings = Field(default_factory=PoolSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    dlq: DlqSettings = Field(default_factory=DlqSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets shown as ``**********``.

        Secret fields are masked by their type; librdkafka properties by their name, since
        ``TAGGING_KAFKA__PROPERTIES`` can carry any credential librdkafka knows.
        """
        data = self.model_dump(mode="json")
        properties = data["kafka"]["properties"]
        for key in properties:
            if _SECRET_PROPERTY.search(key):
                properties[key] = MASK
        return data


def env_name(*path: str) -> str:
    """The environment variable of a settings path: ``("kafka", "topics")`` is
    ``TAGGING_KAFKA__TOPICS``."""
    return ENV_PREFIX + NESTED_DELIMITER.join(path).upper()


class _VariableNames(dict[str, str]):
    """``str.format_map`` helper: ``{field}`` becomes that field's variable in a section."""

    def __init__(self, section: list[str]) -> None:
        super().__init__()
        self._section = section

    def __missing__(self, field: str) -> str:
        return env_name(*self._section, field)


def _problem_lines(error: ValidationError) -> list[str]:
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        loc = [str(part) for part in item["loc"]]
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, SettingProblem):
            names = _VariableNames(loc)
            culprits = ", ".join(names[field] for field in cause.fields)
            lines.append(f"{culprits}: {cause.message.format_map(names)}")
            continue
        name = env_name(*loc) if loc else "settings"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return lines


def _unreadable(exc: SettingsError) -> str:
    # pydantic-settings names the field it could not parse, never the value.
    found = re.search(r'field "(\w+)"', str(exc))
    name = env_name(found.group(1)) if found else "settings"
    return f"{name}: cannot be read as a value of this setting"


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
    except SettingsError as exc:
        unreadable = _unreadable(exc)
        if unreadable.split(":", 1)[0] in {line.split(":", 1)[0] for line in problems}:
            raise ConfigError(problems) from None
        raise ConfigError([*problems, unreadable]) from None
    except ValidationError as exc:
        reported = {line.split(":", 1)[0] for line in problems}
        extra = [line for line in _problem_lines(exc) if line.split(":", 1)[0] not in reported]
        raise ConfigError(problems + extra) from None
    if problems:
        raise ConfigError(problems)
    return settings


def _leaf_names(model: type[BaseModel], path: tuple[str, ...]) -> set[str]:
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _leaf_names(annotation, (*path, field_name))
        else:
            names.add(env_name(*path, field_name))
    return names


def known_env_vars() -> set[str]:
    """Every environment variable name the settings model reads (nested sections included)."""
    return _leaf_names(Settings, ())


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
