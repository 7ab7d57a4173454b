"""crds/ and the Helm chart's crds/ are exactly what the spec models generate, and the schemas are structural."""

from __future__ import annotations

from typing import Any

import yaml

from fedsec.api import crd


def test_committed_crds_match_the_models() -> None:
    assert crd.CRD_DIRS == (crd.CRD_DIR, crd.CHART_CRD_DIR)
    for directory in crd.CRD_DIRS:
        for name, obj in crd.crds().items():
            path = directory / name
            assert path.exists(), f"{path} is missing: run `python -m fedsec.api.crd`"
            assert path.read_text() == crd.render(obj), f"{path} drifted from the models: run `python -m fedsec.api.crd`"
        # Nothing else there: a stale file (a renamed kind) would still be installed.
        assert sorted(p.name for p in directory.iterdir()) == sorted(crd.crds()), directory


def _walk(node: Any, path: str = "") -> list[str]:
    """Structural-schema violations: refs, untyped nodes, properties beside additionalProperties."""
    problems = []
    if isinstance(node, dict):
        if "$ref" in node or "anyOf" in node and "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: not structural")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties beside additionalProperties")
        if "properties" in node:
            for k, v in node["properties"].items():
                if "type" not in v and not v.get("x-kubernetes-preserve-unknown-fields"):
                    problems.append(f"{path}.{k}: no type")
                problems += _walk(v, f"{path}.{k}")
        if "items" in node:
            problems += _walk(node["items"], f"{path}[]")
    return problems


def test_schemas_are_structural_with_names_and_columns() -> None:
    for name, obj in crd.crds().items():
        version = obj["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        assert _walk(schema) == [], name
        assert version["subresources"] == {"status": {}}
        assert obj["spec"]["names"]["categories"] == ["fedsec"]
        assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Phase", "Age"}
    job = yaml.safe_load(crd.render(crd.crds()["fedsec.io_federatedjobs.yaml"]))
    spec = job["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["model", "rounds", "quorum"]
    min_fraction = spec["properties"]["quorum"]["properties"]["minFraction"]
    assert min_fraction.pop("description")  # the field reference (docs/field-reference.md) shows it
    assert min_fraction == {
        "minimum": 0.0, "exclusiveMinimum": True, "maximum": 1.0, "type": "number", "nullable": True,
    }
    assert any("minClients" in r["rule"] for r in spec["properties"]["quorum"]["x-kubernetes-validations"])
