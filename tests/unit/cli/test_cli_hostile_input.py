"""Hostile and broken input to `fedsec validate`: each exits 2 with one problem line naming the file
(and the line where there is one), never a traceback, never PyYAML's "<unicode string>"."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cli_manifests import job, site, write

from fedsec.api import loader
from fedsec.api.errors import ManifestError
from fedsec.cli.main import main
from fedsec.runtime import exitcodes


def _nested_flow(depth: int) -> str:
    return "spec: " + "[" * depth + "]" * depth + "\n"


def _nested_block(depth: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf\n"


def _billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


CASES: dict[str, tuple[str, Callable[[], bytes], str, int]] = {
    # name: (file name, content, what the message says, the line it names; 0: none)
    "deep flow nesting": ("deep.yaml", lambda: _nested_flow(500).encode(), "nested deeper than 64 levels", 1),
    "deep block nesting": ("deep.yaml", lambda: _nested_block(300).encode(), "nested deeper than 64 levels", 64),
    "deep JSON": ("deep.json", lambda: ("[" * 100_000 + "]" * 100_000).encode(), "nested deeper than 64 levels", 0),
    "billion laughs": ("bomb.yaml", lambda: _billion_laughs().encode(), "aliases expand the document", 1),
    "an alias inside itself": ("rec.yaml", lambda: b"a: &a [1, *a]\n", "recursive structure", 1),
    "aliases nesting past the limit": (
        "chain.yaml",
        lambda: ("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 80))).encode(),
        "aliases nest the document deeper than 64 levels", 1),
    "5 MiB": ("big.yaml", lambda: b"# " + b"x" * (5 * 1024 * 1024) + b"\n", "larger than 4 MiB", 0),
    "binary bytes": ("bin.yaml", lambda: b"\x00\x01\x02\x03kind: x\n", "character #x0000 is not allowed", 1),
    "invalid UTF-8": ("latin1.yaml", lambda: "kind: caf\u00e9\n".encode("latin-1"), "not UTF-8 text", 1),
    "a python tag": ("tag.yaml", lambda: b"!!python/object/apply:os.system [echo pwned]\n",
                     "could not determine a constructor for the tag", 1),
    "duplicate keys": ("dup.yaml", lambda: b"apiVersion: fedsec.io/v1alpha1\nkind: FederatedJob\nkind: FederatedClient\n",
                       "duplicate key 'kind' (first given at line 2)", 3),
    "duplicate keys in a flow mapping": ("dupflow.yaml", lambda: b"{kind: a, kind: b}\n", "duplicate key 'kind'", 1),
    "duplicate keys in JSON": ("dup.json", lambda: b'{"kind": "a",\n "metadata": {"name": "x",\n "name": "y"}}\n',
                               "duplicate key 'name' (first given at line 2)", 3),
    "a top-level list": ("list.yaml", lambda: b"- kind: FederatedJob\n", "a manifest must be a mapping, got list", 0),
    "a top-level scalar": ("scalar.yaml", lambda: b"just words\n", "a manifest must be a mapping, got str", 0),
    "a syntax error": ("syntax.yaml", lambda: b"kind: [unclosed\n", "not valid YAML: expected ',' or ']'", 2),
    "bad indentation": ("indent.yaml", lambda: b"a:\n  b: 1\n c: 2\n", "not valid YAML", 3),
    "a JSON syntax error": ("bad.json", lambda: b'{"kind": "a",,}\n', "not valid JSON", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_naming_the_file(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, content, says, line = CASES[case]
    path = tmp_path / name
    path.write_bytes(content())
    started = time.monotonic()
    code = main(["validate", str(path)])
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == exitcodes.CONFIG_ERROR, err
    assert "Traceback" not in out + err and "<unicode string>" not in err
    problems = [ln for ln in err.splitlines() if ln.startswith("  - ")]
    assert err.splitlines()[0] == "1 problem(s) in the manifests:" and len(problems) == 1, err
    where = f"  - {path}:{line}:" if line else f"  - {path}: "
    assert problems[0].startswith(where) and says in problems[0], err
    assert "\n" not in problems[0]
    # Refused before anything expands or walks it: an alias bomb walked would take minutes.
    assert elapsed < 30, f"{case} took {elapsed:.1f}s to refuse"


def test_a_merge_key_may_override_and_is_no_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {a: 1, b: 2}\nkind: x\nspec:\n  <<: *base\n  b: 3\n")
    docs = loader.read_documents(path)
    assert docs == [{"base": {"a": 1, "b": 2}, "kind": "x", "spec": {"a": 1, "b": 3}}]


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    labels = "labels: &l {study: bc}\n"
    path = tmp_path / "a.yaml"
    path.write_text(labels + "copy1: *l\ncopy2: *l\n")
    assert loader.read_documents(path) == [{"labels": {"study": "bc"}, "copy1": {"study": "bc"}, "copy2": {"study": "bc"}}]


def test_an_empty_directory_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert main(["validate", str(tmp_path)]) == exitcodes.CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"  - {tmp_path}: directory holds no manifests (.yaml, .yml, .json files)" in err


def test_a_file_of_comments_only_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n---\n")
    assert main(["validate", str(path)]) == exitcodes.CONFIG_ERROR
    assert f"  - {path}: holds no manifests (only empty documents or comments)" in capsys.readouterr().err


def test_a_missing_path_is_named_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == exitcodes.CONFIG_ERROR
    err = capsys.readouterr().err
    assert f"  - {missing}: no such file or directory" in err and ": : " not in err


def test_file_level_errors_have_no_empty_field(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("- 1\n")
    with pytest.raises(ManifestError) as exc:
        loader.load([path])
    assert [str(e) for e in exc.value.errors] == [f"{path}: a manifest must be a mapping, got list"]


def test_json_manifests_are_read_in_directories_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job.json").write_text(json.dumps(job()))
    for i in range(3):
        write(tmp_path / f"site-{i}.yml", site(i))
    m = loader.load([tmp_path])
    assert m.sources["FederatedJob/bc"] == str(tmp_path / "job.json")
    assert [c.metadata.name for c in m.clients] == ["site-0", "site-1", "site-2"]
    assert main(["validate", str(tmp_path)]) == exitcodes.OK
    assert "ok: 4 manifest(s) valid" in capsys.readouterr().out


def test_a_long_value_is_shown_cut_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = job()
    doc["spec"]["rounds"] = "x" * 100_000
    path = write(tmp_path / "job.yaml", doc)
    assert main(["validate", str(path)]) == exitcodes.CONFIG_ERROR
    err = capsys.readouterr().err
    assert "spec.rounds" in err and "(100002 characters)" in err and len(err) < 2000


def test_yaml_that_is_not_json_in_a_json_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.json"
    path.write_text(yaml.safe_dump(job()))
    assert main(["validate", str(path)]) == exitcodes.CONFIG_ERROR
    assert f"  - {path}:1:1: not valid JSON" in capsys.readouterr().err
