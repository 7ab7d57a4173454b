"""The Makefile's image targets and pinned uv agree with the chart and the Dockerfiles; the demo script refuses
bad arguments at the boundary. Real `make -n` and real processes; nothing here needs root, Go or a cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "fedsec-operator"
DEMO = ROOT / "tests" / "cluster" / "demo.py"


def make_n(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    r = subprocess.run(["make", "-s", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_the_makefiles_uv_is_the_one_the_images_build_with() -> None:
    pinned = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned
    for dockerfile in sorted((ROOT / "images").glob("*/Dockerfile")):
        image = re.search(r"^ARG UV_IMAGE=\S+:(\S+)$", dockerfile.read_text(), re.M)
        assert image and image[1] == pinned[1], (dockerfile, pinned[1])


def test_make_images_tags_what_the_chart_pulls_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    want = [f"docker build -f images/operator/Dockerfile --build-arg VERSION={version} "
            f"-t {values['image']['repository']}:{version} .",
            f"docker build -f images/runtime/Dockerfile --build-arg VERSION={version} "
            f"-t {values['runtimeImage']['repository']}:{version} ."]
    assert make_n("images") == want


def test_make_push_images_builds_and_pushes_under_the_given_registry_with_the_given_engine() -> None:
    lines = make_n("push-images", "IMAGE_REGISTRY=registry.example.com/team", "CONTAINER_ENGINE=podman")
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    operator, runtime = (f"registry.example.com/team/fedsec-{n}:{version}" for n in ("operator", "runtime"))
    assert lines == [
        f"podman build -f images/operator/Dockerfile --build-arg VERSION={version} -t {operator} .",
        f"podman build -f images/runtime/Dockerfile --build-arg VERSION={version} -t {runtime} .",
        f"podman push {operator}",
        f"podman push {runtime}",
    ]


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=60,
                          env=env)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--namespace", "Not_A_Name", "argument --namespace: 'Not_A_Name': a namespace name is 1-63 lower-case"),
    ("--namespace", "fedsec-system", "argument --namespace: 'fedsec-system': that is the operator's namespace"),
    ("--rounds", "0", "argument --rounds: '0': a whole number of rounds from 1 to 1000"),
    ("--rounds", "three", "argument --rounds: 'three': a whole number of rounds from 1 to 1000"),
    ("--study", "-x", "argument --study: '-x': a label value is 1-63 letters"),
    ("--timeout", "soon", "argument --timeout: 'soon': seconds, more than 0"),
    ("--kubeconfig", "/nonexistent/kc", "argument --kubeconfig: '/nonexistent/kc': no such file"),
])
def test_the_demo_refuses_a_bad_option_naming_it_and_what_is_allowed(flag: str, value: str, message: str) -> None:
    r = demo("up", f"{flag}={value}")
    assert r.returncode == 2, r
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_demo_without_the_control_planes_binaries_says_to_build_them(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    env = {**os.environ, "FEDSEC_CLUSTER_CACHE": str(tmp_path / "empty-cache")}
    r = demo("up", "--kubeconfig", str(kubeconfig), env=env)
    assert r.returncode == 1, r
    assert re.fullmatch(r"error: no kubectl or helm in \S+/empty-cache/\S+/bin: build the test control plane's "
                        r"binaries first \(make cluster-build\)\n", r.stderr), r.stderr
