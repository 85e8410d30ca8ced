"""Settings from the environment: defaults, parsing, and one clear line per problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tagging_sidecar.config import GrpcMode, Ordering, known_env_vars, load_settings
from tagging_sidecar.errors import ConfigError

from ..support.cli import run_cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("TAGGING_"):
            monkeypatch.delenv(name)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGING_KAFKA__TOPICS", "tagging")
    s = load_settings()
    assert s.pool.max_workers == 32
    assert s.pool.queue_size == 128
    assert s.pool.ordering is Ordering.KEY
    assert s.grpc.mode is GrpcMode.BATCH
    assert s.kafka.group_id == "tagging-sidecar"


def test_nested_variables_and_passthrough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGING_KAFKA__TOPICS", " a, b ,")
    monkeypatch.setenv("TAGGING_POOL__MAX_WORKERS", "8")
    monkeypatch.setenv("TAGGING_POOL__IDLE_TIMEOUT", "2.5")
    monkeypatch.setenv("TAGGING_KAFKA__PROPERTIES", '{"fetch.min.bytes": 1024}')
    s = load_settings()
    assert s.kafka.topics == ["a", "b"]
    assert s.pool.max_workers == 8
    assert s.pool.idle_timeout == 2.5
    assert s.kafka.properties == {"fetch.min.bytes": 1024}


def test_every_problem_is_listed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGING_KAFKA__TOPICS", "t")
    monkeypatch.setenv("TAGGING_POOL__MAX_WORKERS", "0")
    monkeypatch.setenv("TAGGING_GRPC__MODE", "fast")
    monkeypatch.setenv("TAGGING_POOL__MAX_WORKRES", "3")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    problems = caught.value.problems
    assert len(problems) == 3
    assert any(p.startswith("TAGGING_POOL__MAX_WORKERS:") for p in problems)
    assert any(p.startswith("TAGGING_GRPC__MODE:") for p in problems)
    assert any(p.startswith("TAGGING_POOL__MAX_WORKRES: unknown setting") for p in problems)


def test_sasl_needs_credentials_and_managed_keys_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TAGGING_KAFKA__TOPICS", "t")
    monkeypatch.setenv("TAGGING_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TAGGING_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    with pytest.raises(ConfigError, match="sasl_username and sasl_password"):
        load_settings()
    monkeypatch.delenv("TAGGING_KAFKA__SECURITY_PROTOCOL")
    monkeypatch.delenv("TAGGING_KAFKA__SASL_MECHANISM")
    monkeypatch.setenv("TAGGING_KAFKA__PROPERTIES", '{"enable.auto.commit": true}')
    with pytest.raises(ConfigError, match="managed by the sidecar"):
        load_settings()


def test_secret_from_file_is_read_and_masked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-value\n")
    monkeypatch.setenv("TAGGING_KAFKA__TOPICS", "t")
    monkeypatch.setenv("TAGGING_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("TAGGING_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("TAGGING_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("TAGGING_KAFKA__SASL_PASSWORD_FILE", str(secret))
    s = load_settings()
    assert s.kafka.librdkafka_security()["sasl.password"] == "s3cr3t-value"
    assert "s3cr3t-value" not in json.dumps(s.masked())


def test_known_env_vars_cover_the_documented_names() -> None:
    names = known_env_vars()
    for name in (
        "TAGGING_KAFKA__BOOTSTRAP_SERVERS",
        "TAGGING_KAFKA__TOPICS",
        "TAGGING_KAFKA__GROUP_ID",
        "TAGGING_GRPC__TARGET",
        "TAGGING_POOL__MAX_WORKERS",
        "TAGGING_POOL__QUEUE_SIZE",
        "TAGGING_POOL__IDLE_TIMEOUT",
        "TAGGING_DECODE__FORMAT",
        "TAGGING_LOG__FORMAT",
        "TAGGING_LOG__LEVEL",
        "TAGGING_PROCESSES",
    ):
        assert name in names


def test_readme_documents_every_variable() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    missing = sorted(name for name in known_env_vars() if f"`{name}`" not in readme)
    assert missing == []


def test_invalid_config_exits_2_before_connecting_and_hides_secrets() -> None:
    env = {
        "TAGGING_KAFKA__TOPICS": "t",
        # Nothing listens here: a connection attempt would hang or log, not exit at once.
        "TAGGING_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "TAGGING_KAFKA__SASL_PASSWORD": "hunter2-secret",
        "TAGGING_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "TAGGING_POOL__MIN_WORKERS": "40",
    }
    result = run_cli("run", env=env)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "TAGGING_KAFKA" in output
    assert "hunter2-secret" not in output
    assert "Traceback" not in output


def test_check_config_prints_effective_settings_masked() -> None:
    env = {
        "TAGGING_KAFKA__TOPICS": "a,b",
        "TAGGING_KAFKA__SASL_USERNAME": "svc",
        "TAGGING_KAFKA__SASL_PASSWORD": "hunter2-secret",
    }
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["kafka"]["topics"] == ["a", "b"]
    assert shown["kafka"]["sasl_password"] == "**********"
    assert "hunter2-secret" not in result.stdout


def test_a_busy_http_port_is_a_clear_error_not_a_traceback() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "run",
            env={
                "TAGGING_KAFKA__TOPICS": "t",
                "TAGGING_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
                "TAGGING_HTTP__PORT": str(port),
                "TAGGING_LOG__FORMAT": "json",
            },
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "TAGGING_HTTP__PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_foreign_prefixed_names_are_left_alone_but_own_typos_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kubernetes Service links of a release called ``tagging`` share the prefix: not ours."""
    for name, value in {
        "TAGGING_TAGGING_SIDECAR_SERVICE_HOST": "127.0.0.1",
        "TAGGING_TAGGING_SIDECAR_PORT": "tcp://127.0.0.1:8080",
        "TAGGING_TAGGING_SIDECAR_PORT_8080_TCP_ADDR": "127.0.0.1",
        "TAGGING_KAFKA_SERVICE_HOST": "127.0.0.1",
        "TAGGING_PROCESSES_PORT": "tcp://127.0.0.1:80",
    }.items():
        monkeypatch.setenv(name, value)
    assert load_settings().processes == 1
    monkeypatch.setenv("TAGGING_KAFKA__TOPIX", "t")
    monkeypatch.setenv("TAGGING_PROCESSES", "2")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.problems == [
        "TAGGING_KAFKA__TOPIX: unknown setting (see the configuration table in the README)"
    ]
