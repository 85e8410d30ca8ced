"""Settings from the environment: defaults, parsing, and one clear line per problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tagging_sidecar.config import GrpcMode, Ordering, Scaling, known_env_vars, load_settings
from tagging_sidecar.errors import ConfigError
from tagging_sidecar.settings_doc import documents, markdown_table, replace_block, variables

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
    assert s.pool.scaling is Scaling.ADAPTIVE
    assert s.pool.max_batch == 2048
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
    with pytest.raises(
        ConfigError, match="TAGGING_KAFKA__SASL_USERNAME, TAGGING_KAFKA__SASL_PASSWORD: required"
    ):
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


def test_topics_default_to_tagging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGING_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9093")
    settings = load_settings()
    assert settings.kafka.topics == ["tagging"]
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9093"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TAGGING_KAFKA__TOPICS": " , "}, "TAGGING_KAFKA__TOPICS"),
        ({"TAGGING_KAFKA__BOOTSTRAP_SERVERS": " "}, "TAGGING_KAFKA__BOOTSTRAP_SERVERS"),
        ({"TAGGING_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "TAGGING_KAFKA__SASL_MECHANISM"),
        (
            {"TAGGING_KAFKA__SASL_MECHANISM": "PLAIN", "TAGGING_KAFKA__SASL_USERNAME": "u"},
            "TAGGING_KAFKA__SASL_PASSWORD",
        ),
        (
            {"TAGGING_KAFKA__SASL_PASSWORD": "x", "TAGGING_KAFKA__SASL_PASSWORD_FILE": "/nope"},
            "TAGGING_KAFKA__SASL_PASSWORD_FILE",
        ),
        (
            {"TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "svc"},
            "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID",
        ),
        (
            {
                "TAGGING_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
                "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "svc",
                "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": "s",
                "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "idp/token",
            },
            "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        ),
        ({"TAGGING_KAFKA__PROPERTIES": '{"group.id": "x"}'}, "TAGGING_KAFKA__PROPERTIES"),
        ({"TAGGING_GRPC__CERT_FILE": "/nope"}, "TAGGING_GRPC__KEY_FILE"),
        ({"TAGGING_GRPC__CA_FILE": "/nope"}, "TAGGING_GRPC__CA_FILE"),
        (
            {"TAGGING_POOL__MIN_WORKERS": "9", "TAGGING_POOL__MAX_WORKERS": "4"},
            "TAGGING_POOL__MIN_WORKERS",
        ),
    ],
)
def test_every_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    known = known_env_vars()
    for problem in caught.value.problems:
        named = problem.split(":", 1)[0].split(", ")
        assert set(named) <= known, problem
    assert any(variable in p.split(":", 1)[0] for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("value", ["{bad", "[1, 2]", '{"fetch.min.bytes": [1]}', "7"])
def test_malformed_properties_are_one_line_and_exit_2(value: str) -> None:
    result = run_cli("check-config", env={"TAGGING_KAFKA__PROPERTIES": value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "invalid configuration:"
    assert len(lines) == 2, result.stderr
    assert lines[1].strip().startswith("TAGGING_KAFKA__PROPERTIES: "), result.stderr


def test_check_config_masks_secrets_given_as_properties() -> None:
    secrets = {
        "sasl.password": "pw-one",
        "ssl.key.password": "pw-two",
        "ssl.keystore.password": "pw-three",
        "sasl.oauthbearer.client.secret": "pw-four",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----pw-five",
        "sasl.oauthbearer.config": "principal=x secret=pw-six",
    }
    plain = {"fetch.min.bytes": 1024, "client.rack": "eu-1a"}
    result = run_cli(
        "check-config", env={"TAGGING_KAFKA__PROPERTIES": json.dumps({**secrets, **plain})}
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["kafka"]["properties"]
    assert shown == {**dict.fromkeys(secrets, "**********"), **plain}
    assert "pw-" not in result.stdout


def test_run_help_lists_every_variable() -> None:
    result = run_cli("run", "--help", env={})
    assert result.returncode == 0, result.stderr
    missing = sorted(name for name in known_env_vars() if name not in result.stdout)
    assert missing == []


@pytest.mark.parametrize("path", documents(Path(__file__).parents[2]), ids=lambda p: p.parent.name)
def test_generated_configuration_tables_are_current(path: Path) -> None:
    """README tables equal what scripts/gen_config_docs.py would write now."""
    text = path.read_text()
    assert replace_block(text) == text, f"run scripts/gen_config_docs.py to refresh {path}"


def test_generated_reference_follows_the_model() -> None:
    """A setting added to the model appears in the generated table, with its description."""
    table = markdown_table()
    for doc in variables():
        assert f"| `{doc.name}` |" in table
    assert {doc.name for doc in variables()} == known_env_vars()
    undescribed = [doc.name for doc in variables() if not doc.description.strip()]
    assert undescribed == [], "give these settings fields a description"
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert replace_block(readme, "| changed |") != readme


def test_a_whole_section_variable_is_one_problem_not_a_traceback() -> None:
    result = run_cli("check-config", env={"TAGGING_KAFKA": "not json"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "invalid configuration:",
        "  TAGGING_KAFKA: unknown setting (see the configuration table in the README)",
    ]


def test_reference_picks_up_settings_added_later() -> None:
    """A field someone adds to a section appears in the reference with no other change."""
    from pydantic import Field, create_model

    from tagging_sidecar.config import DecodeSettings, Settings

    decode = create_model(
        "DecodeWithTombstones",
        __base__=DecodeSettings,
        tombstones=(str, Field(default="skip", description="what a null value does")),
    )
    extended = create_model(
        "Extended", __base__=Settings, decode=(decode, Field(default_factory=decode))
    )
    [doc] = [d for d in variables(extended) if d.name == "TAGGING_DECODE__TOMBSTONES"]
    assert (doc.default, doc.description) == ("skip", "what a null value does")
