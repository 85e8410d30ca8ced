"""Security settings: OAUTHBEARER (OIDC client credentials) mapped to librdkafka, validated with
one clear line per problem, and its secret never shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from tagging_sidecar.config import known_env_vars, load_settings
from tagging_sidecar.errors import ConfigError
from tagging_sidecar.kafka.config import consumer_config, producer_config

from ..support.cli import run_cli

SECRET = "oidc-client-secret-7c41e9"
OAUTH = {
    "TAGGING_KAFKA__TOPICS": "t",
    "TAGGING_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
    "TAGGING_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
    "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "tagging-sidecar",
    "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": SECRET,
    "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp.example/oauth2/token",
    "TAGGING_KAFKA__SASL_OAUTHBEARER_SCOPE": "kafka",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TAGGING_"):
            monkeypatch.delenv(name)


def _set(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _problems(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> list[str]:
    _set(monkeypatch, env)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    problems = caught.value.problems
    assert SECRET not in str(caught.value)
    assert all(SECRET not in line for line in problems)
    return problems


def test_the_oauthbearer_variables_are_settings() -> None:
    names = known_env_vars()
    for name in OAUTH:
        assert name in names
    assert "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE" in names


def test_oauthbearer_maps_to_librdkafka_oidc(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, OAUTH)
    security = load_settings().kafka.librdkafka_security()
    assert security == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "OAUTHBEARER",
        "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.client.id": "tagging-sidecar",
        "sasl.oauthbearer.client.secret": SECRET,
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/oauth2/token",
        "sasl.oauthbearer.scope": "kafka",
    }


def test_scope_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(OAUTH)
    del env["TAGGING_KAFKA__SASL_OAUTHBEARER_SCOPE"]
    _set(monkeypatch, env)
    security = load_settings().kafka.librdkafka_security()
    assert "sasl.oauthbearer.scope" not in security
    assert security["sasl.oauthbearer.method"] == "oidc"


def test_the_dead_letter_producer_authenticates_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _set(monkeypatch, OAUTH)
    kafka = load_settings().kafka
    for conf in (consumer_config(kafka, "c"), producer_config(kafka, "p")):
        assert conf["sasl.oauthbearer.method"] == "oidc"
        assert conf["sasl.oauthbearer.client.secret"] == SECRET


def test_librdkafka_accepts_the_mapped_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt property name would make librdkafka refuse to create the client."""
    env = dict(OAUTH)
    # Nothing listens on the discard port: the token fetch fails at once, nothing leaves the host.
    env["TAGGING_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:9"
    env["TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"] = "http://127.0.0.1:9/token"
    _set(monkeypatch, env)
    consumer = Consumer(consumer_config(load_settings().kafka, "unit-test"), logger=None)
    consumer.close()


def test_secret_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(SECRET + "\n")
    env = dict(OAUTH)
    del env["TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET"]
    env["TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE"] = str(secret_file)
    _set(monkeypatch, env)
    settings = load_settings()
    assert settings.kafka.librdkafka_security()["sasl.oauthbearer.client.secret"] == SECRET
    assert SECRET not in json.dumps(settings.masked())


def test_secret_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, OAUTH)
    settings = load_settings()
    shown = settings.masked()
    assert shown["kafka"]["sasl_oauthbearer_client_secret"] == "**********"
    assert shown["kafka"]["sasl_oauthbearer_client_id"] == "tagging-sidecar"
    assert SECRET not in json.dumps(shown)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.kafka)


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        (["CLIENT_ID"], "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID"),
        (["CLIENT_SECRET"], "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET"),
        (["TOKEN_ENDPOINT_URL"], "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"),
        (
            ["CLIENT_ID", "TOKEN_ENDPOINT_URL"],
            "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID, "
            "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
        ),
    ],
)
def test_missing_oidc_fields_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, unset: list[str], named: str
) -> None:
    prefix = "TAGGING_KAFKA__SASL_OAUTHBEARER_"
    env = {k: v for k, v in OAUTH.items() if k.removeprefix(prefix) not in unset}
    problems = _problems(monkeypatch, env)
    assert problems == [f"{named}: required for OAUTHBEARER (OIDC client credentials)"]


def test_blank_values_count_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**OAUTH, "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "  "}
    (problem,) = _problems(monkeypatch, env)
    assert problem.startswith("TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID: required for OAUTHBEARER")


def test_secret_and_secret_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("another-value\n")
    env = {**OAUTH, "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE": str(secret_file)}
    (problem,) = _problems(monkeypatch, env)
    assert problem == (
        "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE: set either "
        "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET or this, not both"
    )
    assert "another-value" not in problem


def test_unreadable_secret_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = dict(OAUTH)
    del env["TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET"]
    env["TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE"] = str(tmp_path / "absent")
    (problem,) = _problems(monkeypatch, env)
    assert problem.startswith("TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE: ")
    assert "cannot be read" in problem


def test_token_endpoint_must_be_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**OAUTH, "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "idp.example/token"}
    (problem,) = _problems(monkeypatch, env)
    assert problem.startswith("TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL: must be")


@pytest.mark.parametrize("mechanism", [None, "SCRAM-SHA-512"])
def test_oidc_fields_without_oauthbearer_are_refused(
    monkeypatch: pytest.MonkeyPatch, mechanism: str | None
) -> None:
    env = dict(OAUTH)
    del env["TAGGING_KAFKA__SASL_MECHANISM"]
    env["TAGGING_KAFKA__SECURITY_PROTOCOL"] = "SSL"
    if mechanism is not None:
        env |= {
            "TAGGING_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "TAGGING_KAFKA__SASL_MECHANISM": mechanism,
            "TAGGING_KAFKA__SASL_USERNAME": "u",
            "TAGGING_KAFKA__SASL_PASSWORD": "p",
        }
    (problem,) = _problems(monkeypatch, env)
    assert problem.startswith("TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID, ")
    assert problem.endswith(": only used with TAGGING_KAFKA__SASL_MECHANISM=OAUTHBEARER")


def test_other_problems_never_echo_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        **OAUTH,
        "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "",
        "TAGGING_POOL__MIN_WORKERS": "40",
        "TAGGING_POOL__MAX_WORKERS": "4",
    }
    problems = _problems(monkeypatch, env)
    assert len(problems) == 2


def test_check_config_and_invalid_config_never_print_the_secret() -> None:
    shown = run_cli("check-config", env=OAUTH)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["kafka"]["sasl_oauthbearer_client_secret"] == "**********"
    assert SECRET not in shown.stdout + shown.stderr
    refused = run_cli(
        "run", env={**OAUTH, "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "nonsense"}
    )
    assert refused.returncode == 2
    assert "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL: must be" in refused.stderr
    assert SECRET not in refused.stdout + refused.stderr
