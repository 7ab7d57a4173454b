"""How the CLI prints: problems and warnings on stderr, documents (``-o json|yaml``) on stdout.

One format for problems everywhere (``fedsec validate``, ``run``, ``simulate``): the count, then one
line per problem naming file, object and field; docs/cli.md shows it and scripts may match on it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import yaml

from fedsec.api.errors import FieldError

OutputFormat = Literal["text", "json", "yaml"]
FORMATS: tuple[OutputFormat, ...] = ("text", "json", "yaml")


def problems_text(errors: Iterable[FieldError], what: str = "in the manifests") -> str:
    listed = list(errors)
    lines = "\n".join(f"  - {e}" for e in listed)
    return f"{len(listed)} problem(s) {what}:\n{lines}"


def print_problems(errors: Iterable[FieldError], what: str = "in the manifests") -> None:
    print(problems_text(errors, what), file=sys.stderr)


def print_warnings(warnings: Iterable[FieldError | str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def error_dict(e: FieldError) -> dict[str, str]:
    """A problem as ``-o json|yaml`` prints it: its parts, and the line the text output shows."""
    return {"file": e.source, "object": e.obj, "field": e.path, "message": e.message, "text": str(e)}


def emit(document: Mapping[str, Any], fmt: OutputFormat) -> None:
    """Print ``document`` as one JSON or YAML document on stdout."""
    plain = _plain(document)
    if fmt == "json":
        print(json.dumps(plain, indent=2, allow_nan=False))
    else:
        # sort_keys=False: the order is the one a reader wants (status first, details after).
        sys.stdout.write(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))


def _plain(value: Any) -> Any:
    """JSON's values only: an unbounded epsilon (inf) is null, as strict JSON has no infinity."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
