"""The audit chain: appends verify, any change names the first broken entry, a torn tail is healed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsec.cli.main import main
from fedsec.telemetry.audit import AuditChainError, AuditLog, verify


def filled(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append("round-committed", round=i, kind="train")
    return log


def test_appended_entries_verify_and_chain(tmp_path: Path) -> None:
    log = filled(tmp_path / "a.jsonl")
    log.close()
    r = verify(tmp_path / "a.jsonl")
    assert r.ok and r.entries == 5 and r.head == log.head
    reopened = AuditLog(tmp_path / "a.jsonl")
    reopened.append("job-finished", status="Succeeded")
    reopened.close()
    assert verify(tmp_path / "a.jsonl").entries == 6


@pytest.mark.parametrize("attack", ["modify", "delete", "swap"])
def test_tampering_names_the_first_broken_entry(tmp_path: Path, attack: str) -> None:
    path = tmp_path / "a.jsonl"
    filled(path).close()
    lines = path.read_text().splitlines()
    if attack == "modify":
        entry = json.loads(lines[2])
        entry["data"]["round"] = 99
        lines[2] = json.dumps(entry)
    elif attack == "delete":
        del lines[2]
    else:
        lines[2], lines[3] = lines[3], lines[2]
    path.write_text("\n".join(lines) + "\n")
    r = verify(path)
    assert not r.ok and r.first_bad == 3
    with pytest.raises(AuditChainError, match="line 3"):
        AuditLog(path)  # never append to a broken chain


def test_torn_last_line_is_cut_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    filled(path, 3).close()
    with open(path, "ab") as fh:
        fh.write(b'{"seq": 4, "half')  # a crash in the middle of a write
    log = AuditLog(path)
    log.close()
    r = verify(path)
    assert r.ok and r.entries == 4
    assert json.loads(path.read_text().splitlines()[-1])["event"] == "audit-recovered"


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    filled(path).close()
    assert main(["audit", "verify", str(tmp_path)]) == 0
    path.write_text(path.read_text().replace('"round":1', '"round":7'))
    assert main(["audit", "verify", str(path)]) == 1
    assert "line 2" in capsys.readouterr().err
