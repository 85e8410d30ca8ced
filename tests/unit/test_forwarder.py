"""The forwarder against servers that are not the reference sink (no sockets: a fake transport)."""

from __future__ import annotations

import threading

import grpc
import pytest

from tagging_sidecar.config import GrpcSettings, InputFormat
from tagging_sidecar.errors import PermanentForwardError, RetryableForwardError
from tagging_sidecar.forward import HavilahClient
from tagging_sidecar.forward.dispatcher import ForwardingDispatcher
from tagging_sidecar.kafka.records import Chunk
from tagging_sidecar.kafka.watermark import PartitionWatermark
from tagging_sidecar.produce import encode, make_record

from ..sim.downstream import FakeServer
from ..sim.kafka import FakeMessage


def _payloads(ids: list[str]) -> list[bytes]:
    out = []
    for record_id in ids:
        record = make_record("x", 0)
        record.id = record_id
        out.append(encode(record, InputFormat.PROTOBUF))
    return out


def _client(server: FakeServer, mode: str = "batch") -> HavilahClient:
    settings = GrpcSettings.model_validate(
        {"retry_initial_backoff": 0.001, "retry_max_backoff": 0.001, "mode": mode}
    )
    return HavilahClient(settings, server)


@pytest.mark.parametrize("mode", ["batch", "single"])
def test_already_exists_isolates_the_batch_so_nothing_after_the_duplicate_is_lost(
    mode: str,
) -> None:
    server = FakeServer(idempotent=True, stored=["a3"])
    client = _client(server, mode=mode)
    ids = [f"a{i}" for i in range(10)]
    assert client.deliver(_payloads(ids)) == []
    assert set(server.stored) == set(ids)


def test_a_single_record_answered_already_exists_counts_as_delivered() -> None:
    server = FakeServer(idempotent=True, stored=["a0"])
    assert _client(server).deliver(_payloads(["a0"])) == []


def test_a_rejected_record_is_isolated_and_its_neighbours_are_delivered() -> None:
    server = FakeServer(reject_ids={"b5"})
    rejected = _client(server).deliver(_payloads([f"b{i}" for i in range(8)]))
    assert [index for index, _ in rejected] == [5]
    assert isinstance(rejected[0][1], PermanentForwardError)
    assert set(server.stored) >= {f"b{i}" for i in range(8) if i != 5}


def test_a_stream_aborted_halfway_is_sent_again_whole() -> None:
    server = FakeServer(abort_after=3)
    ids = [f"c{i}" for i in range(6)]
    assert _client(server).deliver(_payloads(ids)) == []
    assert set(server.stored) == set(ids)
    assert server.calls == 2


def test_a_server_that_counts_fewer_records_gets_the_batch_again() -> None:
    server = FakeServer(undercount=1)
    ids = [f"d{i}" for i in range(4)]
    assert _client(server).deliver(_payloads(ids)) == []
    assert server.stored == ids + ids


@pytest.mark.parametrize("error", [TimeoutError(), RuntimeError("loop gone")])
def test_a_local_failure_is_retried_not_taken_for_a_rejection(error: BaseException) -> None:
    server = FakeServer(local_error=error)
    ids = [f"e{i}" for i in range(3)]
    assert _client(server).deliver(_payloads(ids)) == []
    assert server.stored == ids


def test_a_server_with_only_stream_metric_gets_one_message_per_record() -> None:
    server = FakeServer(single_only=True)
    client = _client(server, mode="batch")
    ids = [f"f{i}" for i in range(5)]
    assert client.deliver(_payloads(ids)) == []
    assert server.stored == ids


def test_retries_end_when_the_client_is_cancelled() -> None:
    cancel = threading.Event()
    server = FakeServer(fail_next=[grpc.StatusCode.UNAVAILABLE] * 1000)
    server.hook = lambda: cancel.set() if server.calls >= 3 else None
    settings = GrpcSettings(retry_initial_backoff=0.001, retry_max_backoff=0.001)
    client = HavilahClient(settings, server, cancel=cancel)
    with pytest.raises(RetryableForwardError):
        client.deliver(_payloads(["g0"]))
    assert server.stored == []


def test_deadlines_of_our_own_do_not_use_up_max_attempts() -> None:
    server = FakeServer(fail_next=[grpc.StatusCode.DEADLINE_EXCEEDED] * 5)
    settings = GrpcSettings(retry_initial_backoff=0.001, retry_max_backoff=0.001, max_attempts=2)
    assert HavilahClient(settings, server).deliver(_payloads(["h0"])) == []
    assert server.stored == ["h0"]


def test_server_answers_use_up_max_attempts() -> None:
    server = FakeServer(fail_next=[grpc.StatusCode.UNAVAILABLE] * 5)
    settings = GrpcSettings(retry_initial_backoff=0.001, retry_max_backoff=0.001, max_attempts=2)
    with pytest.raises(RetryableForwardError):
        HavilahClient(settings, server).deliver(_payloads(["h1"]))
    assert server.calls == 2


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_one_attempt_raises_the_first_retryable_failure(code: grpc.StatusCode) -> None:
    # The poll loop's calls: it must not wait out an outage; a worker retries the batch.
    server = FakeServer(fail_next=[code] * 5)
    with pytest.raises(RetryableForwardError):
        _client(server).deliver(_payloads(["i0", "i1"]), once_within=0.5)
    assert server.calls == 1 and server.stored == []
    assert server.deadlines == [0.5]  # not the configured 10 s: a hang holds it half a second


def test_one_attempt_never_extends_the_configured_deadline() -> None:
    server = FakeServer()
    assert _client(server).deliver(_payloads(["k0"]), once_within=3600.0) == []
    assert server.deadlines == [GrpcSettings().timeout]


def test_one_attempt_still_isolates_a_rejected_record() -> None:
    # A permanent rejection is the server's verdict, not an outage: narrowed down as always.
    server = FakeServer(reject_ids={"j2"})
    rejected = _client(server).deliver(_payloads([f"j{i}" for i in range(4)]), once_within=5.0)
    assert [index for index, _ in rejected] == [2]
    assert set(server.stored) == {"j0", "j1", "j3"}


def test_the_dispatcher_names_each_rejected_record_by_its_own_chunk_and_offset() -> None:
    """A batch of several chunks is one list of payloads for the client; each record the
    server refuses comes back as a one-record chunk of its own partition and offset."""
    server = FakeServer(reject_ids={"b1", "c0"})
    dispatcher = ForwardingDispatcher(_client(server), ready_timeout=1.0)
    watermark = PartitionWatermark()
    chunks = []
    for partition, (name, offsets) in enumerate({"a": [0, 1], "b": [5, 9], "c": [7]}.items()):
        chunk = Chunk(("t", partition), watermark)
        payloads = _payloads([f"{name}{i}" for i in range(len(offsets))])
        for offset, payload in zip(offsets, payloads, strict=True):
            chunk.add(offset, payload, FakeMessage("t", partition, offset, b"k", payload))
        chunks.append(chunk)
    rejected = dispatcher.process(chunks)
    assert [(r.item.tp, r.item.offsets) for r in rejected] == [(("t", 1), [9]), (("t", 2), [7])]
    assert all(isinstance(r.error, PermanentForwardError) for r in rejected)
    refused = rejected[0].item.record(0)
    assert (refused.key, refused.value) == (b"k", chunks[1].payloads[1])
    assert set(server.stored) == {"a0", "a1", "b0"}  # halving sends some twice
