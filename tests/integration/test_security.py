"""Security settings against real components: gRPC TLS and mutual TLS to the reference sink, and
SASL (PLAIN, SCRAM-SHA-512) to a real Kafka broker -- both the working and the refused cases.

Certificates are made per test module by a throwaway CA (``tests/support/certs.py``). The SASL
broker is a second local broker, started with ``kafka-local start --sasl`` for this module only.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tagging_sidecar.produce import produce
from tagging_sidecar.sink import ServerTls, SinkServer

from ..support.certs import CertificateAuthority, IssuedCertificate, make_ca
from ..support.harness import (
    SidecarProcess,
    all_committed,
    create_topic,
    eventually,
    offsets,
    read_ids,
    sidecar_env,
)
from ..support.inprocess import RunningSidecar, make_settings
from ..support.kafka_broker import LocalKafka

pytestmark = pytest.mark.integration

RECORDS = 300
PARTITIONS = 3
# How long a refused sidecar is watched after it has consumed everything: long enough for
# several handshake attempts (gRPC reconnects within ~0.2-1 s here), short enough to stay cheap.
REFUSED_WATCH_S = 2.0


@dataclass(frozen=True)
class Pki:
    """A CA with a server and a client certificate, and an unrelated CA with its own client."""

    ca: CertificateAuthority
    server: IssuedCertificate
    client: IssuedCertificate
    other_ca: CertificateAuthority
    other_client: IssuedCertificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "test-ca")
    other = make_ca(directory, "other-ca")
    return Pki(
        ca=ca,
        server=ca.issue("sink", server_names=["127.0.0.1", "localhost"]),
        client=ca.issue("sidecar", client=True),
        other_ca=other,
        other_client=other.issue("stranger", client=True),
    )


@pytest.fixture
def tls_sink(pki: Pki, tmp_path: Path) -> Iterator[Callable[[bool], SinkServer]]:
    """Start the reference sink with TLS (``True``: client certificates required)."""
    started: list[SinkServer] = []

    def start(mutual: bool) -> SinkServer:
        tls = ServerTls(
            pki.server.cert_file, pki.server.key_file, pki.ca.cert_file if mutual else None
        )
        server = SinkServer("127.0.0.1:0", record_path=tmp_path / "received.txt", tls=tls)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace=0.5)


def _deliver_everything(
    settings_bootstrap: str,
    admin_bootstrap: str,
    topic: str,
    group: str,
    target: str,
    received: Path,
    **sections: Any,
) -> None:
    """Produce RECORDS (unauthenticated), run the sidecar with ``sections``, and check that every
    record arrived and every offset was committed."""
    ids = produce({"bootstrap.servers": admin_bootstrap}, topic, RECORDS)
    settings = make_settings(settings_bootstrap, topic, group, target, **sections)
    with RunningSidecar(settings) as running:
        eventually(lambda: set(read_ids(received)) == set(ids), timeout=60)
        eventually(all_committed(admin_bootstrap, group, topic, PARTITIONS), timeout=30)
        summary = running.stop()
    assert summary.forwarded >= RECORDS
    assert set(read_ids(received)) == set(ids)


# --------------------------------------------------------------------------- gRPC TLS / mTLS


@pytest.mark.parametrize(
    ("mutual", "host", "mode"),
    [
        (False, "127.0.0.1", "batch"),
        (True, "127.0.0.1", "batch"),
        (True, "localhost", "batch"),
        # StreamMetric goes over the sidecar's own HTTP/2 client: the same TLS settings apply.
        (False, "127.0.0.1", "single"),
        (True, "localhost", "single"),
    ],
    ids=["tls", "mtls", "mtls-by-name", "tls-single", "mtls-by-name-single"],
)
def test_tls_sink_receives_every_record(
    mutual: bool,
    host: str,
    mode: str,
    pki: Pki,
    tls_sink: Callable[[bool], SinkServer],
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    tmp_path: Path,
) -> None:
    sink = tls_sink(mutual)
    grpc_tls: dict[str, Any] = {"tls": True, "ca_file": pki.ca.cert_file, "mode": mode}
    if mutual:
        grpc_tls |= {"cert_file": pki.client.cert_file, "key_file": pki.client.key_file}
    _deliver_everything(
        kafka_bootstrap,
        kafka_bootstrap,
        topic_factory(PARTITIONS),
        group_id,
        f"{host}:{sink.port}",
        tmp_path / "received.txt",
        grpc=grpc_tls,
    )
    assert sink.counters.records >= RECORDS


def _refused_pki(case: str, pki: Pki) -> dict[str, Any]:
    if case == "no-client-cert":
        return {"tls": True, "ca_file": pki.ca.cert_file}
    if case == "client-cert-of-another-ca":
        return {
            "tls": True,
            "ca_file": pki.ca.cert_file,
            "cert_file": pki.other_client.cert_file,
            "key_file": pki.other_client.key_file,
        }
    if case == "server-cert-not-trusted":
        return {
            "tls": True,
            "ca_file": pki.other_ca.cert_file,
            "cert_file": pki.client.cert_file,
            "key_file": pki.client.key_file,
        }
    assert case == "plaintext-client"
    return {"tls": False}


@pytest.mark.parametrize(
    "case",
    ["no-client-cert", "client-cert-of-another-ca", "server-cert-not-trusted", "plaintext-client"],
)
def test_mtls_sink_refuses_a_sidecar_without_valid_credentials(
    case: str,
    pki: Pki,
    tls_sink: Callable[[bool], SinkServer],
    kafka_bootstrap: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    tmp_path: Path,
) -> None:
    sink = tls_sink(True)
    topic = topic_factory(PARTITIONS)
    produce({"bootstrap.servers": kafka_bootstrap}, topic, RECORDS)
    settings = make_settings(
        kafka_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        grpc={**_refused_pki(case, pki), "timeout": 1},
        shutdown={"grace_period": 0.5},
    )
    with RunningSidecar(settings) as running:
        sidecar = running.sidecar
        # Everything was read from Kafka and handed to the workers, which keep trying.
        eventually(lambda: sidecar.summary.consumed >= RECORDS, timeout=60)
        time.sleep(REFUSED_WATCH_S)
        ready, why = sidecar.health.ready()
        summary = running.stop()
    assert not ready
    assert why == f"gRPC downstream 127.0.0.1:{sink.port} not reachable"
    assert sink.counters.calls == 0
    assert read_ids(tmp_path / "received.txt") == []
    assert summary.forwarded == 0
    committed, ends = offsets(kafka_bootstrap, group_id, topic, PARTITIONS)
    assert all(c < e for c, e in zip(committed, ends, strict=True)), (committed, ends)


def _health_check(target: str, credentials: grpc.ChannelCredentials | None) -> str:
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service="tagging.v1.Havilah"), timeout=3
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def test_sink_command_serves_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tagging_sidecar.cli", "sink",
            "--listen", "127.0.0.1:0", "--port-file", str(port_file),
            "--tls-cert", str(pki.server.cert_file), "--tls-key", str(pki.server.key_file),
            "--tls-client-ca", str(pki.ca.cert_file), "--log-format", "json",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        eventually(lambda: port_file.is_file() and port_file.read_text().strip() != "", timeout=30)
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        ca = pki.ca.cert_file.read_bytes()
        mutual = grpc.ssl_channel_credentials(
            ca, pki.client.key_file.read_bytes(), pki.client.cert_file.read_bytes()
        )
        assert _health_check(target, mutual) == "SERVING"
        assert _health_check(target, grpc.ssl_channel_credentials(ca)) == "UNAVAILABLE"
        assert _health_check(target, None) == "UNAVAILABLE"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert '"security": "mtls"' in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "x.crt"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.crt"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], "is not a readable file"),
    ],
)
def test_sink_command_refuses_incomplete_tls_flags(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tagging_sidecar.cli", "sink", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert message in proc.stderr


# --------------------------------------------------------------------------- Kafka SASL


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of its own with a SASL_PLAINTEXT listener (PLAIN and SCRAM-SHA-512)."""
    broker = LocalKafka(tmp_path_factory.mktemp("kafka-sasl"), sasl=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_consumer_delivers_every_record(
    mechanism: str, sasl_kafka: LocalKafka, sink: SinkServer, group_id: str, tmp_path: Path
) -> None:
    topic = f"sasl-{mechanism.lower()}"
    create_topic(sasl_kafka.bootstrap, topic, PARTITIONS)
    _deliver_everything(
        sasl_kafka.sasl_bootstrap,
        sasl_kafka.bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        tmp_path / "received.txt",
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_username": sasl_kafka.sasl_username,
            "sasl_password": sasl_kafka.sasl_password,
        },
    )


def test_sasl_wrong_password_consumes_nothing_and_never_logs_it(
    sasl_kafka: LocalKafka, sink: SinkServer, group_id: str, tmp_path: Path
) -> None:
    topic = "sasl-wrong-password"
    create_topic(sasl_kafka.bootstrap, topic, PARTITIONS)
    produce({"bootstrap.servers": sasl_kafka.bootstrap}, topic, RECORDS)
    wrong = "not-the-password-9f3c1a77"
    assert wrong != sasl_kafka.sasl_password
    env = sidecar_env(
        sasl_kafka.sasl_bootstrap,
        topic,
        group_id,
        f"127.0.0.1:{sink.port}",
        KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA__SASL_USERNAME=sasl_kafka.sasl_username,
        KAFKA__SASL_PASSWORD=wrong,
        LOG__LEVEL="DEBUG",
        SHUTDOWN__GRACE_PERIOD="2",
    )
    sidecar = SidecarProcess(env, tmp_path / "sidecar.log")
    try:
        # The sidecar reports the refusal itself (librdkafka keeps retrying, never consumes).
        eventually(lambda: '"code": "_AUTHENTICATION"' in sidecar.log(), timeout=30)
        time.sleep(REFUSED_WATCH_S)
        assert read_ids(tmp_path / "received.txt") == []
        assert sink.counters.calls == 0
    finally:
        status = sidecar.terminate(timeout=60)
    log = sidecar.log()
    assert status == 0, log[-3000:]
    assert "sidecar started" in log
    assert wrong not in log
    assert sasl_kafka.sasl_password not in log
    committed, _ends = offsets(sasl_kafka.bootstrap, group_id, topic, PARTITIONS)
    assert all(c < 0 for c in committed), committed  # nothing committed, ever
