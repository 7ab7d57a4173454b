"""Reading manifests: YAML or JSON files, directories, or stdin in; typed objects or every error at once out.

Everything here is untrusted input. Before pydantic sees a document it is bounded: its size
(``MAX_MANIFEST_BYTES``), its nesting (``MAX_DEPTH``, checked while composing so the parser never
recurses deeper) and what its YAML aliases expand to (``MAX_ALIAS_EXPANSION``: safe_load shares an
aliased node, but anything that walks the result, pydantic included, pays for every copy). A key
given twice in one mapping is refused (YAML would keep the last one silently).
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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
MAX_DEPTH = 64  # the deepest manifest (a matchExpressions value list) is about 7 levels
MAX_ALIAS_EXPANSION = 10_000  # nodes that aliases may add to a document beyond the ones written out
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"  # the path that reads one stream from standard input
STDIN_SOURCE = "<stdin>"  # how errors name it

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class Manifests:
    jobs: list[FederatedJob] = field(default_factory=list)
    clients: list[FederatedClient] = field(default_factory=list)
    scenarios: list[Scenario] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # object ref -> "file#doc"

    def locate(self, errors: Iterable[FieldError]) -> list[FieldError]:
        """``errors`` with the file of the object each names, where the error did not say it: plan-time
        checks see objects, not files."""
        return [e if e.source or not e.obj else FieldError(e.path, e.message, self.sources.get(e.obj, ""), e.obj)
                for e in errors]

    def located(self, exc: ManifestError) -> ManifestError:
        """``exc`` (the same class: SitesRefused stays SitesRefused) with :meth:`locate`'s sources."""
        return type(exc)(self.locate(exc.errors))


class _Refused(Exception):
    """A document the loader will not hand on: ``message`` at 1-based ``line``/``column`` (0: unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column

    def where(self, source: str) -> str:
        if self.line:
            return f"{source}:{self.line}:{self.column}" if self.column else f"{source}:{self.line}"
        return source


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and nesting past MAX_DEPTH while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # The composer recurses once per level: stop before Python's own recursion limit would.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue  # '<<' merges may override; a non-scalar key is refused by SafeLoader itself
                key = self.construct_object(key_node)
                try:
                    prior = seen.setdefault(key, key_node)
                except TypeError:
                    continue
                if prior is not key_node:
                    mark = key_node.start_mark
                    raise _Refused(f"duplicate key {key!r} (first given at line {prior.start_mark.line + 1}); "
                                   "give each key once", mark.line + 1, mark.column + 1)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _measure(root: Node) -> None:
    """Refuse a composed document whose aliases nest it past MAX_DEPTH, refer to themselves, or
    expand it by more than MAX_ALIAS_EXPANSION nodes. Iterative and memoised per node: linear in
    what is written, however much it would expand."""
    height: dict[int, int] = {}
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        kids = _children(node)
        if done:
            open_.discard(key)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            continue
        if key in height:
            continue
        if key in open_:
            mark = node.start_mark
            raise _Refused("an alias refers to the node it is in (a recursive structure); write the values out",
                           mark.line + 1, mark.column + 1)
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in height)
    mark = root.start_mark
    if height[id(root)] > MAX_DEPTH:
        raise _Refused(f"aliases nest the document deeper than {MAX_DEPTH} levels", mark.line + 1, mark.column + 1)
    added = size[id(root)] - len(size)
    if added > MAX_ALIAS_EXPANSION:
        raise _Refused(f"aliases expand the document by {added} nodes, more than the {MAX_ALIAS_EXPANSION} "
                       "allowed (an alias bomb?); write the values out", mark.line + 1, mark.column + 1)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _yaml_documents(text: str) -> Iterator[Any]:
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader checks every character here, before any parsing
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                _measure(node)
            yield loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(p) for p in (exc.problem, _context(exc)) if p) or "not valid YAML"
        raise _Refused(f"not valid YAML: {what}", mark.line + 1 if mark else 0, mark.column + 1 if mark else 0) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise _Refused(f"not valid YAML: character #x{exc.character:04x} is not allowed in a manifest "
                       "(binary data?)", line, column) from None
    except yaml.YAMLError as exc:  # any other of PyYAML's errors: its text, without PyYAML's stream name
        raise _Refused(f"not valid YAML: {exc}".replace('"<unicode string>"', "the input").replace("\n", " ")) from None
    finally:
        if loader is not None:
            loader.dispose()


def _context(exc: yaml.MarkedYAMLError) -> str:
    if not exc.context:
        return ""
    mark = exc.context_mark
    if mark is None or mark is exc.problem_mark:
        return f"({exc.context})"
    return f"({exc.context} at line {mark.line + 1}, column {mark.column + 1})"


class _DuplicateJsonKey(Exception):
    pass


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateJsonKey(k)
        out[k] = v
    return out


def _json_documents(text: str) -> list[Any]:
    try:
        doc = json.loads(text, object_pairs_hook=_json_pairs)
    except json.JSONDecodeError as exc:
        raise _Refused(f"not valid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    except RecursionError:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels") from None
    except _DuplicateJsonKey as exc:
        # JSON is YAML too: its composer knows where the second key is.
        try:
            list(_yaml_documents(text))
        except _Refused as located:
            if located.message.startswith("duplicate key"):
                raise located from None
        raise _Refused(f"duplicate key {exc.args[0]!r}; give each key once") from None
    if _depth(doc) > MAX_DEPTH:
        raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
    return [doc]


def _depth(doc: Any) -> int:
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(value, dict):
            stack.extend((v, d + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, d + 1) for v in value)
    return deepest


def _read(path: Path) -> bytes:
    """At most MAX_MANIFEST_BYTES of ``path`` (or stdin), or _Refused."""
    if str(path) == STDIN:
        data = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
    else:
        try:
            with path.open("rb") as fh:  # read, not stat: a pipe or /dev/zero has no honest size
                data = fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise _Refused(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise _Refused(f"larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB; a manifest is a few kB")
    return data


def read_documents(path: Path) -> list[Any]:
    """The decoded documents of one file (``-``: stdin), bounded as the module says; raises
    ManifestError naming the file (and line) otherwise. JSON for ``.json`` (and stdin that starts
    with ``{``), YAML for the rest."""
    source = display_name(path)
    try:
        data = _read(path)
        try:
            text = data.decode("utf-8-sig")  # a BOM, as some Windows editors write, is not content
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise _Refused(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                           "manifests are UTF-8 YAML or JSON", line) from None
        as_json = path.suffix.lower() == ".json" or (str(path) == STDIN and text.lstrip().startswith("{"))
        docs = _json_documents(text) if as_json else list(_yaml_documents(text))
    except _Refused as exc:
        raise ManifestError([FieldError("", exc.message, source=exc.where(source))]) from None
    return docs


def display_name(path: Path) -> str:
    return STDIN_SOURCE if str(path) == STDIN else str(path)


def manifest_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files ``paths`` name: files as given, directories' own ``.yaml``/``.yml``/``.json`` files
    (not their subdirectories), ``-`` for stdin (once). Raises ManifestError for a missing path or
    a directory without manifests."""
    files: list[Path] = []
    errors: list[FieldError] = []
    for p in map(Path, paths):
        if str(p) == STDIN:
            if any(str(f) == STDIN for f in files):
                errors.append(FieldError("", "standard input can be read only once; give '-' once", STDIN_SOURCE))
            files.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in MANIFEST_SUFFIXES and q.is_file())
            if not found:
                errors.append(FieldError("", f"directory holds no manifests ({', '.join(MANIFEST_SUFFIXES)} files)",
                                         source=str(p)))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            errors.append(FieldError("", "no such file or directory", source=str(p)))
    if errors:
        raise ManifestError(errors)
    return files


def load(paths: Sequence[str | Path]) -> Manifests:
    """Parse and validate every document in ``paths``; raise ManifestError listing all problems."""
    out = Manifests()
    errors: list[FieldError] = []
    files = manifest_files(paths)
    if not files:
        raise ManifestError([FieldError("", "no manifests given")])
    documents = 0
    for f in files:
        try:
            docs = read_documents(f)
        except ManifestError as exc:
            errors.extend(exc.errors)
            continue
        documents += sum(d is not None for d in docs)
        errors.extend(_parse_documents(docs, display_name(f), out))
    if not errors and not documents:
        errors.append(FieldError("", "holds no manifests (only empty documents or comments)",
                                 source=", ".join(display_name(Path(p)) for p in paths)))
    errors.extend(_check_unique(out))
    if errors:
        raise ManifestError(errors)
    return out


def _parse_documents(docs: list[Any], source_name: str, out: Manifests) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        source = f"{source_name}#{i}" if len(docs) > 1 else source_name
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
        msg = f"{msg} (got {_shown(err['input'])})"
    return msg


def _shown(value: Any, limit: int = 80) -> str:
    """A value as an error shows it: its repr, cut short (a 4 MiB string is not a message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


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
