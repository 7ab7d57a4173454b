"""Session fixtures for tests that need the test control plane (docs/test-cluster.md).

Load with `pytest_plugins = ["cluster_fixtures"]` in tests/conftest.py and mark
such tests `@pytest.mark.cluster`.

Which cluster a session uses, in order:
  1. $FEDSEC_KUBECONFIG, if set: that cluster, never stopped by the tests;
  2. the one running for this work tree: reused. If `make cluster-up` started it, it is
     left running; if a test session started it, the last session using it stops it;
  3. otherwise the fixture starts one (building the binaries first if the cache is
     cold) and stops it when the session ends, unless another session joined it
     meanwhile ($FEDSEC_KEEP_CLUSTER=1 keeps it running).

Fixtures:
  cluster           ClusterInfo: kubeconfig path, bin dir, node name, address ranges
  kubeconfig        Path of the admin kubeconfig
  k8s_client        kubernetes.client.ApiClient for the admin user
  core_v1           kubernetes.client.CoreV1Api on that client
  kubectl           run kubectl (and helm/promtool via .run) against the cluster, bounded in time
  namespace         a fresh namespace per test (default ServiceAccount present), deleted afterwards
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
CLUSTERCTL = REPO / "tests" / "cluster" / "clusterctl.py"
# A cold build on 2 cores took ~6 min here; allow for a slower machine.
START_TIMEOUT = 45 * 60


@dataclass(frozen=True)
class ClusterInfo:
    kubeconfig: Path
    bindir: Path
    node_name: str
    pod_cidr: str
    service_cidr: str
    state_dir: Path | None

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG and the cached binaries first on PATH."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                "PATH": f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def _clusterctl(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, str(CLUSTERCTL), *args], stdout=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`clusterctl.py {' '.join(args)}` did not finish within {timeout:.0f}s; "
                    f"see the logs in the cluster state dir (python {CLUSTERCTL} state-dir)")


def _bindir() -> Path:
    out = subprocess.run(["bash", str(REPO / "tests" / "cluster" / "build.sh"), "--print-bindir"],
                         capture_output=True, text=True, timeout=30, check=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterInfo]:
    env_kc = os.environ.get("FEDSEC_KUBECONFIG")
    if env_kc:
        yield ClusterInfo(Path(env_kc), _bindir(), "fedsec-node", "", "", None)
        return
    state = Path(_clusterctl("state-dir", timeout=30).stdout.strip())
    me = str(os.getpid())
    # Starts it, or joins the one running for this work tree (another session's, or `make cluster-up`'s).
    r = _clusterctl("up", "--user", me, timeout=START_TIMEOUT)
    if r.returncode != 0:
        pytest.fail(f"could not start the test control plane (exit {r.returncode}); its errors are in the "
                    f"captured stderr above and the logs in {state / 'logs'}. To debug by hand: make cluster-up")
    c = json.loads((state / "cluster.json").read_text())
    info = ClusterInfo(state / "admin.kubeconfig", Path(c["bindir"]), c["node_name"], c["pod_cidr"],
                       c["service_cidr"], state)
    try:
        yield info
    finally:
        if os.environ.get("FEDSEC_KEEP_CLUSTER") != "1":
            # Stops it if a test session started it and no other session still uses it.
            _clusterctl("release", "--user", me, timeout=120)


@pytest.fixture(scope="session")
def kubeconfig(cluster: ClusterInfo) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def k8s_client(cluster: ClusterInfo) -> Iterator[Any]:
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def core_v1(k8s_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(k8s_client)


class Kubectl:
    """kubectl against the test cluster; .run() does the same for any cached binary (helm, promtool)."""

    def __init__(self, info: ClusterInfo) -> None:
        self.info = info

    def run(self, argv: list[str], *, input: str | None = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            r = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.info.env(),
                               timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from e
        if check and r.returncode != 0:
            raise AssertionError(f"`{' '.join(argv)}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["kubectl", *args], input=input, timeout=timeout, check=check)

    def apply(self, manifest: str, namespace: str | None = None, timeout: float = 60) -> None:
        ns = ["-n", namespace] if namespace else []
        self("apply", *ns, "-f", "-", input=manifest, timeout=timeout)

    def json(self, *args: str, timeout: float = 60) -> Any:
        return json.loads(self(*args, "-o", "json", timeout=timeout).stdout)


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterInfo) -> Kubectl:
    return Kubectl(cluster)


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    """Polls check() until it returns something truthy; fails naming what it waited for."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - not there yet
            last_err = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f" (last error: {last_err})" if last_err else ""))


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kubectl: Kubectl) -> Iterator[str]:
    base = request.node.name.lower().replace("_", "-")
    name = "".join(ch for ch in base if ch.isalnum() or ch == "-")[:40].strip("-") + "-" + uuid.uuid4().hex[:5]
    kubectl("create", "namespace", name)
    # Pods are refused until the ServiceAccount controller made `default` in the namespace.
    wait_until(f"ServiceAccount {name}/default",
               lambda: kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, 30)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)
