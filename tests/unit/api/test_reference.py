"""docs/field-reference.md is exactly what the CRD schemas generate, and it shows every field and rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedsec.api import crd, reference


def test_committed_reference_matches_the_models() -> None:
    path = reference.REFERENCE
    assert path.exists(), f"{path} is missing: run `{reference.COMMAND}`"
    assert path.read_text() == reference.render(), f"{path} drifted from the models: run `{reference.COMMAND}`"


def _fields(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, child in node.get("properties", {}).items():
        full = f"{path}.{name}" if path else name
        out.append((full, child))
        out += _fields(child, full)
    if "items" in node:
        out += _fields(node["items"], path + "[]")
    return out


def _schemas() -> list[tuple[str, dict[str, Any]]]:
    return [(obj["spec"]["names"]["kind"], obj["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            for obj in crd.crds().values()]


def test_every_field_rule_and_description_is_shown() -> None:
    text = reference.render()
    for kind, schema in _schemas():
        assert f"\n## {kind}\n" in text
        section = text.split(f"\n## {kind}\n")[1].split("\n## ")[0]
        rows = {line.split("|")[1].strip().strip("`"): line for line in section.splitlines() if line.startswith("| `")}
        for path, node in _fields(schema):
            assert path in rows, f"{kind} {path} has no row"
            row = rows[path]
            if node.get("description"):
                assert " ".join(node["description"].split()).replace("|", "\\|") in row, path
            for value in node.get("enum", []):
                assert f"`{value}`" in row, (path, value)
            if "default" in node:
                assert f"| {reference._code(node['default'])} |" in row, path
        for rule in [r for _, n in _fields(schema) for r in n.get("x-kubernetes-validations", [])]:
            assert f"- `{rule['rule']}` — {rule['message']}" in section


def test_a_row_shows_type_range_default_and_required() -> None:
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in reference.render().splitlines() if line.startswith("| `")}
    assert rows["`spec.quorum.minFraction`"][:4] == ["number", "", "", "> 0; ≤ 1"]
    assert rows["`spec.rounds`"][:4] == ["integer", "yes", "", "≥ 1; ≤ 100000"]
    assert rows["`spec.task.optimizer`"][:4] == ["string", "", "`sgd`", "one of `sgd`, `adam`"]
    assert rows["`spec.quorum`"][0] == "[object](#federatedjob-spec.quorum)"
    assert rows["`spec.clients.selector.matchExpressions`"][0] == (
        "list of [object](#federatedjob-spec.clients.selector.matchExpressions-items)")
    assert rows["`spec.model.hidden`"][3] == "≤ 16 items; each item ≥ 1"


def test_every_link_has_its_anchor() -> None:
    import re

    text = reference.render()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links and links <= anchors, links - anchors


def test_check_exits_1_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "docs" / "field-reference.md"
    monkeypatch.setattr(reference, "REFERENCE", target)
    monkeypatch.setattr(crd, "ROOT", tmp_path)
    assert reference.main(["--check"]) == 1  # missing
    assert reference.COMMAND in capsys.readouterr().err
    assert reference.main([]) == 0
    assert target.read_text() == reference.render()
    assert reference.main(["--check"]) == 0
    target.write_text(target.read_text() + "edited by hand\n")
    assert reference.main(["--check"]) == 1
    assert f"regenerate it with `{reference.COMMAND}`" in capsys.readouterr().err
