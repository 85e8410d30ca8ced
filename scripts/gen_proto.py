"""Regenerate the committed protobuf and gRPC code from protos/ (run by `make proto`).

The proto path is mapped onto the package folder so the generated gRPC module imports its
messages as ``tagging_sidecar.contract.tagging.v1.tagging_pb2``; the proto package name
(``tagging.v1``), and therefore the wire contract, is unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE_PREFIX = "tagging_sidecar/contract"


def generate(out_dir: Path) -> None:
    """Write the generated modules for every .proto under protos/ into ``out_dir``."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PACKAGE_PREFIX}={PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[f"{PACKAGE_PREFIX}/{s}" for s in sources],
    ]
    # protoc finds the mypy plugins on PATH: put the running interpreter's bin folder first.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dir = out_dir / PACKAGE_PREFIX
    for folder in [package_dir, *[p for p in package_dir.rglob("*") if p.is_dir()]]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated code; regenerate with `make proto`."""\n')


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
