"""The KEDA objects the chart renders, checked against KEDA's CRD schemas and the kafka scaler.

The schemas under ``data/keda/`` are written from KEDA's CRD definitions (see the README
there). Beyond the CRD, the kafka scaler refuses to start without the credentials its ``sasl``
mode needs, which a schema cannot express; that is checked here in code.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy.support import (
    CONTAINER,
    Rendered,
    helm,
    helm_template,
    values_sets,
)

pytestmark = pytest.mark.deploy

DATA = Path(__file__).parent / "data" / "keda"
CHART = Path(__file__).resolve().parents[2] / "charts" / "tagging-sidecar"

# What the kafka scaler needs, by sasl mode (KEDA 2.16 documentation of the kafka trigger).
NEEDED = {
    "plaintext": {"username", "password"},
    "scram_sha256": {"username", "password"},
    "scram_sha512": {"username", "password"},
    "oauthbearer": {"username", "password", "oauthTokenEndpointUri"},
}


def _validator(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((DATA / name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


SCALED_OBJECT = _validator("scaledobject.schema.json")
TRIGGER_AUTH = _validator("triggerauthentication.schema.json")


def _errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def _keda(values_file: Path | None) -> Rendered:
    files = () if values_file is None else (values_file,)
    label = "keda-" + ("defaults" if values_file is None else values_file.stem)
    return helm_template(*files, sets=["keda.enabled=true"], label=label)


def _auth_parameters(r: Rendered, trigger: dict[str, Any]) -> dict[str, Any]:
    """Every parameter the trigger receives: its metadata plus its TriggerAuthentication."""
    params: dict[str, Any] = dict(trigger["metadata"])
    ref = trigger.get("authenticationRef")
    if ref is None:
        return params
    [auth] = [a for a in r.of_kind("TriggerAuthentication") if a["metadata"]["name"] == ref["name"]]
    env = {e["name"]: e for e in r.container.get("env", [])}
    for item in auth["spec"].get("env", []):
        assert item.get("containerName") == CONTAINER, item
        assert item["name"] in env, f"{item['name']} is not in the container's env"
        params[item["parameter"]] = env[item["name"]]
    for item in auth["spec"].get("secretTargetRef", []):
        params[item["parameter"]] = item
    return params


@pytest.mark.parametrize("values_file", values_sets())
def test_keda_objects_validate_against_the_crd_schemas(values_file: Path | None) -> None:
    r = _keda(values_file)
    [scaled] = r.of_kind("ScaledObject")
    assert _errors(SCALED_OBJECT, scaled) == []
    for auth in r.of_kind("TriggerAuthentication"):
        assert _errors(TRIGGER_AUTH, auth) == []


@pytest.mark.parametrize("values_file", values_sets())
def test_kafka_scaler_gets_the_credentials_its_sasl_mode_needs(values_file: Path | None) -> None:
    r = _keda(values_file)
    [trigger] = r.one("ScaledObject")["spec"]["triggers"]
    params = _auth_parameters(r, trigger)
    mode = params.get("sasl", "none")
    missing = sorted(NEEDED.get(mode, set()) - set(params))
    assert not missing, f"sasl={mode} without {missing}"
    if params.get("tls") == "enable":
        assert ("cert" in params) == ("key" in params), "cert and key go together"
    if trigger["metadata"].get("limitToPartitionsWithLag") == "true":
        assert trigger["metadata"].get("topic"), "limitToPartitionsWithLag needs a topic"
        assert trigger["metadata"].get("allowIdleConsumers") != "true"


def test_oauthbearer_scaler_uses_the_sidecars_client_credentials() -> None:
    r = _keda(CHART / "ci" / "oauthbearer-values.yaml")
    [trigger] = r.one("ScaledObject")["spec"]["triggers"]
    params = _auth_parameters(r, trigger)
    assert params["sasl"] == "oauthbearer"
    assert params["username"]["name"] == "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID"
    assert params["password"] == {
        "parameter": "password",
        "name": "tagging-kafka-oidc",
        "key": "client-secret",
    }
    assert params["oauthTokenEndpointUri"]["name"] == (
        "TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"
    )
    assert params["scopes"]["name"] == "TAGGING_KAFKA__SASL_OAUTHBEARER_SCOPE"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "triggers", 0, "metadata", "lagThreshold"), 500),
        (("spec", "pollingIntervall"), 30),
        (("spec", "triggers", 0, "authenticationRef", "namespace"), "x"),
    ],
)
def test_schema_catches_what_keda_would_refuse(path: tuple[str | int, ...], value: Any) -> None:
    """The schema check above is meaningful: a wrong type or unknown field is reported."""
    doc = copy.deepcopy(_keda(CHART / "ci" / "sasl-tls-values.yaml").one("ScaledObject"))
    node: Any = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert _errors(SCALED_OBJECT, doc) != []


def test_trigger_auth_schema_refuses_unknown_parameters() -> None:
    auth = copy.deepcopy(_keda(CHART / "ci" / "sasl-tls-values.yaml").one("TriggerAuthentication"))
    auth["spec"]["secretTargetRef"][0]["parameter"] = "passwd"
    assert _errors(TRIGGER_AUTH, auth) != []


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["keda.limitToPartitionsWithLag=true", "config.kafka.topics={a,b}"],
            "keda.limitToPartitionsWithLag needs one topic",
        ),
        (
            ["keda.limitToPartitionsWithLag=true", "keda.allowIdleConsumers=true"],
            "keda.limitToPartitionsWithLag and keda.allowIdleConsumers cannot both be true",
        ),
    ],
)
def test_combinations_keda_rejects_are_refused(sets: list[str], message: str) -> None:
    args = ["template", "tsc", str(CHART), "--set", "keda.enabled=true"]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args)
    assert proc.returncode != 0, f"{sets} rendered"
    assert message in proc.stderr, proc.stderr


def test_limit_to_partitions_with_lag_renders_with_one_topic() -> None:
    r = helm_template(
        sets=["keda.enabled=true", "keda.limitToPartitionsWithLag=true"], label="keda-limit"
    )
    [trigger] = r.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["limitToPartitionsWithLag"] == "true"
    assert trigger["metadata"]["topic"] == "tagging"


def test_tls_with_system_trust_store_needs_no_trigger_authentication() -> None:
    r = helm_template(
        sets=[
            "keda.enabled=true",
            "config.kafka.securityProtocol=SSL",
            "config.kafka.ssl.secretName=kafka-tls",
            "config.kafka.ssl.caKey=",
        ],
        label="keda-tls-system-trust",
    )
    [trigger] = r.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["tls"] == "enable"
    for auth in r.of_kind("TriggerAuthentication"):
        assert _errors(TRIGGER_AUTH, auth) == []
