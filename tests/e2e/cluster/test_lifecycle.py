"""Start-up and shutdown: a second cluster beside the first, and a shutdown that leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_fixtures import ClusterInfo, Kubectl, wait_until

pytestmark = pytest.mark.cluster

CLUSTERCTL = Path(__file__).resolve().parents[2] / "cluster" / "clusterctl.py"


def _our_processes(state: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(state) in cmd:
            found.append(f"{proc.name}: {cmd}")
    return found


def test_second_cluster_beside_the_first_and_down_leaves_nothing(
    cluster: ClusterInfo, kubectl: Kubectl, tmp_path: Path
) -> None:
    state = tmp_path / "second"
    env = {**os.environ, "FEDSEC_CLUSTER_STATE": str(state)}

    def ctl(cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(CLUSTERCTL), cmd], env=env, capture_output=True, text=True,
                              timeout=timeout)

    up = ctl("up", 300)
    try:
        assert up.returncode == 0, up.stderr
        kc = up.stdout.strip().splitlines()[-1]
        assert kc == str(state / "admin.kubeconfig")
        second = json.loads((state / "cluster.json").read_text())
        if cluster.state_dir is not None:
            first = json.loads((cluster.state_dir / "cluster.json").read_text())
            ports = ["etcd_port", "etcd_peer_port", "apiserver_port", "kcm_port", "scheduler_port", "agent_port"]
            assert not {first[p] for p in ports} & {second[p] for p in ports}
            assert first["bridge"] != second["bridge"] and first["pod_cidr"] != second["pod_cidr"]

        def k(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return kubectl.run(["kubectl", f"--kubeconfig={kc}", *args], check=check, timeout=60)

        k("run", "sleeper", "--image=not-pulled.invalid/sh", "--command", "--", "/bin/sh", "-c", "sleep 3600")
        k("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
        cid = k("get", "pod", "sleeper", "-o", "jsonpath={.status.containerStatuses[0].containerID}").stdout
        pid = int(cid.rsplit("/", 1)[1])
        assert Path(f"/proc/{pid}").exists()
    finally:
        down = ctl("down", 120)
    assert down.returncode == 0, down.stderr
    wait_until(f"pod process {pid} to end", lambda: not Path(f"/proc/{pid}").exists(), 10)
    assert _our_processes(state) == []
    assert not Path(f"/sys/class/net/{second['bridge']}").exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert f"fs{second['slot']}-" not in netns
    # The first cluster did not notice.
    assert kubectl("get", "--raw", "/readyz").stdout == "ok"
