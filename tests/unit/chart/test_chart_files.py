"""The chart, the Dockerfiles and the test node agent's image table agree with each other and with the
project (no helm needed; rendering is tested in tests/e2e/operator/test_chart_render.py)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "fedsec-operator"
IMAGES = {"operator": "fedsec-operator", "runtime": "fedsec-runtime"}


def _dockerfile(kind: str) -> str:
    return (ROOT / "images" / kind / "Dockerfile").read_text()


def _final_stage(text: str) -> str:
    return re.split(r"(?m)^FROM ", text)[-1]


def test_chart_app_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]
    assert chart["kubeVersion"] == ">=1.28.0-0"


def test_default_images_are_the_ones_the_dockerfiles_build() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"].rsplit("/", 1)[-1] == "fedsec-operator"
    assert values["runtimeImage"]["repository"].rsplit("/", 1)[-1] == "fedsec-runtime"
    for kind, repo in IMAGES.items():
        assert f"-t ghcr.io/fedsec/{repo}:" in _dockerfile(kind)


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_images_json_matches_the_dockerfile_entrypoint(kind: str) -> None:
    table = json.loads((ROOT / "tests" / "cluster" / "images.json").read_text())
    entry = re.search(r"(?m)^ENTRYPOINT (\[.*\])$", _final_stage(_dockerfile(kind)))
    assert entry, f"images/{kind}/Dockerfile has no exec-form ENTRYPOINT in its final stage"
    assert table[IMAGES[kind]] == json.loads(entry.group(1)) == ["fedsec"]


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_dockerfile_is_multi_stage_pinned_and_non_root(kind: str) -> None:
    text = _dockerfile(kind)
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base.group(1)), base
    assert "pin them by digest" in text
    assert len(re.findall(r"(?m)^FROM ", text)) >= 3  # uv, builder, final
    final = _final_stage(text)
    assert final.startswith("${PYTHON_IMAGE}\n")
    assert re.search(r"(?m)^USER 65532:65532$", final)
    assert re.search(r"(?m)^HEALTHCHECK NONE$", final)
    assert "useradd --uid 65532" in final
    # No toolchain in the final stage, nothing installed there but the venv from the builder.
    assert not re.search(r"apt-get|apk |gcc|build-essential|uv pip|pip install", final)
    assert "COPY --from=builder /opt/fedsec /opt/fedsec" in final
    # torch is the CPU build, at the locked version; the CUDA stack is left out.
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "nvidia-|cuda-" in text
    assert "uv export --frozen" in text


def test_dockerignore_sends_only_what_the_wheel_needs() -> None:
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!uv.lock", "!README.md", "!operator/"} <= set(lines)


def _undeclared(values: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys of values.yaml that a strict (additionalProperties: false) schema object does not declare."""
    if not isinstance(values, dict) or schema.get("type") != "object":
        return []
    props = schema.get("properties", {})
    out = []
    for key, sub in values.items():
        if key in props:
            out += _undeclared(sub, props[key], f"{path}.{key}")
        elif schema.get("additionalProperties") is False:
            out.append(f"{path}.{key}")
    return out


def test_values_schema_is_strict_and_declares_every_default() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert _undeclared(values, schema) == []
    props = schema["properties"]
    for image in ("image", "runtimeImage"):
        assert props[image]["additionalProperties"] is False
        assert props[image]["properties"]["pullPolicy"]["enum"] == ["Always", "IfNotPresent", "Never"]
    assert "replicaCount" not in props  # one replica, always: kopf standalone must not run twice


def test_chart_defaults_are_hardened() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                            "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    assert values["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                         "capabilities": {"drop": ["ALL"]},
                                         "seccompProfile": {"type": "RuntimeDefault"}}
    assert values["serviceMonitor"]["enabled"] is False
    assert values["rbac"]["create"] is True and values["serviceAccount"]["create"] is True
    assert values["watchNamespaces"] == []
