"""Reading manifests: YAML files or directories in, typed objects or every error at once out."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedsec.api.client import FederatedClient
from fedsec.api.errors import FieldError, ManifestError
from fedsec.api.job import FederatedJob
from fedsec.api.meta import API_VERSION
from fedsec.api.scenario import Scenario

KINDS: dict[str, type[BaseModel]] = {
    "FederatedJob": FederatedJob,
    "FederatedClient": FederatedClient,
    "Scenario": Scenario,
}
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass
class Manifests:
    jobs: list[FederatedJob] = field(default_factory=list)
    clients: list[FederatedClient] = field(default_factory=list)
    scenarios: list[Scenario] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # object ref -> "file#doc"


def manifest_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise ManifestError([FieldError("", f"no such file or directory: {p}", source=str(p))])
    return files


def load(paths: Sequence[str | Path]) -> Manifests:
    """Parse and validate every document in ``paths``; raise ManifestError listing all problems."""
    out = Manifests()
    errors: list[FieldError] = []
    files = manifest_files(paths)
    if not files:
        raise ManifestError([FieldError("", "no .yaml or .yml manifests found", source=", ".join(map(str, paths)))])
    for f in files:
        errors.extend(_load_file(f, out))
    errors.extend(_check_unique(out))
    if errors:
        raise ManifestError(errors)
    return out


def _load_file(path: Path, out: Manifests) -> list[FieldError]:
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        return [FieldError("", f"file is larger than {MAX_MANIFEST_BYTES} bytes", source=str(path))]
    try:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return [FieldError("", f"not valid YAML: {exc}".replace("\n", " "), source=str(path))]
    errors: list[FieldError] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        source = f"{path}#{i}" if len(docs) > 1 else str(path)
        obj, errs = parse_document(doc, source)
        errors.extend(errs)
        if obj is None:
            continue
        out.sources[obj.ref] = source
        if isinstance(obj, FederatedJob):
            out.jobs.append(obj)
        elif isinstance(obj, FederatedClient):
            out.clients.append(obj)
        elif isinstance(obj, Scenario):
            out.scenarios.append(obj)
    return errors


def parse_document(doc: Any, source: str = "") -> tuple[Any, list[FieldError]]:
    """Validate one decoded YAML document. Returns (object or None, errors)."""
    if not isinstance(doc, dict):
        return None, [FieldError("", f"a manifest must be a mapping, got {type(doc).__name__}", source=source)]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if api_version != API_VERSION:
        return None, [FieldError("apiVersion", f"must be {API_VERSION!r} (got {api_version!r})", source=source)]
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        allowed = ", ".join(KINDS)
        return None, [FieldError("kind", f"must be one of {allowed} (got {kind!r})", source=source)]
    name = doc.get("metadata", {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    obj_ref = f"{kind}/{name}" if name else str(kind)
    try:
        return model.model_validate(doc), []
    except ValidationError as exc:
        return None, [
            FieldError(_path(e["loc"]), _message(model, e), source=source, obj=obj_ref) for e in exc.errors()
        ]


def _path(loc: Iterable[Any]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif str(p).startswith(("function-", "literal[", "union[")) or p in ("str", "int", "float", "bool"):
            continue  # pydantic's names for union members are noise to a user
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(object)"


def _message(model: type[BaseModel], err: Any) -> str:
    kind, msg, loc = err["type"], str(err["msg"]), tuple(err["loc"])
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown field {loc[-1]!r}{hint}"
    if kind == "missing":
        return "required field is missing"
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {err['input']!r})"
    return msg


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk ``loc`` through the model's fields to list the aliases valid at that place."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        current = _model_in(current)
        if current is None:
            return []
        field_info = next(
            (f for n, f in current.model_fields.items() if (f.alias or n) == part or n == part), None
        )
        if field_info is None:
            return []
        current = field_info.annotation
    current = _model_in(current)
    if current is None:
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


def _model_in(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, list, dict) or origin is not None:
        for arg in typing.get_args(tp):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _check_unique(m: Manifests) -> list[FieldError]:
    seen: dict[tuple[str, str, str], str] = {}
    errors: list[FieldError] = []
    for obj in [*m.jobs, *m.clients, *m.scenarios]:
        key = (obj.kind, obj.metadata.namespace, obj.metadata.name)
        if key in seen:
            errors.append(
                FieldError(
                    "metadata.name",
                    f"{obj.kind} {obj.metadata.namespace}/{obj.metadata.name} is defined twice "
                    f"(also in {seen[key]})",
                    source=m.sources.get(obj.ref, ""),
                    obj=obj.ref,
                )
            )
        else:
            seen[key] = m.sources.get(obj.ref, "")
    return errors
