"""Regenerate the protobuf modules from ``proto/*.proto``.

No gRPC stubs: the aggregator serves the one method through a generic handler that receives raw
bytes (so malformed envelopes reach our own checks and are counted), and clients call it the same way.

The generated files are committed so that installing fedsec needs no code generator;
``tests/unit/wire/test_codegen_drift.py`` runs this into a temporary directory and fails when
the committed files differ. Run ``python -m fedsec.wire.codegen`` after editing a .proto.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds `fedsec/`
PROTO_DIR = Path(__file__).resolve().parent / "proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Generate into ``out_root`` (mirroring the package layout); return the files written."""
    import grpc_tools  # dev-only dependency
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    rel = [str(p.relative_to(PACKAGE_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PACKAGE_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    out_dir = out_root / PROTO_DIR.relative_to(PACKAGE_ROOT)
    return sorted(p for p in out_dir.glob("*_pb2*.py*"))


def main() -> int:
    written = generate(PACKAGE_ROOT)
    for p in written:
        print(p.relative_to(PACKAGE_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
