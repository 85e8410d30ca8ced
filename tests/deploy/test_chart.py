"""Helm chart checks: lint, render, Kubernetes schema validation and real properties.

Every test renders the chart with the pinned helm from ``scripts/helm-local`` (built into
the git-ignored ``.cache/tools`` on first use) for the chart defaults and for each
``charts/tagging-sidecar/ci/*-values.yaml``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import urllib.error
import urllib.request
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import kubernetes_validate.utils as kv_utils
import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from tagging_sidecar.config import Settings, known_env_vars, load_settings
from tagging_sidecar.observe.health import HealthServer, HealthState
from tests.deploy.support import (
    CHART_DIR,
    CI_DIR,
    CI_VALUES,
    CONTAINER,
    DASHBOARD,
    FULLNAME,
    HISTOGRAMS,
    K8S_MIN,
    METRICS,
    REPO_ROOT,
    YAMLLINT_CONFIG,
    Rendered,
    deep_merge,
    helm,
    helm_template,
    leaf_paths,
    render_set,
    run,
    tool,
    values_sets,
    yaml_dump,
    yaml_load,
)
from tests.support.cli import run_cli

pytestmark = pytest.mark.deploy

CRD_KINDS = frozenset({"ServiceMonitor", "ScaledObject", "TriggerAuthentication"})
K8S_VERSIONS = (K8S_MIN, str(kv_utils.latest_version()))
# Names that carry secrets (the OIDC token *endpoint* is an address, not a token).
SECRET_ENV = re.compile(r"(PASSWORD|SECRET|TOKEN(?!_ENDPOINT_URL)|CREDENTIAL)")
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _values_id(values_file: Path | None) -> str:
    return "defaults" if values_file is None else values_file.stem


# --------------------------------------------------------------------------- lint / render


def test_ci_values_files_present() -> None:
    names = {p.name for p in CI_VALUES}
    required = {
        "default-values.yaml",
        "keda-values.yaml",
        "sidecar-mode-values.yaml",
        "sasl-tls-values.yaml",
        "oauthbearer-values.yaml",
        "oauthbearer-file-values.yaml",
        "servicemonitor-values.yaml",
    }
    assert required <= names, f"missing ci values files: {sorted(required - names)}"


def test_helm_local_pins_version() -> None:
    proc = helm("version", "--template", "{{.Version}}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "v3.22.0"


@pytest.mark.parametrize("values_file", values_sets())
def test_helm_lint_strict(values_file: Path | None) -> None:
    args = ["lint", "--strict", str(CHART_DIR)]
    if values_file is not None:
        args += ["-f", str(values_file)]
    proc = helm(*args)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values_file", values_sets())
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_manifests_pass_strict_kubernetes_validation(
    values_file: Path | None, k8s_version: str, tmp_path: Path
) -> None:
    rendered = render_set(values_file)
    core = [d for d in rendered.docs if d["kind"] not in CRD_KINDS]
    assert core, "nothing to validate"
    manifest = tmp_path / "manifests.yaml"
    manifest.write_text("---\n".join(yaml_dump(d) for d in core))
    proc = run(
        [tool("kubernetes-validate"), "--strict", "-k", k8s_version, "--no-warn", str(manifest)]
    )
    assert proc.returncode == 0, f"{_values_id(values_file)}:\n{proc.stdout}\n{proc.stderr}"
    assert "ERROR" not in proc.stdout


def test_strict_validation_catches_a_bad_field(tmp_path: Path) -> None:
    """The validation above is meaningful: a misspelt field is rejected."""
    deployment = json.loads(json.dumps(render_set(None).deployment))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml_dump(deployment))
    proc = run([tool("kubernetes-validate"), "--strict", "-k", K8S_MIN, str(manifest)])
    assert proc.returncode != 0
    assert "livenessProbes" in proc.stdout + proc.stderr


@pytest.mark.parametrize("values_file", values_sets())
def test_rendered_kinds(values_file: Path | None) -> None:
    rendered = render_set(values_file)
    kinds = set(rendered.kinds())
    assert {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds, "the chart must never create Secrets (credentials come by ref)"
    names = [(d["kind"], d["metadata"]["name"]) for d in rendered.docs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"
    for doc in rendered.docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == "tsc", doc["kind"]


# --------------------------------------------------------------------------- values schema


@pytest.mark.parametrize("values_file", values_sets())
def test_values_validate_against_schema(values_file: Path | None, tmp_path: Path) -> None:
    merged = yaml_load((CHART_DIR / "values.yaml").read_text())
    if values_file is not None:
        merged = deep_merge(merged, yaml_load(values_file.read_text()) or {})
    instance = tmp_path / "merged-values.json"
    instance.write_text(json.dumps(merged))
    proc = run(
        [
            tool("check-jsonschema"),
            "--schemafile",
            str(CHART_DIR / "values.schema.json"),
            str(instance),
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_is_a_valid_draft7_schema() -> None:
    proc = run(
        [tool("check-jsonschema"), "--check-metaschema", str(CHART_DIR / "values.schema.json")]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _schema_node(path: str) -> dict[str, Any]:
    node: dict[str, Any] = json.loads((CHART_DIR / "values.schema.json").read_text())
    for part in path.split("."):
        node = node["properties"][part]
    return node


def _model_choices(section: str, field: str) -> list[str]:
    """The values the settings model accepts for a field typed as an Enum or a Literal."""
    annotation = Settings.model_fields[section].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    kind = annotation.model_fields[field].annotation
    if isinstance(kind, type) and issubclass(kind, Enum):
        return [str(member.value) for member in kind]
    return [str(arg) for arg in get_args(kind)]


@pytest.mark.parametrize(
    ("path", "section", "field"),
    [
        ("config.grpc.mode", "grpc", "mode"),
        ("config.pool.ordering", "pool", "ordering"),
        ("config.pool.scaling", "pool", "scaling"),
        ("config.decode.format", "decode", "format"),
        ("config.log.format", "log", "format"),
        ("config.log.level", "log", "level"),
        ("config.kafka.autoOffsetReset", "kafka", "auto_offset_reset"),
        ("config.kafka.securityProtocol", "kafka", "security_protocol"),
    ],
)
def test_schema_enums_match_the_settings_model(path: str, section: str, field: str) -> None:
    assert _schema_node(path)["enum"] == _model_choices(section, field)


def test_schema_is_strict_on_own_sections() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} is not strict"
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}")

    for section in ("config", "keda", "serviceMonitor", "grafanaDashboard", "sidecarMode"):
        walk(schema["properties"][section], section)


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["config.grpc.mode=stream"], "/config/grpc/mode"),
        (["config.pool.ordering=random"], "/config/pool/ordering"),
        (["config.decode.format=avro"], "/config/decode/format"),
        (["config.log.format=xml"], "/config/log/format"),
        (["config.kafka.sasl.password=hunter2"], "password"),
        (["config.kafka.bootstrapServerz=x:9092"], "bootstrapServerz"),
        (["keda.lagTreshold=5"], "lagTreshold"),
        (["config.shutdown.gracePeriod=-1"], "/config/shutdown/gracePeriod"),
        (["config.kafka.properties.sasl\\.password=x"], "sasl.password"),
        (["config.kafka.properties.group\\.id=other"], "group.id"),
        (["config.kafka.sasl.oauthbearer.tokenEndpointUrl=idp/token"], "tokenEndpointUrl"),
        (["config.kafka.sasl.oauthbearer.clientSecret.value=x"], "value"),
    ],
)
def test_schema_rejects_bad_values(sets: list[str], needle: str) -> None:
    args = ["template", "tsc", str(CHART_DIR)]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args)
    assert proc.returncode != 0, f"{sets} was accepted"
    assert "schema" in proc.stderr.lower(), proc.stderr
    assert needle in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["config.kafka.securityProtocol=SASL_SSL"], "requires config.kafka.sasl.mechanism"),
        (
            ["config.kafka.securityProtocol=SASL_SSL", "config.kafka.sasl.mechanism=PLAIN"],
            "passwordSecret.name",
        ),
        (["config.kafka.sasl.mechanism=PLAIN"], "does not use SASL"),
        (
            [
                "config.kafka.securityProtocol=SASL_SSL",
                "config.kafka.sasl.mechanism=OAUTHBEARER",
                "config.kafka.sasl.oauthbearer.clientId=svc",
                "config.kafka.sasl.oauthbearer.tokenEndpointUrl=https://idp.example/token",
            ],
            "OAUTHBEARER needs config.kafka.sasl.oauthbearer.clientId, clientSecret.name",
        ),
        (
            [
                "config.kafka.securityProtocol=SSL",
                "config.kafka.ssl.secretName=tls",
                "config.kafka.ssl.certificateKey=tls.crt",
            ],
            "must be set together",
        ),
        (["config.kafka.ssl.secretName=tls"], "does not use TLS"),
        (["config.grpc.tls.secretName=tls"], "tls.enabled is false"),
        (["config.pool.minWorkers=8", "config.pool.maxWorkers=4"], "minWorkers"),
        (
            ["sidecarMode.enabled=true", "sidecarMode.appContainer.name=app"],
            "config.grpc.target must point at the app in the same pod",
        ),
        (["sidecarMode.enabled=true"], "appContainer"),
        (
            [
                "sidecarMode.enabled=true",
                "sidecarMode.appContainer.name=app",
                "sidecarMode.appContainer.image=app:1",
                "sidecarMode.appContainer.ports[0].containerPort=8080",
                "config.grpc.target=127.0.0.1:50051",
            ],
            "config.http.port 8080 is also a port of sidecarMode.appContainer",
        ),
    ],
)
def test_template_refuses_inconsistent_settings(sets: list[str], message: str) -> None:
    args = ["template", "tsc", str(CHART_DIR)]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args)
    assert proc.returncode != 0, f"{sets} rendered"
    assert message in proc.stderr, proc.stderr


def test_every_value_is_documented_with_param() -> None:
    text = (CHART_DIR / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.MULTILINE))
    values = yaml_load(text)
    leaves = set(leaf_paths(values))

    def covered(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in documented for i in range(len(parts), 0, -1))

    undocumented = sorted(p for p in leaves if not covered(p))
    assert not undocumented, f"values without '## @param': {undocumented}"

    def exists(path: str) -> bool:
        node: Any = values
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    stale = sorted(p for p in documented if not exists(p))
    assert not stale, f"'## @param' lines for values that do not exist: {stale}"


# --------------------------------------------------------------------------- yamllint


def test_yamllint_chart_values_and_compose() -> None:
    targets = [
        CHART_DIR / "values.yaml",
        CHART_DIR / "Chart.yaml",
        *sorted(CI_DIR.glob("*.yaml")),
        REPO_ROOT / "docker-compose.yml",
        YAMLLINT_CONFIG,
    ]
    proc = run([tool("yamllint"), "-c", str(YAMLLINT_CONFIG), "-s", *map(str, targets)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_config_catches_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nflag: yes\n")
    proc = run([tool("yamllint"), "-c", str(YAMLLINT_CONFIG), "-s", str(bad)])
    assert proc.returncode != 0
    assert "key-duplicates" in proc.stdout
    assert "truthy" in proc.stdout


# --------------------------------------------------------------------------- probes, ports


@pytest.mark.parametrize("values_file", values_sets())
def test_probes_and_http_port(values_file: Path | None) -> None:
    r = render_set(values_file)
    c = r.container
    ports = {p["name"]: p for p in c["ports"]}
    assert ports["http"]["containerPort"] == 8080
    assert ports["http"]["containerPort"] == int(r.env_value("TAGGING_HTTP__PORT"))
    assert r.env_value("TAGGING_HTTP__HOST") == "0.0.0.0"
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    svc = r.one("Service")
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == r.deployment["spec"]["selector"]["matchLabels"]
    tpl_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= tpl_labels.items()
    assert c["args"] == ["run"]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("values_file", values_sets())
def test_startup_probe_waits_for_the_poll_loop(values_file: Path | None) -> None:
    """The startup probe's endpoint fails on a fresh process and passes after one poll pass."""
    probe = render_set(values_file).container["startupProbe"]["httpGet"]
    assert probe["port"] == "http"
    state = HealthState(stall_timeout=60, tick_timeout=15)
    server = HealthServer("127.0.0.1", 0, state, CollectorRegistry())
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}{probe['path']}"
        assert _status(url) == 503
        state.tick()
        state.tick()
        assert _status(url) == 200
    finally:
        server.stop()


# --------------------------------------------------------------------------- security


@pytest.mark.parametrize("values_file", values_sets())
def test_security_context_is_hardened(values_file: Path | None) -> None:
    r = render_set(values_file)
    if r.of_kind("Deployment") and not _sidecar_mode(r):
        pod = r.pod_spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] == 10001
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = r.container["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == 10001
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in ctx["capabilities"]
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx.get("privileged", False) is False
    assert r.pod_spec["automountServiceAccountToken"] is False
    assert not r.pod_spec.get("hostNetwork", False)
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    mounts = {m["mountPath"]: m for m in r.container["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp"
    assert all(c.get("resources") for c in r.pod_spec["containers"]), "resources missing"
    assert r.container["resources"]["requests"]["memory"]
    assert r.container["resources"]["limits"]["memory"]


def _sidecar_mode(r: Rendered) -> bool:
    return len(r.pod_spec["containers"]) + len(r.pod_spec.get("initContainers", [])) > 1


def test_sidecar_mode_leaves_the_app_its_own_identity() -> None:
    """No pod-level uid/gid/fsGroup in sidecar mode: they would apply to the user's app too."""
    for sets in ([], ["sidecarMode.nativeSidecar=false"]):
        r = helm_template(CI_DIR / "sidecar-mode-values.yaml", sets=sets, label=f"app-{sets}")
        pod = r.pod_spec.get("securityContext", {})
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(pod), pod
        [app] = [
            c
            for c in r.pod_spec["containers"] + r.pod_spec.get("initContainers", [])
            if c["name"] == "havilah"
        ]
        assert "runAsUser" not in app.get("securityContext", {})
        assert r.container["securityContext"]["runAsUser"] == 10001


def test_secret_files_stay_readable_without_fs_group() -> None:
    """Without a pod fsGroup (sidecar mode) the mounted secret files must still be readable."""
    r = helm_template(
        CI_DIR / "sidecar-mode-values.yaml",
        CI_DIR / "sasl-file-values.yaml",
        sets=["config.grpc.target=127.0.0.1:50051"],
        label="sidecar-with-secret-files",
    )
    fs_group = r.pod_spec.get("securityContext", {}).get("fsGroup")
    secrets = [v["secret"] for v in r.pod_spec["volumes"] if "secret" in v]
    assert secrets
    for secret in secrets:
        mode = secret["defaultMode"]
        readable = mode & 0o004 or (mode & 0o040 and fs_group is not None)
        assert readable, f"{secret['secretName']}: mode {mode:o} with fsGroup {fs_group}"


@pytest.mark.parametrize("limit", ["null", '""'])
def test_empty_cpu_limit_is_omitted(limit: str, tmp_path: Path) -> None:
    values = tmp_path / "no-cpu-limit.yaml"
    values.write_text(f"resources:\n  limits:\n    cpu: {limit}\n")
    r = helm_template(values, label=f"cpu-limit-{limit}")
    limits = r.container["resources"]["limits"]
    assert "cpu" not in limits, limits
    assert limits["memory"] == "512Mi"


@pytest.mark.parametrize("values_file", values_sets())
def test_termination_grace_matches_shutdown_grace(values_file: Path | None) -> None:
    r = render_set(values_file)
    grace = float(r.env_value("TAGGING_SHUTDOWN__GRACE_PERIOD"))
    assert r.pod_spec["terminationGracePeriodSeconds"] == math.ceil(grace) + 10


def test_termination_grace_follows_values(tmp_path: Path) -> None:
    values = tmp_path / "grace.yaml"
    values.write_text("config:\n  shutdown:\n    gracePeriod: 42.5\n")
    r = helm_template(values, label="grace-42.5")
    assert r.env_value("TAGGING_SHUTDOWN__GRACE_PERIOD") == "42.5"
    assert r.pod_spec["terminationGracePeriodSeconds"] == 53


@pytest.mark.parametrize("values_file", values_sets())
def test_pod_disruption_budget(values_file: Path | None) -> None:
    r = render_set(values_file)
    pdb = r.one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    # A crash-looping pod must not block node drains.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# --------------------------------------------------------------------------- env vars and secrets


@pytest.mark.parametrize("values_file", values_sets())
def test_env_names_are_known_settings(values_file: Path | None) -> None:
    r = render_set(values_file)
    known = known_env_vars()
    for container in r.pod_spec["containers"] + r.pod_spec.get("initContainers", []):
        rendered = {e["name"] for e in container.get("env", []) if e["name"].startswith("TAGGING_")}
        unknown = sorted(rendered - known)
        assert not unknown, f"{container['name']}: env vars the settings model rejects: {unknown}"


def test_chart_can_set_every_setting() -> None:
    """Across defaults and ci values, every settings-model env var is rendered at least once."""
    seen: set[str] = set()
    for values_file in [None, *CI_VALUES]:
        seen |= set(render_set(values_file).env())
    missing = sorted(known_env_vars() - seen)
    assert not missing, (
        f"settings with no chart value (add them to values.yaml, values.schema.json and "
        f"templates/_helpers.tpl): {missing}"
    )


@pytest.mark.parametrize("values_file", values_sets())
def test_no_number_renders_in_exponent_form(values_file: Path | None) -> None:
    for name, entry in render_set(values_file).env().items():
        value = entry.get("value", "")
        assert not re.fullmatch(r"-?\d+(\.\d+)?e[+-]\d+", value), f"{name}={value}"


@pytest.mark.parametrize("values_file", values_sets())
def test_secrets_only_by_reference(values_file: Path | None) -> None:
    r = render_set(values_file)
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    secret_dirs = {
        m["mountPath"]: m
        for m in r.container.get("volumeMounts", [])
        if "secret" in volumes[m["name"]]
    }
    for name, entry in r.env().items():
        if name.endswith("_FILE"):
            path = entry["value"]
            parent = str(Path(path).parent)
            assert parent in secret_dirs, f"{name}={path} is not inside a mounted Secret"
            assert secret_dirs[parent].get("readOnly") is True
        elif SECRET_ENV.search(name):
            assert "value" not in entry, f"{name} is a plain value"
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"], entry
    # Owner and fsGroup only; without a pod fsGroup (sidecar mode) world-readable in our mount.
    expected_mode = 0o440 if r.pod_spec.get("securityContext", {}).get("fsGroup") else 0o444
    for volume in volumes.values():
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == expected_mode
    assert "hunter2" not in r.text


def test_sasl_tls_secret_wiring() -> None:
    r = render_set(CI_DIR / "sasl-tls-values.yaml")
    env = r.env()
    assert env["TAGGING_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "tagging-kafka-user",
        "key": "password",
    }
    assert env["TAGGING_KAFKA__SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "tagging-kafka-user",
        "key": "username",
    }
    assert "TAGGING_KAFKA__SSL_KEY_PASSWORD" not in env
    assert r.env_value("TAGGING_KAFKA__SSL_KEY_PASSWORD_FILE") == (
        "/etc/tagging-sidecar/kafka-ssl-key-password/password"
    )
    assert r.env_value("TAGGING_KAFKA__SSL_CA_LOCATION") == "/etc/tagging-sidecar/kafka-tls/ca.crt"
    assert r.env_value("TAGGING_GRPC__TLS") == "true"
    assert r.env_value("TAGGING_GRPC__KEY_FILE") == "/etc/tagging-sidecar/grpc-tls/tls.key"
    secrets = {v["secret"]["secretName"] for v in r.pod_spec["volumes"] if "secret" in v}
    assert secrets == {"tagging-kafka-tls", "tagging-kafka-tls-key", "havilah-client-tls"}


def test_sasl_password_as_file_wiring() -> None:
    r = render_set(CI_DIR / "sasl-file-values.yaml")
    env = r.env()
    assert "TAGGING_KAFKA__SASL_PASSWORD" not in env
    assert r.env_value("TAGGING_KAFKA__SASL_PASSWORD_FILE").startswith("/etc/tagging-sidecar/")
    assert env["TAGGING_KAFKA__SSL_KEY_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == (
        "key-password"
    )
    assert json.loads(r.env_value("TAGGING_KAFKA__PROPERTIES")) == {
        "fetch.min.bytes": 65536,
        "client.rack": "eu-west-1a",
        "enable.partition.eof": False,
    }
    assert r.env_value("TAGGING_KAFKA__TOPICS") == "tagging,tagging-replay"
    assert r.env_value("TAGGING_GRPC__MAX_MESSAGE_BYTES") == "16777216"
    assert r.env_value("TAGGING_DLQ__TOPIC") == "tagging.dlq"


def test_oauthbearer_secret_wiring() -> None:
    r = render_set(CI_DIR / "oauthbearer-values.yaml")
    env = r.env()
    assert r.env_value("TAGGING_KAFKA__SASL_MECHANISM") == "OAUTHBEARER"
    assert r.env_value("TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_ID") == "tagging-sidecar"
    assert env["TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "tagging-kafka-oidc",
        "key": "client-secret",
    }
    assert r.env_value("TAGGING_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL").startswith("https://")
    assert r.env_value("TAGGING_KAFKA__SASL_OAUTHBEARER_SCOPE") == "kafka"
    assert "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE" not in env
    assert "TAGGING_KAFKA__SASL_PASSWORD" not in env


def test_oauthbearer_secret_as_file_wiring() -> None:
    r = render_set(CI_DIR / "oauthbearer-file-values.yaml")
    env = r.env()
    assert "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET" not in env
    assert "TAGGING_KAFKA__SASL_OAUTHBEARER_SCOPE" not in env  # empty scope: provider default
    path = r.env_value("TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE")
    assert path == "/etc/tagging-sidecar/kafka-oauth-client-secret/secret"
    secrets = {v["secret"]["secretName"] for v in r.pod_spec["volumes"] if "secret" in v}
    assert secrets == {"tagging-kafka-oidc"}


def test_oauthbearer_values_render_nothing_for_other_mechanisms() -> None:
    r = helm_template(
        CI_DIR / "sasl-tls-values.yaml",
        sets=[
            "config.kafka.sasl.oauthbearer.clientId=svc",
            "config.kafka.sasl.oauthbearer.clientSecret.name=oidc",
            "config.kafka.sasl.oauthbearer.tokenEndpointUrl=https://idp.example/token",
        ],
        label="scram-with-oauth-values",
    )
    assert not [name for name in r.env() if "OAUTHBEARER" in name]


def _materialise_env(r: Rendered, tmp_path: Path) -> dict[str, str]:
    """Turn the container env into what the kubelet would provide, files included."""
    mounts = {m["mountPath"]: m["name"] for m in r.container.get("volumeMounts", [])}
    env: dict[str, str] = {}
    for name, entry in r.env().items():
        if "value" in entry:
            value = entry["value"]
            for mount_path, volume in mounts.items():
                if value.startswith(mount_path + "/"):
                    local = tmp_path / volume / Path(value).name
                    local.parent.mkdir(parents=True, exist_ok=True)
                    local.write_text("dummy-secret-from-file\n")
                    value = str(local)
            env[name] = value
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[name] = f"dummy-{ref['name']}-{ref['key']}"
    return env


@pytest.mark.parametrize("values_file", values_sets())
def test_rendered_env_loads_in_settings_model(
    values_file: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real settings model accepts exactly what the chart renders."""
    r = render_set(values_file)
    env = _materialise_env(r, tmp_path)
    for name in list(os.environ):
        if name.startswith("TAGGING_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == env["TAGGING_KAFKA__BOOTSTRAP_SERVERS"]
    assert settings.kafka.topics == env["TAGGING_KAFKA__TOPICS"].split(",")
    assert settings.grpc.target == env["TAGGING_GRPC__TARGET"]
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 8080
    assert settings.shutdown.grace_period == float(env["TAGGING_SHUTDOWN__GRACE_PERIOD"])
    if "TAGGING_KAFKA__SASL_PASSWORD_FILE" in env:
        assert settings.kafka.sasl_password is not None
        assert settings.kafka.sasl_password.get_secret_value() == "dummy-secret-from-file"
    if "TAGGING_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET_FILE" in env:
        secret = settings.kafka.sasl_oauthbearer_client_secret
        assert secret is not None
        assert secret.get_secret_value() == "dummy-secret-from-file"
    if settings.kafka.sasl_mechanism == "OAUTHBEARER":
        assert settings.kafka.librdkafka_security()["sasl.oauthbearer.method"] == "oidc"


def _service_link_env(rendered: Rendered) -> dict[str, str]:
    """The docker-link style variables the kubelet injects for each Service of the release."""
    host = "127.0.0.1"  # stands in for the ClusterIP; nothing is contacted
    env: dict[str, str] = {}
    for svc in rendered.of_kind("Service"):
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ports = svc["spec"]["ports"]
        env[f"{name}_SERVICE_HOST"] = host
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{name}_PORT"] = (
            f"{ports[0].get('protocol', 'TCP').lower()}://{host}:{ports[0]['port']}"
        )
        for port in ports:
            proto = port.get("protocol", "TCP")
            if "name" in port:
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                    port["port"]
                )
            base = f"{name}_PORT_{port['port']}_{proto}"
            env[base] = f"{proto.lower()}://{host}:{port['port']}"
            env[f"{base}_PROTO"] = proto.lower()
            env[f"{base}_PORT"] = str(port["port"])
            env[f"{base}_ADDR"] = host
    return env


# A release whose name starts with the settings prefix, so its Service links look like settings.
LINKED_RELEASE = "tagging"


@pytest.mark.parametrize("values_file", values_sets())
def test_config_survives_service_link_variables(values_file: Path | None, tmp_path: Path) -> None:
    """The container starts even where the kubelet injects Service links (a Deployment of the
    user's own, or an older pod spec): check-config exits 0 with them in the environment."""
    r = render_set(values_file, release=LINKED_RELEASE)
    assert r.pod_spec["enableServiceLinks"] is False
    links = _service_link_env(r)
    assert any(name.startswith("TAGGING_") for name in links), sorted(links)
    env = {**_materialise_env(r, tmp_path), **links}
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- autoscaling


@pytest.mark.parametrize("values_file", values_sets())
def test_keda_never_renders_alongside_hpa(values_file: Path | None) -> None:
    r = render_set(values_file)
    if r.of_kind("ScaledObject"):
        assert not r.of_kind("HorizontalPodAutoscaler"), "KEDA on but the chart HPA rendered"
        assert "replicas" not in r.deployment["spec"]


def test_hpa_renders_without_keda_and_disappears_with_it() -> None:
    hpa_only = helm_template(sets=["autoscaling.enabled=true"], label="hpa")
    hpa = hpa_only.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert "replicas" not in hpa_only.deployment["spec"]
    both = helm_template(sets=["autoscaling.enabled=true", "keda.enabled=true"], label="both")
    assert not both.of_kind("HorizontalPodAutoscaler")
    assert len(both.of_kind("ScaledObject")) == 1
    plain = helm_template(label="defaults")
    assert plain.deployment["spec"]["replicas"] == 1
    assert not plain.of_kind("ScaledObject")


def test_keda_scaled_object() -> None:
    r = render_set(CI_DIR / "keda-values.yaml")
    assert not r.of_kind("HorizontalPodAutoscaler")
    so = r.one("ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert r.deployment["metadata"]["name"] == FULLNAME
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 12)
    assert spec["pollingInterval"] == 15
    assert spec["cooldownPeriod"] == 120
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values must be strings"
    assert meta["bootstrapServers"] == r.env_value("TAGGING_KAFKA__BOOTSTRAP_SERVERS")
    assert meta["consumerGroup"] == r.env_value("TAGGING_KAFKA__GROUP_ID") == "tagging-prod"
    assert meta["topic"] == r.env_value("TAGGING_KAFKA__TOPICS") == "tagging"
    assert meta["lagThreshold"] == "500"
    assert meta["activationLagThreshold"] == "10"
    assert meta["offsetResetPolicy"] == r.env_value("TAGGING_KAFKA__AUTO_OFFSET_RESET")
    assert "sasl" not in meta
    assert "tls" not in meta
    assert "authenticationRef" not in trigger
    assert not r.of_kind("TriggerAuthentication")


def test_keda_with_sasl_tls_uses_trigger_authentication() -> None:
    r = render_set(CI_DIR / "sasl-tls-values.yaml")
    [trigger] = r.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    auth = r.one("TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {e["parameter"]: (e["name"], e["key"]) for e in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "password": ("tagging-kafka-user", "password"),
        "ca": ("tagging-kafka-tls", "ca.crt"),
        "cert": ("tagging-kafka-tls", "tls.crt"),
        "key": ("tagging-kafka-tls", "tls.key"),
        "keyPassword": ("tagging-kafka-tls-key", "password"),
    }
    [env_ref] = auth["spec"]["env"]
    assert env_ref == {
        "parameter": "username",
        "name": "TAGGING_KAFKA__SASL_USERNAME",
        "containerName": CONTAINER,
    }
    assert "TAGGING_KAFKA__SASL_USERNAME" in r.env()


def test_keda_topic_omitted_for_several_topics() -> None:
    r = helm_template(
        sets=["keda.enabled=true", "config.kafka.topics={a,b}"], label="keda-two-topics"
    )
    [trigger] = r.one("ScaledObject")["spec"]["triggers"]
    assert "topic" not in trigger["metadata"]


# --------------------------------------------------------------------------- monitoring


def test_service_monitor() -> None:
    r = render_set(CI_DIR / "servicemonitor-values.yaml")
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    svc = r.one("Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["tagging"]}
    [endpoint] = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["metricRelabelings"][0]["action"] == "keep"
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "8080"
    assert not render_set(None).of_kind("ServiceMonitor")


def test_grafana_dashboard_configmap() -> None:
    r = render_set(CI_DIR / "servicemonitor-values.yaml")
    [cm] = [c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Streaming"}
    assert json.loads(cm["data"]["tagging-sidecar.json"]) == json.loads(DASHBOARD.read_text())
    assert not render_set(None).of_kind("ConfigMap")


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tagging-sidecar"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], target["expr"]


def test_dashboard_covers_every_metric() -> None:
    exprs = "\n".join(_dashboard_exprs())
    missing = [m for m in METRICS if not re.search(rf"\b{m}(_bucket|_sum|_count)?\b", exprs)]
    assert not missing, f"metrics without a panel: {missing}"
    used = set(re.findall(r"\btagging_sidecar_[a-z_]+", exprs))
    allowed = set(METRICS) | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    unknown = sorted(used - allowed)
    assert not unknown, f"dashboard queries metrics that do not exist: {unknown}"
    for h in HISTOGRAMS:
        assert any(
            e.startswith("histogram_quantile(") and f"{h}_bucket" in e for e in _dashboard_exprs()
        ), f"no quantile panel for {h}"


# --------------------------------------------------------------------------- sidecar mode


def test_sidecar_mode_native_sidecar() -> None:
    r = render_set(CI_DIR / "sidecar-mode-values.yaml")
    [app] = r.pod_spec["initContainers"]
    assert app["name"] == "havilah"
    assert app["restartPolicy"] == "Always"
    assert app["startupProbe"]["grpc"]["port"] == 50051
    assert [c["name"] for c in r.pod_spec["containers"]] == [CONTAINER]
    host, _, port = r.env_value("TAGGING_GRPC__TARGET").rpartition(":")
    assert host in LOOPBACK
    assert int(port) in {p["containerPort"] for p in app["ports"]}
    assert r.pod_spec["terminationGracePeriodSeconds"] == 55
    pdb = r.one("PodDisruptionBudget")["spec"]
    assert (pdb["minAvailable"], "maxUnavailable" in pdb) == (1, False)


def test_sidecar_mode_regular_container() -> None:
    r = helm_template(
        CI_DIR / "sidecar-mode-values.yaml",
        sets=["sidecarMode.nativeSidecar=false"],
        label="sidecar-regular",
    )
    assert "initContainers" not in r.pod_spec
    names = [c["name"] for c in r.pod_spec["containers"]]
    assert names == [CONTAINER, "havilah"]
    assert "restartPolicy" not in r.pod_spec["containers"][1]


def test_extra_containers_hook() -> None:
    r = helm_template(
        sets=["extraContainers[0].name=proxy", "extraContainers[0].image=envoy:v1"],
        label="extra-containers",
    )
    assert [c["name"] for c in r.pod_spec["containers"]] == [CONTAINER, "proxy"]


# --------------------------------------------------------------------------- NOTES.txt


def _render_notes(tmp_path: Path, values_file: Path | None, *sets: str) -> str:
    """`helm template` skips NOTES.txt: render it through a throwaway ConfigMap."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART_DIR, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "zz-notes.yaml").write_text(
        '{{- define "zz.notes" }}' + notes + "{{- end }}\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "zz.notes" . | quote }}\n'
    )
    args = ["template", "tsc", str(chart), "--show-only", "templates/zz-notes.yaml"]
    if values_file is not None:
        args += ["-f", str(values_file)]
    for s in sets:
        args += ["--set", s]
    proc = helm(*args)
    assert proc.returncode == 0, proc.stderr
    text: str = yaml_load(proc.stdout)["data"]["notes"]
    return text


@pytest.mark.parametrize("values_file", values_sets())
def test_notes_render(values_file: Path | None, tmp_path: Path) -> None:
    notes = _render_notes(tmp_path, values_file)
    r = render_set(values_file)
    assert f"deployment/{FULLNAME}" in notes
    assert f"is {r.pod_spec['terminationGracePeriodSeconds']}." in notes
    assert "/readyz" in notes
    if r.of_kind("ScaledObject"):
        assert "KEDA ScaledObject" in notes
    if values_file is not None and values_file.stem == "sidecar-mode-values":
        assert "native sidecar" in notes


def test_notes_warn_when_keda_overrides_hpa(tmp_path: Path) -> None:
    notes = _render_notes(tmp_path, None, "keda.enabled=true", "autoscaling.enabled=true")
    assert "autoscaling.enabled is ignored" in notes
