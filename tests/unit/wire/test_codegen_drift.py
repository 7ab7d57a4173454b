"""The committed protobuf modules are exactly what the .proto files generate."""

from __future__ import annotations

from pathlib import Path

from fedsec.wire import codegen


def test_generated_code_matches_the_proto_sources(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert written, "no .proto files found"
    committed_dir = codegen.PROTO_DIR
    stale = []
    for fresh in written:
        committed = committed_dir / fresh.name
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(fresh.name)
    assert not stale, f"regenerate with `python -m fedsec.wire.codegen`: {stale} differ from their .proto"
    orphans = {p.name for p in committed_dir.glob("*_pb2*.py*")} - {p.name for p in written}
    assert not orphans, f"generated files without a .proto: {sorted(orphans)}"
