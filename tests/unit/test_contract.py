"""The committed generated code matches protos/ (run `make proto` after editing a .proto)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_has_no_drift(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert generated, "nothing was generated"
    for relative in generated:
        committed = ROOT / relative
        assert committed.exists(), f"{relative} is not committed"
        assert committed.read_text() == (tmp_path / relative).read_text(), f"{relative} drifted"


def test_public_names_of_the_contract() -> None:
    from tagging_sidecar.contract.tagging.v1 import tagging_pb2

    service = tagging_pb2.DESCRIPTOR.services_by_name["Havilah"]
    assert service.full_name == "tagging.v1.Havilah"
    methods = {m.name: m for m in service.methods}
    assert methods["StreamMetric"].input_type.full_name == "tagging.v1.Tagging"
    assert methods["StreamMetricBatch"].input_type.full_name == "tagging.v1.TaggingBatch"
    assert all(m.client_streaming and not m.server_streaming for m in methods.values())
    assert tagging_pb2.Tagging.DESCRIPTOR.fields_by_name["id"].number == 1
    assert tagging_pb2.TaggingBatch.DESCRIPTOR.fields_by_name["records"].number == 1
    received = tagging_pb2.StreamMetricResponse.DESCRIPTOR.fields_by_name["received"]
    assert received.number == 1
