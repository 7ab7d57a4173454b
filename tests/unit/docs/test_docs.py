"""README.md and docs/ say only what is true of this repository.

Every relative link resolves to a file in the repository and every anchor to a heading; every
example path a doc names exists; every manifest a documented ``fedsec validate|run|simulate`` reads
validates; every flag and subcommand a doc gives ``fedsec`` is one its parser has; every ``make``
target is in the Makefile; every table renders; documented ``fedsec validate`` transcripts print what
the doc shows. Failures name the doc, the line and what is wrong.

The checker is plain functions over a parsed doc, so the tests at the end can show that each check
catches the defect it is for (a checker that passes everything would prove nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

from fedsec.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[3]
DOC_PATHS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_IDS = [str(p.relative_to(ROOT)) for p in DOC_PATHS]


# -- parsing -----------------------------------------------------------------------------------

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)")


@dataclass(frozen=True)
class CodeBlock:
    line: int  # 1-based line of the first content line
    info: str  # the fence's language word
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Span:
    line: int
    text: str


@dataclass
class Doc:
    path: Path  # where it is (links resolve from its directory)
    name: str  # how failures name it
    lines: list[str]
    prose: list[str] = field(default_factory=list)  # the lines with fenced code blanked
    blocks: list[CodeBlock] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)  # inline code spans outside fenced code
    masked: list[str] = field(default_factory=list)  # prose with inline code blanked (for links)


def parse_doc(path: Path, text: str | None = None, name: str | None = None) -> Doc:
    raw = path.read_text(encoding="utf-8") if text is None else text
    doc = Doc(path, name or _rel(path), raw.split("\n"))
    fence: tuple[str, int] | None = None  # (fence characters, length) of the open block
    start, info, body = 0, "", []
    for i, line in enumerate(doc.lines, start=1):
        m = _FENCE.match(line)
        if fence is None:
            if m:
                fence, start, info, body = (m.group(2)[0], len(m.group(2))), i + 1, m.group(3), []
                doc.prose.append("")
            else:
                doc.prose.append(line)
            continue
        closing = m is not None and m.group(2)[0] == fence[0] and len(m.group(2)) >= fence[1] and not m.group(3)
        if closing:
            doc.blocks.append(CodeBlock(start, info, tuple(body)))
            fence = None
        else:
            body.append(line)
        doc.prose.append("")
    if fence is not None:  # an unclosed fence runs to the end of the file on GitHub: everything after is code
        doc.blocks.append(CodeBlock(start, info, tuple(body)))
    prose = "\n".join(doc.prose)
    masked = list(prose)
    # A code span may wrap onto the next line, never across a blank line (that ends the paragraph).
    for m in re.finditer(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", prose, re.S):
        doc.spans.append(Span(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split())))
        for k in range(m.start(), m.end()):
            if masked[k] != "\n":
                masked[k] = " "
    doc.masked = "".join(masked).split("\n")
    return doc


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


@cache
def load_doc(path: Path) -> Doc:
    return parse_doc(path)


# -- headings and their anchors ----------------------------------------------------------------


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, punctuation other than
    '-' and '_' dropped, each space a hyphen (github-slugger's rule)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "")
    text = re.sub(r"(\*\*|__|\*|~~)", "", text)  # emphasis markers
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(doc: Doc) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    for i, line in enumerate(doc.prose):
        text = None
        m = re.match(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", line)
        if m:
            text = m.group(2)
        elif i > 0 and doc.prose[i - 1].strip() and re.match(r"^ {0,3}(=+|-+)[ \t]*$", line) \
                and "|" not in doc.prose[i - 1] and not re.match(r"^\s*([-*+]|\d+\.)\s", doc.prose[i - 1]):
            text = doc.prose[i - 1].strip()  # a setext heading
        if text is not None:
            slug = github_slug(text)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")  # GitHub numbers repeated headings
        for a in re.finditer(r"<a\s[^>]*(?:id|name)=\"([^\"]+)\"", line):
            out.add(a.group(1))
    return out


# -- links -------------------------------------------------------------------------------------

_INLINE_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*(?:href|src)=\"([^\"]*)\"")


def links(doc: Doc) -> Iterator[tuple[int, str]]:
    for i, line in enumerate(doc.masked, start=1):
        for m in _INLINE_LINK.finditer(line):
            yield i, m.group(3).strip("<>")
        m = _REF_DEF.match(line)
        if m:
            yield i, m.group(1).strip("<>")
        for m in _HTML_LINK.finditer(line):
            yield i, m.group(1)


def link_problem(doc: Doc, target: str, root: Path = ROOT) -> str | None:
    """What is wrong with a link from ``doc``, or None."""
    if not target:
        return "empty link target"
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", target)
    if scheme:
        if scheme.group(1).lower() not in ("http", "https", "mailto"):
            return f"link {target!r}: only http(s) and mailto links may leave the repository"
        if re.match(r"^https?://(localhost|127\.|0\.0\.0\.0|\[::1\])", target):
            return f"link {target!r} points at this machine, not a public site"
        return None
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part)
    if not path_part:
        dest = doc.path
    elif path_part.startswith("/"):  # GitHub resolves these from the repository's root
        dest = Path(os.path.normpath(root / path_part.lstrip("/")))
    else:
        dest = Path(os.path.normpath(doc.path.parent / path_part))
    if dest != root and root not in dest.parents:
        return f"link {target!r} leaves the repository (resolves to {dest}): a user's clone has nothing there"
    if not dest.exists():
        return f"link {target!r}: no such file or directory {_rel_to(dest, root)}"
    if anchor:
        if dest.suffix == ".md" and dest.is_file():
            known = anchors(doc if dest == doc.path else load_doc(dest))
            if anchor not in known:
                return f"link {target!r}: {_rel_to(dest, root)} has no heading with the anchor #{anchor}"
        elif not (dest.is_file() and re.fullmatch(r"L\d+(-L\d+)?", anchor)):
            return f"link {target!r}: an anchor into {_rel_to(dest, root)}, which is not a Markdown file"
    return None


def _rel_to(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def link_problems(doc: Doc, root: Path = ROOT) -> list[str]:
    out = [f"{doc.name}:{line}: {p}" for line, t in links(doc) if (p := link_problem(doc, t, root))]
    for i, line in enumerate(doc.lines, start=1):
        if "../shared" in line:  # the design notes beside the clone: never in a user's copy
            out.append(f"{doc.name}:{i}: names '../shared', which is outside the repository")
    return out


# -- paths a doc names -------------------------------------------------------------------------

_EXAMPLE_PATH = re.compile(r"(?<![\w./-])examples/[\w.*/-]*")


def example_path_problems(doc: Doc, root: Path = ROOT) -> list[str]:
    """Every ``examples/...`` the doc names, in prose or code, exists (a glob matches something; a
    path cut short by '…' is the start of one)."""
    out = []
    for i, line in enumerate(doc.lines, start=1):
        for m in _EXAMPLE_PATH.finditer(line):
            path = m.group(0).rstrip(".,:;")
            elided = line[m.end():m.end() + 1] == "…"
            pattern = path + "*" if elided else path
            if "*" in pattern:
                ok = bool(glob.glob(str(root / pattern)))
            else:
                ok = (root / path).exists()
            if not ok:
                out.append(f"{doc.name}:{i}: names {path}{'…' if elided else ''}, which does not exist")
    return out


# The top-level directories a doc names files under (a code span such as `tests/unit/x.py`).
_REPO_DIRS = ("operator/", "tests/", "benchmarks/", "charts/", "crds/", "images/", "docs/", "fedsec/")


def repo_path_problems(doc: Doc, root: Path = ROOT) -> list[str]:
    """Every repository file a code span or a shell block names exists: a test, a module, a
    benchmark or a chart file a doc sends the reader to must be there. ``fedsec/...`` is the
    package, under operator/."""
    named = [(span.line, word) for span in doc.spans for word in span.text.split()[:1]]
    named += [(block.line + k, word) for block in doc.blocks if block.info in _SHELL
              for k, line in enumerate(block.lines) for word in _strip_comment(line)[0].split()]
    out = []
    for line, word in named:
        if not word.startswith(_REPO_DIRS) or any(c in word for c in "<>…{}$=|"):
            continue
        path = re.split(r"::|:(?=[A-Za-z_])", word)[0].rstrip(".,;:)")  # file::test, module.py:function
        if path.startswith("fedsec/"):
            path = "operator/" + path
        hits = glob.glob(str(root / path)) if "*" in path else ([path] if (root / path).exists() else [])
        if not hits:
            out.append(f"{doc.name}:{line}: names {word}, but {path} does not exist")
    return out


_SHELL = ("", "bash", "sh", "shell", "console")


# -- commands in code ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    line: int
    argv: tuple[str, ...]  # after the program: fedsec's or make's arguments
    program: str  # "fedsec" or "make"
    comment: str  # the shell comment on the same line, if any
    output: tuple[str, ...] = ()  # a transcript's lines printed after it
    synopsis: bool = False  # a usage line ("fedsec run [--quiet] DIR"): its words are metavariables


def _strip_comment(line: str) -> tuple[str, str]:
    """Split off a shell comment: a '#' at the start of a word, outside quotes."""
    quote = ""
    for k, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k], line[k + 1:].strip()
    return line, ""


def _words(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lex.whitespace_split = True
    lex.commenters = ""
    try:
        return list(lex)
    except ValueError:  # unbalanced quotes (prose in a transcript): words are enough here
        return text.split()


def _simple_commands(words: list[str]) -> Iterator[list[str]]:
    cur: list[str] = []
    for w in words:
        if w and set(w) <= set(";&|()"):
            if cur:
                yield cur
            cur = []
        else:
            cur.append(w)
    if cur:
        yield cur


def _program(words: list[str]) -> tuple[str, list[str]] | None:
    """("fedsec", args) or ("make", args) for a simple command that runs one, else None."""
    k = 0
    while k < len(words) and (re.match(r"^[A-Za-z_]\w*=", words[k]) or words[k] in ("nice", "time", "exec", "do", "then")):
        k += 1
    rest = words[k:]
    if len(rest) >= 2 and rest[0] == "uv" and rest[1] == "run":
        rest = rest[2:]
        while rest and rest[0].startswith("-"):
            rest = rest[1:]
    if not rest:
        return None
    head = rest[0].rsplit("/", 1)[-1]
    if head == "fedsec":
        return "fedsec", rest[1:]
    if re.fullmatch(r"python(3(\.\d+)?)?", head) and rest[1:3] == ["-m", "fedsec"]:
        return "fedsec", rest[3:]
    if head == "make":
        return "make", rest[1:]
    return None


_SYNOPSIS = re.compile(r"^\s*usage:|\[\s*-|\[[A-Z]|\{\w+(,\w+)+\}")


def _unbracket(text: str) -> str:
    """A usage line's words without its brackets; a '|' between alternatives is not a pipe."""
    out, depth = [], 0
    for c in text:
        if c in "[{":
            depth += 1
            c = " "
        elif c in "]}":
            depth = max(0, depth - 1)
            c = " "
        elif depth and c in "|,":
            c = " "
        out.append(c)
    return re.sub(r"^\s*usage:", "", "".join(out))


def _programs(code: str) -> Iterator[tuple[str, list[str], bool]]:
    """(program, args, synopsis) for each fedsec or make command in a line of shell or a usage line."""
    synopsis = bool(_SYNOPSIS.search(code))
    for words in _simple_commands(_words(_unbracket(code) if synopsis else code)):
        found = _program(words)
        if found:
            yield found[0], found[1], synopsis


def commands(doc: Doc) -> Iterator[Command]:
    for block in doc.blocks:
        transcript = any(line.lstrip().startswith("$ ") for line in block.lines)
        logical: list[tuple[int, str, list[str]]] = []  # (line, command text, output lines after it)
        pending = ""
        for n, line in enumerate(block.lines, start=block.line):
            stripped = line.strip()
            if transcript:
                if stripped.startswith("$ "):
                    logical.append((n, stripped[2:], []))
                elif logical:
                    logical[-1][2].append(line)
                continue
            if pending:
                pending += " " + stripped
            else:
                pending, first = stripped, n
            if pending.endswith("\\"):
                pending = pending[:-1]
                continue
            logical.append((first, pending, []))
            pending = ""
        for n, text, output in logical:
            code, comment = _strip_comment(text)
            for program, args, synopsis in _programs(code):
                yield Command(n, tuple(args), program, comment, tuple(output), synopsis)
    for span in doc.spans:
        for program, args, synopsis in _programs(span.text):
            yield Command(span.line, tuple(args), program, "", (), synopsis)


# -- fedsec's parser -----------------------------------------------------------------------------


@cache
def _fedsec_parser() -> argparse.ArgumentParser:
    return build_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@dataclass(frozen=True)
class Parsed:
    path: tuple[str, ...]  # the subcommands, e.g. ("audit", "verify")
    positionals: tuple[str, ...]
    problems: tuple[str, ...]


def parse_fedsec(argv: tuple[str, ...], parser: argparse.ArgumentParser | None = None) -> Parsed:
    """Walk fedsec's own parser over documented arguments: the subcommands it has, the flags each
    takes (and whether a flag takes a value), the positionals left over."""
    parser = parser or _fedsec_parser()
    path: list[str] = []
    problems: list[str] = []
    rest = list(argv)
    while True:
        subs = _subparsers(parser)
        if not subs:
            break
        if not rest or rest[0].startswith("-"):
            if rest and rest[0] in parser._option_string_actions:  # fedsec --version, fedsec -h
                break
            if not rest:  # `fedsec audit` alone, in prose, names the command group
                return Parsed(tuple(path), (), ())
            problems.append(f"'{' '.join(['fedsec', *path, rest[0]])}': no such flag (subcommands: {', '.join(sorted(subs))})")
            return Parsed(tuple(path), (), tuple(problems))
        if re.fullmatch(r"[A-Z][A-Z_]*", rest[0]):  # `fedsec COMMAND --help`: any subcommand
            return Parsed(tuple(path), (), ())
        if rest[0] not in subs:
            problems.append(f"'fedsec {' '.join([*path, rest[0]])}': fedsec has no subcommand {rest[0]!r}"
                            f"{' under ' + ' '.join(path) if path else ''} (it has: {', '.join(sorted(subs))})")
            return Parsed(tuple(path), (), tuple(problems))
        path.append(rest.pop(0))
        parser = subs[path[-1]]
    positionals: list[str] = []
    while rest:
        word = rest.pop(0)
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            action = parser._option_string_actions.get(flag)
            if action is None:
                known = sorted(s for s in parser._option_string_actions if s.startswith("--"))
                problems.append(f"'fedsec {' '.join(path)} {flag}': no such flag (it has: {', '.join(known)})")
                continue
            if action.nargs != 0 and "=" not in word and rest:
                rest.pop(0)
        else:
            positionals.append(word)
    return Parsed(tuple(path), tuple(positionals), tuple(problems))


# -- the Makefile --------------------------------------------------------------------------------


@cache
def make_targets(makefile: Path = ROOT / "Makefile") -> frozenset[str]:
    out: set[str] = set()
    for line in makefile.read_text(encoding="utf-8").split("\n"):
        if line.startswith(("\t", "#")):
            continue
        m = re.match(r"^([^:=#\s][^:=#]*?)\s*::?(?!=)", line)
        if m:
            out.update(t for t in m.group(1).split() if not t.startswith("$"))
    return frozenset(out)


def make_problems(doc: Doc, makefile: Path = ROOT / "Makefile") -> list[str]:
    targets = make_targets(makefile)
    out = []
    for cmd in commands(doc):
        if cmd.program != "make":
            continue
        words = list(cmd.argv)
        while words:
            w = words.pop(0)
            if w in ("-C", "-f", "-j") and words:  # their value is not a target
                words.pop(0)
            elif w.startswith("-") or "=" in w or "…" in w:  # a flag, a variable, the rest elided
                continue
            elif w not in targets:
                out.append(f"{doc.name}:{cmd.line}: 'make {w}': the Makefile has no target {w!r} "
                           f"(it has: {', '.join(sorted(t for t in targets if not t.startswith('.')))})")
    return out


# -- fedsec commands -------------------------------------------------------------------------


def flag_problems(doc: Doc, parser: argparse.ArgumentParser | None = None) -> list[str]:
    return [f"{doc.name}:{cmd.line}: {p}" for cmd in commands(doc) if cmd.program == "fedsec"
            for p in parse_fedsec(cmd.argv, parser).problems]


def is_placeholder(path: str) -> bool:
    """A path the reader fills in or makes first (DIR, RUN_DIR, runs/JOB-…, /tmp/x), not one in the repository."""
    return (any(c in path for c in "…<>$") or path.startswith("/tmp/")
            or any(re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?", part) for part in path.split("/")))


def _expected_exit(cmd: Command) -> int:
    """The exit code the doc says a documented `fedsec validate` ends with: 'exits 3' in the line's
    comment (not 'exit 2 if invalid', a condition), or a transcript's printed problems (2)."""
    m = re.search(r"\bexits?(?: with)?(?: code)? (\d+)\b(?!\s+(?:if|when|unless)\b)", cmd.comment)
    if m:
        return int(m.group(1))
    if cmd.output and re.match(r"\s*\d+ problem\(s\) in the manifests", cmd.output[0]):
        return 2
    return 0


@dataclass(frozen=True)
class Input:
    """What a documented command reads, and the exit `fedsec validate` must give it."""
    doc: str
    line: int
    command: str
    paths: tuple[str, ...]  # the manifests it names in the repository
    args: tuple[str, ...] | None  # validate's arguments reproducing it, None if the reader fills some in
    expected: int

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {' '.join(self.paths)}"


def documented_inputs(doc: Doc) -> list[Input]:
    out = []
    for cmd in commands(doc):
        if cmd.program != "fedsec" or cmd.synopsis or not cmd.argv or cmd.argv[0] not in ("validate", "run", "simulate"):
            continue
        parsed = parse_fedsec(cmd.argv)
        if parsed.problems or not parsed.path:
            continue  # flag_problems reports it
        paths = tuple(p for p in parsed.positionals if not is_placeholder(p))
        if not paths:
            continue
        # validate's own flags and paths, as written; for run and simulate, what they read: the state
        # a run refuses on (a ledger, a busy run directory) is not in the manifests, which must validate.
        if parsed.path[0] == "validate":
            args: tuple[str, ...] | None = cmd.argv[1:]
            expected = _expected_exit(cmd)
        else:
            args, expected = tuple(parsed.positionals), 0
        if any(is_placeholder(a) for a in args):
            args = None
        out.append(Input(doc.name, cmd.line, " ".join(("fedsec", *cmd.argv)), paths, args, expected))
    return out


def run_validate(args: list[str]) -> int:
    try:
        return int(main(["validate", *args]))
    except SystemExit as exc:  # argparse's own refusal
        return int(exc.code) if isinstance(exc.code, int) else 1


# -- tables --------------------------------------------------------------------------------------

_DELIMITER = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def table_cells(row: str) -> list[str]:
    """A row's cells as GitHub splits them: at every '|' not escaped as '\\|' — inside backticks
    too, where an unescaped '|' ends the cell and the span with it."""
    s = row.strip()
    parts = re.split(r"(?<!\\)\|", s)
    if s.startswith("|"):
        parts = parts[1:]
    if re.search(r"(?<!\\)\|$", s):
        parts = parts[:-1]
    return parts


def table_problems(doc: Doc) -> list[str]:
    out = []
    lines = doc.prose
    i = 0
    while i < len(lines):
        line = lines[i]
        if "|" in line and i + 1 < len(lines) and _DELIMITER.match(lines[i + 1]) and "-" in lines[i + 1]:
            header = table_cells(line)
            delim = table_cells(lines[i + 1])
            if len(header) != len(delim):
                out.append(f"{doc.name}:{i + 1}: table header has {len(header)} cells but its delimiter row "
                           f"{len(delim)}: GitHub renders no table")
            j = i + 2
            while j < len(lines) and lines[j].strip() and not re.match(r"^\s{0,3}(#|>|```|~~~)", lines[j]):
                cells = table_cells(lines[j])
                if len(cells) != len(header):
                    hint = ""
                    if any(c.count("`") % 2 for c in cells):
                        hint = " (a '|' inside backticks still splits the cell on GitHub: write it as '\\|')"
                    out.append(f"{doc.name}:{j + 1}: table row has {len(cells)} cells, its header {len(header)}{hint}")
                j += 1
            i = j
            continue
        if re.match(r"^\s*\|.*\|\s*$", line):
            out.append(f"{doc.name}:{i + 1}: a table row outside any table (GitHub shows it as text): "
                       f"it must follow its table's rows with no blank or text line between")
        i += 1
    return out


# -- the transcripts of `fedsec validate` --------------------------------------------------------


def validate_transcripts(doc: Doc) -> list[int]:
    """The first lines of the blocks that show `$ fedsec validate` and what it prints."""
    return [b.line for b in doc.blocks if any(line.strip().startswith("$ fedsec validate") for line in b.lines)]


_SED = re.compile(r"^\$ sed '(s(.)(.*?)\2(.*?)\2g?)' (\S+) > (\S+)$")


def replay(doc: Doc, block_line: int, tmp: Path) -> list[str]:
    """Run a transcript's commands, the reader's files under ``tmp``; return what differs from the doc."""
    block = next(b for b in doc.blocks if b.line == block_line)
    problems: list[str] = []
    files: dict[str, Path] = {}
    k = 0
    lines = list(block.lines)
    while k < len(lines):
        line = lines[k].strip()
        n = block.line + k
        k += 1
        if not line.startswith("$ "):
            continue
        m = _SED.match(line)
        if m:
            _, _, old, new, src, dst = m.groups()
            text = (ROOT / src).read_text(encoding="utf-8")
            if old not in text:
                problems.append(f"{doc.name}:{n}: {src} has no {old!r} for the doc's sed to replace")
            files[dst] = tmp / Path(dst).name
            files[dst].write_text(text.replace(old, new), encoding="utf-8")
            continue
        words = _words(_strip_comment(line[2:])[0])
        if words[:2] != ["fedsec", "validate"]:
            problems.append(f"{doc.name}:{n}: a `fedsec validate` transcript may run only sed and fedsec validate, not {line!r}")
            continue
        shown = []
        while k < len(lines) and not lines[k].strip().startswith("$ "):
            shown.append(lines[k])
            k += 1
        paths = [str(files.get(p, p)) for p in words[2:]]
        code, out = _capture_validate(paths)
        expected = 2 if shown and re.match(r"\s*\d+ problem\(s\) in the manifests", shown[0]) else 0
        if code != expected:
            problems.append(f"{doc.name}:{n}: {line[2:]!r} exits {code}, the doc shows exit {expected}:\n{out}")
        for dst, real in files.items():
            out = out.replace(str(real), dst)
        problems.extend(f"{doc.name}:{n}: the doc shows {s.strip()!r}, but fedsec validate printed:\n{out}"
                        for s in shown if s.strip() and not _shown_in(s.strip(), out))
    return problems


def _shown_in(shown: str, printed: str) -> bool:
    """A line the doc shows is a line printed: the same text, where '…' stands for what the doc cut."""
    pattern = ".*".join(re.escape(part) for part in shown.split("…"))
    return any(re.fullmatch(pattern, line.strip()) for line in printed.split("\n"))


def _capture_validate(args: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = run_validate(args)
    return code, buf.getvalue()


# -- the tests over the real docs ----------------------------------------------------------------


def _fail(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.mark.parametrize("path", DOC_PATHS, ids=DOC_IDS)
def test_links_resolve_inside_the_repository(path: Path) -> None:
    _fail(link_problems(load_doc(path)))


@pytest.mark.parametrize("path", DOC_PATHS, ids=DOC_IDS)
def test_named_examples_and_repository_files_exist(path: Path) -> None:
    doc = load_doc(path)
    _fail(example_path_problems(doc) + repo_path_problems(doc))


@pytest.mark.parametrize("path", DOC_PATHS, ids=DOC_IDS)
def test_fedsec_subcommands_and_flags_are_the_parsers(path: Path) -> None:
    _fail(flag_problems(load_doc(path)))


@pytest.mark.parametrize("path", DOC_PATHS, ids=DOC_IDS)
def test_make_targets_are_in_the_makefile(path: Path) -> None:
    _fail(make_problems(load_doc(path)))


@pytest.mark.parametrize("path", DOC_PATHS, ids=DOC_IDS)
def test_tables_render(path: Path) -> None:
    _fail(table_problems(load_doc(path)))


INPUTS = [i for p in DOC_PATHS for i in documented_inputs(load_doc(p))]


@pytest.mark.parametrize("inp", INPUTS, ids=[str(i) for i in INPUTS])
def test_documented_inputs_exist(inp: Input) -> None:
    missing = [p for p in inp.paths if not (ROOT / p).exists()]
    assert not missing, f"{inp.doc}:{inp.line}: `{inp.command}` names {', '.join(missing)}, which does not exist"


# Each command once, however many docs show it (planning a DP example calibrates twelve sites' noise).
VALIDATED: dict[tuple[tuple[str, ...], int], list[Input]] = {}
for _inp in INPUTS:
    if _inp.args is not None:
        VALIDATED.setdefault((_inp.args, _inp.expected), []).append(_inp)


@pytest.mark.slow
@pytest.mark.parametrize(("args", "expected"), list(VALIDATED), ids=[f"{' '.join(a)}-exit{e}" for a, e in VALIDATED])
def test_documented_manifests_validate(args: tuple[str, ...], expected: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the docs' commands run from the repository's root
    places = "\n".join(f"  {i.doc}:{i.line}: `{i.command}`" for i in VALIDATED[(args, expected)])
    # For a scenario, validate also checks it against the job and sites of its manifests directory,
    # which is what `fedsec simulate` runs.
    code, out = _capture_validate(list(args))
    assert code == expected, f"fedsec validate {' '.join(args)} exits {code}, where the docs expect {expected}:\n{places}\n{out}"


def manifest_blocks(doc: Doc) -> list[CodeBlock]:
    """The YAML blocks that show whole fedsec manifests (apiVersion fedsec.io/…), not fragments."""
    return [b for b in doc.blocks if b.info in ("yaml", "yml")
            and any(re.match(r"^apiVersion:\s*fedsec\.io/", line) for line in b.lines)]


MANIFEST_BLOCKS = [(p, b.line) for p in DOC_PATHS for b in manifest_blocks(load_doc(p))]


@pytest.mark.parametrize(("path", "block"), MANIFEST_BLOCKS, ids=[f"{_rel(p)}:{b}" for p, b in MANIFEST_BLOCKS])
def test_manifests_shown_in_the_docs_validate(path: Path, block: int, tmp_path: Path) -> None:
    doc = load_doc(path)
    body = next(b for b in doc.blocks if b.line == block)
    manifest = tmp_path / "shown.yaml"
    if any(re.match(r"^kind:\s*Scenario\b", line) for line in body.lines):
        # A scenario names its job's directory relative to itself: shown as if it sat in
        # examples/scenarios/, beside the example directories, as the examples' scenarios do.
        for example in (ROOT / "examples").iterdir():
            if example.is_dir() and example.name != "scenarios":
                (tmp_path / example.name).symlink_to(example)
        manifest = tmp_path / "scenarios" / "shown.yaml"
        manifest.parent.mkdir()
    manifest.write_text("\n".join(body.lines) + "\n", encoding="utf-8")
    # A doc shows one manifest, without the others a plan needs: checked on its own, as a reader would.
    code, out = _capture_validate(["--schema-only", str(manifest)])
    assert code == 0, f"{doc.name}:{block}: the manifest shown there does not validate:\n{out}"


def test_the_docs_show_manifests() -> None:
    assert {_rel(p) for p, _ in MANIFEST_BLOCKS} >= {"docs/job-manifests.md", "docs/running-locally.md"}


def test_the_docs_name_the_examples_they_are_about() -> None:
    # A parser that found no command would make the test above pass on nothing.
    named = {p.rstrip("/") for i in INPUTS if i.args is not None for p in i.paths}
    assert {"examples/breast-cancer", "examples/breast-cancer-dp", "examples/breast-cancer-dp-budget",
            "examples/scenarios/dropouts.yaml"} <= named, named


TRANSCRIPTS = [(p, line) for p in DOC_PATHS for line in validate_transcripts(load_doc(p))]


@pytest.mark.slow  # planning a DP example calibrates twelve sites' noise
@pytest.mark.parametrize(("path", "block"), TRANSCRIPTS, ids=[f"{_rel(p)}:{b}" for p, b in TRANSCRIPTS])
def test_validate_transcripts_print_what_the_doc_shows(path: Path, block: int, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    _fail(replay(load_doc(path), block, tmp_path))


def test_there_is_a_validate_transcript_to_replay() -> None:
    assert any(_rel(p) == "docs/job-manifests.md" for p, _ in TRANSCRIPTS)


# -- the checker catches what it is for ----------------------------------------------------------


def _doc(tmp_path: Path, text: str, name: str = "docs/x.md") -> Doc:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return parse_doc(path, name=name)


def test_links_to_missing_files_anchors_and_outside_are_caught(tmp_path: Path) -> None:
    (tmp_path / "docs" / "other.md").parent.mkdir(parents=True)
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## RBAC: what it may do, and why\n", encoding="utf-8")
    doc = _doc(tmp_path, "# Top\n\n[a](other.md) [b](other.md#rbac-what-it-may-do-and-why) [c](#top)\n"
                         "[d](missing.md)\n[e](other.md#nope)\n[f](../../shared/notes.md)\n[g](#nowhere)\n"
                         "`[h](missing-in-code.md)`\n[i](https://example.org/x) [j](file:///etc/passwd)\n")
    problems = link_problems(doc, root=tmp_path)
    assert [p.split(":")[1] for p in problems] == ["4", "5", "6", "7", "9", "6"], problems
    assert "no such file" in problems[0] and "#nope" in problems[1] and "leaves the repository" in problems[2]
    assert "'../shared'" in problems[5]


def test_github_slugs() -> None:
    assert github_slug("DP-SGD at each site (`mechanism: dp-sgd`)") == "dp-sgd-at-each-site-mechanism-dp-sgd"
    assert github_slug("What a site checks: the aggregator is not trusted") == "what-a-site-checks-the-aggregator-is-not-trusted"
    assert github_slug("Faults on purpose: `fedsec simulate`") == "faults-on-purpose-fedsec-simulate"


def test_repeated_headings_get_numbered_anchors(tmp_path: Path) -> None:
    doc = _doc(tmp_path, "## Tests\n\ntext\n\n## Tests\n\n```\n# not a heading\n```\n")
    assert anchors(doc) == {"tests", "tests-1"}


def test_a_missing_example_path_is_caught(tmp_path: Path) -> None:
    (tmp_path / "examples" / "bc").mkdir(parents=True)
    (tmp_path / "examples" / "bc" / "job.yaml").write_text("", encoding="utf-8")
    doc = _doc(tmp_path, "run `examples/bc/job.yaml`, `examples/bc/*.yaml`, examples/b…\n"
                         "and examples/gone/, examples/bc/*.json.\n")
    assert example_path_problems(doc, root=tmp_path) == [
        "docs/x.md:2: names examples/gone/, which does not exist",
        "docs/x.md:2: names examples/bc/*.json, which does not exist",
    ]


def test_unknown_flags_and_subcommands_are_caught(tmp_path: Path) -> None:
    doc = _doc(tmp_path, "```bash\nfedsec run examples/bc --run-dir r --ledgerdir l   # comment --nope\n"
                         "uv run --frozen fedsec simulate s.yaml --quiet && .venv/bin/fedsec frobnicate x\n"
                         "fedsec audit verify runs/x/ --deep\n```\n\nAnd `fedsec rollback R --to-round 5 --force`.\n")
    problems = flag_problems(doc)
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "7"], problems
    assert "--ledgerdir" in problems[0] and "'frobnicate'" in problems[1] and "--deep" in problems[2] and "--force" in problems[3]


def test_usage_lines_are_checked_flag_by_flag(tmp_path: Path) -> None:
    doc = _doc(tmp_path, "```\nusage: fedsec run [-h] [--run-dir RUN_DIR] [--quiet|--loud] DIR\n```\n\n"
                         "`fedsec validate [-o {text,json}] PATH [PATH ...]` and `fedsec COMMAND --help`\n")
    assert [c.synopsis for c in commands(doc)] == [True, True, False]
    problems = flag_problems(doc)
    assert len(problems) == 1 and "--loud" in problems[0] and problems[0].startswith("docs/x.md:2:"), problems
    assert documented_inputs(doc) == []  # DIR and PATH are metavariables, not paths to validate


def test_flag_values_are_not_taken_for_paths() -> None:
    parsed = parse_fedsec(("run", "--run-dir", "runs/x", "examples/bc", "--quiet", "--ledger-dir=/tmp/l"))
    assert parsed == Parsed(("run",), ("examples/bc",), ())


def test_unknown_make_targets_are_caught(tmp_path: Path) -> None:
    makefile = tmp_path / "Makefile"
    makefile.write_text("X := 1\n.PHONY: a b\na: b\n\techo no-target: here\nb c:\n", encoding="utf-8")
    doc = _doc(tmp_path, "```\nmake a PYTEST_ARGS=-x\nmake -C . c d\n```\n`make b`, `make e`, `make -n a …`\n")
    problems = make_problems(doc, makefile)
    assert [p.split(":")[1] for p in problems] == ["3", "5"] and "'d'" in problems[0] and "'e'" in problems[1], problems


def test_broken_tables_are_caught(tmp_path: Path) -> None:
    doc = _doc(tmp_path, "| a | b |\n|---|---|\n| `x \\| y` | ok |\n| `x | y` | split |\n| one |\n\n"
                         "text after the table\n| stray | row |\n\n  | indented | table |\n  |---|---|\n  | c | d |\n")
    problems = table_problems(doc)
    assert [p.split(":")[1] for p in problems] == ["4", "5", "8"], problems
    assert "inside backticks" in problems[0] and "outside any table" in problems[2]


def test_documented_exit_codes() -> None:
    assert _expected_exit(Command(1, ("validate", "x"), "fedsec", "check it (exit 2 if invalid)")) == 0
    assert _expected_exit(Command(1, ("validate", "x"), "fedsec", "every site refuses: exits 3")) == 3
    assert _expected_exit(Command(1, ("validate", "x"), "fedsec", "", ("1 problem(s) in the manifests:",))) == 2


def test_a_transcript_that_no_longer_matches_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    doc = _doc(tmp_path, "```\n$ sed 's/optimizer:/optimiser:/' examples/breast-cancer/job.yaml > /tmp/job.yaml\n"
                         "$ fedsec validate /tmp/job.yaml\n1 problem(s) in the manifests:\n"
                         "  - /tmp/job.yaml: FederatedJob/breast-cancer: spec.task.optimiser: unknown field 'colour'\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    problems = replay(doc, doc.blocks[0].line, work)
    assert len(problems) == 1 and "unknown field 'colour'" in problems[0], problems


def test_a_missing_repository_file_is_caught(tmp_path: Path) -> None:
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "unit" / "test_a.py").write_text("", encoding="utf-8")
    (tmp_path / "operator" / "fedsec").mkdir(parents=True)
    (tmp_path / "operator" / "fedsec" / "plan.py").write_text("", encoding="utf-8")
    doc = _doc(tmp_path, "See `tests/unit/test_a.py::test_x`, `fedsec/plan.py:plan_job`, `tests/unit/test_b.py`.\n\n"
                         "```bash\n.venv/bin/python benchmarks/gone.py --reps 3   # tests/not-a-command.py\n```\n")
    assert repo_path_problems(doc, root=tmp_path) == [
        "docs/x.md:1: names tests/unit/test_b.py, but tests/unit/test_b.py does not exist",
        "docs/x.md:4: names benchmarks/gone.py, but benchmarks/gone.py does not exist",
    ]


def test_a_shown_line_matches_only_with_its_elision() -> None:
    printed = "1 problem(s) in the manifests:\n  - a.yaml: spec.x: unknown field 'x'; allowed here: y, z\n"
    assert _shown_in("- a.yaml: spec.x: unknown field 'x'; allowed here: y, …", printed)
    assert not _shown_in("1 problem(s)", printed)  # a prefix is not the line
    assert not _shown_in("- a.yaml: spec.x: unknown field 'w'; …", printed)


def test_documented_inputs_are_whole_commands(tmp_path: Path) -> None:
    doc = _doc(tmp_path, "```bash\nfedsec validate -o json a/job.yaml a/site.yaml   # every site refuses: exits 3\n"
                         "fedsec run examples/bc --run-dir RUN_DIR\nfedsec validate --ledger-dir runs/ledger DIR\n```\n")
    assert documented_inputs(doc) == [
        Input("docs/x.md", 2, "fedsec validate -o json a/job.yaml a/site.yaml", ("a/job.yaml", "a/site.yaml"),
              ("-o", "json", "a/job.yaml", "a/site.yaml"), 3),
        Input("docs/x.md", 3, "fedsec run examples/bc --run-dir RUN_DIR", ("examples/bc",), ("examples/bc",), 0),
    ]  # line 4 names no manifests of the repository: a flag's value and the reader's DIR


def test_the_readme_links_every_doc() -> None:
    # A page no one links to is one a reader never finds.
    readme = load_doc(ROOT / "README.md")
    linked = {os.path.normpath(ROOT / t.partition("#")[0]) for _, t in links(readme) if t.partition("#")[0]}
    missing = [_rel(p) for p in DOC_PATHS[1:] if os.path.normpath(p) not in linked]
    assert not missing, f"README.md links none of: {', '.join(missing)} (add them to its Documentation list)"
