"""``fedsec audit verify``: check an audit log's hash chain."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedsec.cli.output import FORMATS, OutputFormat, emit
from fedsec.runtime import exitcodes

AUDIT_FILE = "audit.jsonl"


def verify_command(args: argparse.Namespace) -> int:
    from fedsec.telemetry.audit import verify

    fmt: OutputFormat = args.output
    given = Path(args.path)
    path = given / AUDIT_FILE if given.is_dir() else given
    if not path.is_file():
        # Nothing to verify is not a broken chain: the path is wrong (CONFIG_ERROR), not the log.
        what = f"{given} is a directory without {AUDIT_FILE}" if given.is_dir() else f"{given}: no such file"
        return _report(fmt, {"ok": False, "path": str(path), "error": what}, exitcodes.CONFIG_ERROR,
                       f"{what}; give an audit.jsonl or the run directory that holds one")
    result = verify(path)
    doc: dict[str, Any] = {"ok": result.ok, "path": str(path), "entries": result.entries, "head": result.head}
    if result.ok:
        return _report(fmt, doc, exitcodes.OK, f"ok: {result.entries} entries, head {result.head[:16]}…")
    doc.update(first_bad_line=result.first_bad, reason=result.reason)
    return _report(fmt, doc, exitcodes.JOB_FAILED,
                   f"BROKEN: {path}: entry at line {result.first_bad}: {result.reason} "
                   f"({result.entries} entries before it verify)")


def _report(fmt: OutputFormat, doc: dict[str, Any], code: int, text: str) -> int:
    if fmt != "text":
        emit({**doc, "exit_code": code}, fmt)
    elif code == exitcodes.OK:
        print(text)
    else:
        print(text, file=sys.stderr)
    return code


def add_parser(sub: Any) -> None:
    a = sub.add_parser("audit", help="audit log tools", description="Audit log tools.")
    asub = a.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    av = asub.add_parser("verify", help="check the hash chain; name the first broken entry (exit 1 if broken)",
                         description="Check an audit log's hash chain and name the first entry that breaks it.")
    av.add_argument("path", metavar="PATH", help="audit.jsonl, or a run directory that holds one")
    av.add_argument("-o", "--output", choices=FORMATS, default="text",
                    help="text (default), or the result as one json or yaml document on stdout")
    av.set_defaults(fn=verify_command)
