"""docker-compose.yml checks: Compose-spec schema, lint, and the local stack's wiring.

No Docker engine is needed: the file is validated against the Compose specification
schema vendored in check-jsonschema (offline) and its wiring is asserted directly.
"""

from __future__ import annotations

import http.server
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tagging_sidecar.config import known_env_vars, load_settings
from tests.deploy.support import COMPOSE_FILE, YAMLLINT_CONFIG, run, tool, yaml_dump, yaml_load

pytestmark = pytest.mark.deploy

IMAGE_SERVICES = ("sink", "sidecar", "producer")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svc: dict[str, dict[str, Any]] = compose["services"]
    return svc


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --------------------------------------------------------------------------- schema and lint


def test_compose_matches_compose_spec_schema() -> None:
    proc = run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_schema_check_rejects_mistakes(tmp_path: Path, compose: dict[str, Any]) -> None:
    """The schema check above has teeth: an unknown service key fails it."""
    broken = dict(compose)
    broken["services"] = dict(compose["services"])
    broken["services"]["sidecar"] = {**compose["services"]["sidecar"], "dependz_on": ["sink"]}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml_dump(broken))
    proc = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    assert proc.returncode != 0
    assert "dependz_on" in proc.stdout + proc.stderr


def test_compose_yamllint() -> None:
    proc = run([tool("yamllint"), "-c", str(YAMLLINT_CONFIG), "-s", str(COMPOSE_FILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_header_documents_usage() -> None:
    head = COMPOSE_FILE.read_text().split("\nname:", 1)[0]
    assert "docker compose up" in head
    assert "--profile load" in head
    assert "127.0.0.1:19092" in head


# --------------------------------------------------------------------------- topology


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {"redpanda", "console", "topics", "sink", "sidecar", "producer"}


def test_host_ports_bound_to_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+(/tcp|/udp)?", str(port)), (
                    f"{name}: {port}"
                )
    assert published >= 4
    expected = {
        "redpanda": "127.0.0.1:19092:19092",
        "console": "127.0.0.1:8081:8080",
        "sidecar": "127.0.0.1:8080:8080",
        "sink": "127.0.0.1:50051:50051",
    }
    for name, mapping in expected.items():
        assert mapping in services[name]["ports"], name


def test_redpanda_broker(services: dict[str, dict[str, Any]]) -> None:
    rp = services["redpanda"]
    cmd = rp["command"]
    joined = " ".join(cmd)
    assert cmd[:2] == ["redpanda", "start"]
    assert "--mode dev-container" in joined
    assert "--smp 1" in joined
    assert "--overprovisioned" in cmd
    kafka_addr = cmd[cmd.index("--kafka-addr") + 1]
    assert "internal://0.0.0.0:9092" in kafka_addr
    assert "external://0.0.0.0:19092" in kafka_addr
    advertised = cmd[cmd.index("--advertise-kafka-addr") + 1]
    assert "internal://redpanda:9092" in advertised
    assert "external://127.0.0.1:19092" in advertised
    test = rp["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    assert "rpk cluster health | grep -E 'Healthy:.+true'" in test[1]


def test_console(services: dict[str, dict[str, Any]]) -> None:
    console = services["console"]
    assert _env(console)["KAFKA_BROKERS"] == "redpanda:9092"
    assert console["depends_on"]["redpanda"]["condition"] == "service_healthy"


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    assert services["topics"]["depends_on"] == {"redpanda": {"condition": "service_healthy"}}
    sidecar = services["sidecar"]["depends_on"]
    assert sidecar["topics"]["condition"] == "service_completed_successfully"
    assert sidecar["sink"]["condition"] == "service_started"
    producer = services["producer"]["depends_on"]
    assert producer["topics"]["condition"] == "service_completed_successfully"


def test_app_services_use_the_dockerfile_image(services: dict[str, dict[str, Any]]) -> None:
    for name in IMAGE_SERVICES:
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert service["image"].endswith("tagging-sidecar:dev}"), service["image"]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "/tmp" in service["tmpfs"]
        assert service["user"] == "10001:10001"
    assert (COMPOSE_FILE.parent / "Dockerfile").is_file()


def test_sink_and_producer_commands(services: dict[str, dict[str, Any]]) -> None:
    assert services["sink"]["command"] == [
        "sink",
        "--listen",
        "0.0.0.0:50051",
        "--summary-interval",
        "5",
        "--log-format",
        "console",
    ]
    producer = services["producer"]["command"]
    assert producer[0] == "produce"
    flags = dict(zip(producer[1::2], producer[2::2], strict=True))
    assert flags == {
        "--bootstrap": "redpanda:9092",
        "--topic": "tagging",
        "--count": "100000",
        "--rate": "5000",
        "--log-format": "console",
    }
    assert services["producer"]["profiles"] == ["load"]
    assert services["sidecar"]["command"] == ["run"]


# --------------------------------------------------------------------------- sidecar wiring


def test_sidecar_env_wiring(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["sidecar"])
    assert env["TAGGING_KAFKA__BOOTSTRAP_SERVERS"] == "redpanda:9092"
    assert env["TAGGING_GRPC__TARGET"] == "sink:50051"
    assert env["TAGGING_HTTP__HOST"] == "0.0.0.0"
    assert env["TAGGING_HTTP__PORT"] == "8080"
    assert env["TAGGING_KAFKA__TOPICS"] == "tagging"
    sink_listen = services["sink"]["command"][services["sink"]["command"].index("--listen") + 1]
    assert sink_listen.endswith(":" + env["TAGGING_GRPC__TARGET"].rsplit(":", 1)[1])
    grace = float(env["TAGGING_SHUTDOWN__GRACE_PERIOD"])
    stop = services["sidecar"]["stop_grace_period"]
    assert stop.endswith("s") and float(stop[:-1]) >= grace + 5


def test_every_tagging_env_is_a_known_setting(services: dict[str, dict[str, Any]]) -> None:
    known = known_env_vars()
    for name, service in services.items():
        unknown = sorted(k for k in _env(service) if k.startswith("TAGGING_") and k not in known)
        assert not unknown, f"{name}: unknown settings {unknown}"


def test_sidecar_env_loads_in_settings_model(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("TAGGING_"):
            monkeypatch.delenv(name)
    for name, value in _env(services["sidecar"]).items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "redpanda:9092"
    assert settings.grpc.target == "sink:50051"
    assert settings.dlq.topic == "tagging.dlq"


# --------------------------------------------------------------------------- topics job


def _topics_script(services: dict[str, dict[str, Any]]) -> str:
    topics = services["topics"]
    assert topics["entrypoint"] == ["/bin/bash", "-c"]
    [script] = topics["command"]
    # Compose turns "$$" into a literal "$" before the shell sees the command.
    return str(script).replace("$$", "$")


def _fake_rpk(tmp_path: Path, *, create_rc: int, describe_rc: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rpk = bin_dir / "rpk"
    log = tmp_path / "rpk.log"
    rpk.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >> {log}\n'
        f'case "$2" in create) exit {create_rc};; describe) exit {describe_rc};; esac\n'
        "exit 99\n"
    )
    rpk.chmod(rpk.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _run_topics(script: str, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(
        ["/bin/bash", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_topics_job_creates_topics(tmp_path: Path, services: dict[str, dict[str, Any]]) -> None:
    bin_dir = _fake_rpk(tmp_path, create_rc=0, describe_rc=1)
    proc = _run_topics(_topics_script(services), bin_dir)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "rpk.log").read_text().splitlines()
    assert "topic create tagging --partitions 6 --replicas 1 -X brokers=redpanda:9092" in calls
    dlq = _env(services["sidecar"])["TAGGING_DLQ__TOPIC"]
    assert any(c.startswith(f"topic create {dlq} ") for c in calls), calls


def test_topics_job_is_idempotent(tmp_path: Path, services: dict[str, dict[str, Any]]) -> None:
    bin_dir = _fake_rpk(tmp_path, create_rc=1, describe_rc=0)
    proc = _run_topics(_topics_script(services), bin_dir)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "rpk.log").read_text()
    assert "topic describe tagging" in calls


def test_topics_job_fails_when_broker_unusable(
    tmp_path: Path, services: dict[str, dict[str, Any]]
) -> None:
    bin_dir = _fake_rpk(tmp_path, create_rc=1, describe_rc=1)
    proc = _run_topics(_topics_script(services), bin_dir)
    assert proc.returncode != 0


# --------------------------------------------------------------------------- sidecar healthcheck


class _Handler(http.server.BaseHTTPRequestHandler):
    status: ClassVar[int] = 200
    paths: ClassVar[list[str]]

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"ok" if type(self).status == 200 else b"not ready")

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def readyz_server() -> Iterator[tuple[type[_Handler], int]]:
    handler = type("Handler", (_Handler,), {"status": 200, "paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_sidecar_healthcheck_probes_readyz(
    services: dict[str, dict[str, Any]],
    readyz_server: tuple[type[_Handler], int],
    status: int,
    healthy: bool,
) -> None:
    test = services["sidecar"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], "image has no curl: the check must use python"
    code = test[3]
    port = _env(services["sidecar"])["TAGGING_HTTP__PORT"]
    assert f"http://127.0.0.1:{port}/readyz" in code
    handler, local_port = readyz_server
    handler.status = status
    local = code.replace(f"127.0.0.1:{port}", f"127.0.0.1:{local_port}")
    proc = subprocess.run(
        [sys.executable, "-c", local], capture_output=True, text=True, timeout=30, check=False
    )
    assert (proc.returncode == 0) is healthy, proc.stderr
    assert handler.paths == ["/readyz"]
