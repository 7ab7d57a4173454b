"""CustomResourceDefinitions generated from the spec models: one source for local validation and the API server.

``python -m fedsec.api.crd`` writes ``crds/*.yaml`` and the same files into the Helm chart's
``charts/fedsec-operator/crds/`` (Helm installs CRDs from there); ``tests/unit/api/test_crd.py`` fails
when either copy drifts from the models. The conversion turns pydantic's JSON Schema into a Kubernetes *structural*
OpenAPI v3 schema: references inlined, ``anyOf [X, null]`` as ``nullable``, OpenAPI 3.0's boolean
``exclusiveMinimum``, no ``additionalProperties: false`` beside ``properties`` (Kubernetes forbids
it; unknown fields are pruned, and refused by kubectl's strict field validation). Cross-field
rules that pydantic checks in Python are declared for the API server as CEL in the models themselves
(``json_schema_extra=kubernetes(cel(...))`` beside the validator, see ``fedsec.api.meta``), and copied
here; ``tests/manifest_cases.py`` runs one table of manifests through both and expects one verdict.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from fedsec.api.client import FederatedClientSpec
from fedsec.api.job import FederatedJobSpec
from fedsec.api.meta import DNS_LABEL_PATTERN, GROUP, VERSION

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "crds"
# The chart's copies: Helm installs whatever lies in a chart's crds/ before its templates.
CHART_CRD_DIR = ROOT / "charts" / "fedsec-operator" / "crds"
CRD_DIRS = (CRD_DIR, CHART_CRD_DIR)

# A map value that may be a string, a number or a boolean, never a list or a mapping (model params).
# A structural schema has no union type and CEL cannot declare one, so the value is left untyped and
# the two container types are made impossible: no object has at least 1 and at most 0 properties,
# no list at least 1 and at most 0 items; these keywords do not apply to scalars.
SCALAR_VALUE: dict[str, Any] = {
    "x-kubernetes-preserve-unknown-fields": True,
    "minProperties": 1, "maxProperties": 0, "minItems": 1, "maxItems": 0,
}
_SCALAR_TYPES = {"string", "integer", "number", "boolean"}
_RULES = "x-kubernetes-validations"

_DROP = {"title", "additionalProperties", "discriminator"}


def structural(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = copy.deepcopy(defs[name])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        # The model's own rules and those of the field that holds it both apply.
        if _RULES in target and _RULES in node:
            merged[_RULES] = target[_RULES] + node[_RULES]
        return _convert(merged, defs)
    out: dict[str, Any] = {}
    any_of = node.get("anyOf")
    if any_of is not None:
        variants = [v for v in any_of if v.get("type") != "null"]
        nullable = len(variants) < len(any_of)
        types = {v.get("type") for v in variants}
        if len(variants) == 1:
            out.update(_convert(variants[0], defs))
        elif types <= {"integer", "number"}:
            out.update({"type": "number"})  # a count or a fraction: the model says which
        elif types <= _SCALAR_TYPES:
            out.update(copy.deepcopy(SCALAR_VALUE))
        else:
            out.update({"x-kubernetes-preserve-unknown-fields": True})
        if nullable:
            out["nullable"] = True
    for key, value in node.items():
        if key in _DROP or key in ("anyOf", "$ref"):
            continue
        if key == "properties":
            out["properties"] = {k: _convert(v, defs) for k, v in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "default":
            if value is not None and not isinstance(value, dict | list):
                out["default"] = value
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if node.get("type") == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            value_schema = _convert(extra, defs)
            if "type" in value_schema or value_schema == SCALAR_VALUE:
                out["additionalProperties"] = value_schema
            else:
                out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _crd(kind: str, plural: str, short: str, spec_model: type[BaseModel], columns: list[dict[str, Any]]) -> dict[str, Any]:
    spec_schema = structural(spec_model)
    spec_schema.pop("description", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "fedsec"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                "shortNames": [short], "categories": ["fedsec"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": (spec_model.__doc__ or kind).strip().splitlines()[0],
                    "required": ["spec"],
                    "properties": {
                        # The one part of metadata a CRD may constrain: fedsec names files, pods and
                        # Services after an object, so its name is a DNS label (meta.check_dns_label).
                        "metadata": {"type": "object", "properties": {"name": {
                            "type": "string", "maxLength": 63, "pattern": DNS_LABEL_PATTERN,
                            "description": "a DNS label: fedsec names files, pods and Services after it",
                        }}},
                        "spec": spec_schema,
                        # The status shape is the operator's to define (written by the controller only).
                        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


def _column(name: str, path: str, type_: str = "string", priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        col["priority"] = priority
    return col


def crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    age = _column("Age", ".metadata.creationTimestamp", "date")
    return {
        "fedsec.io_federatedjobs.yaml": _crd("FederatedJob", "federatedjobs", "fj", FederatedJobSpec, [
            _column("Phase", ".status.phase"),
            _column("Round", ".status.round", "integer"),
            _column("Quorum", ".status.quorum"),
            _column("Epsilon", ".status.epsilonSpent", "number"),
            _column("Metric", ".status.mainMetric"),
            age,
        ]),
        "fedsec.io_federatedclients.yaml": _crd("FederatedClient", "federatedclients", "fc", FederatedClientSpec, [
            _column("Phase", ".status.phase"),
            _column("Budget", ".spec.privacy.budget", "number"),
            _column("Remaining", ".status.remainingBudget", "number"),
            age,
        ]),
    }


def render(obj: dict[str, Any]) -> str:
    header = "# Generated by `python -m fedsec.api.crd` from operator/fedsec/api; do not edit by hand.\n"
    return header + yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    for directory in CRD_DIRS:
        directory.mkdir(parents=True, exist_ok=True)
        for name, obj in crds().items():
            (directory / name).write_text(render(obj))
            print(directory / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
