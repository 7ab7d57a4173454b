"""The generated CRDs on a real API server: they install, the examples are accepted, and the shared
manifest table (tests/manifest_cases.py) gets the verdict `fedsec validate` gives: invalid manifests
refused by the API server itself naming the same field, valid edge cases accepted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_fixtures import Kubectl, wait_until
from fedsec.cli.main import main
from fedsec.runtime import exitcodes
from manifest_cases import CASES, Case, names_path

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> Iterator[None]:
    kubectl("apply", "-f", str(ROOT / "crds"))
    for name in ("federatedjobs.fedsec.io", "federatedclients.fedsec.io"):
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", timeout=90)
    # The CRDs stay: they are cluster-wide, and the operator tests of this session (and a Helm
    # release, which never deletes CRDs) use the same ones. Applying them again is idempotent.
    yield


def test_examples_are_accepted(crds: None, kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "breast-cancer"))
    wait_until("12 FederatedClients listed", lambda: len(kubectl.json("get", "fc", "-n", namespace)["items"]) == 12)
    out = kubectl("get", "fedsec", "-n", namespace).stdout  # the category lists both kinds
    assert "federatedjob.fedsec.io/breast-cancer" in out and "federatedclient.fedsec.io/hospital-12" in out
    columns = kubectl("get", "fj", "-n", namespace).stdout.splitlines()[0].split()
    assert columns[:3] == ["NAME", "PHASE", "ROUND"] and "AGE" in columns


@pytest.fixture(scope="module")
def table_namespace(crds: None, kubectl: Kubectl) -> Iterator[str]:
    """One namespace for the whole table: every apply is a dry run, so nothing is left in it."""
    name = f"manifest-table-{uuid.uuid4().hex[:5]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_server_verdict(table_namespace: str, kubectl: Kubectl, case: Case) -> None:
    """The API server's verdict on the shared table (tests/manifest_cases.py); `fedsec validate`'s is
    tests/unit/api/test_manifest_table.py. kubectl's default field validation is strict, so unknown
    fields are refused here as fedsec refuses them."""
    r = kubectl("apply", "-n", table_namespace, "--dry-run=server", "-f", "-", input=case.text, check=False)
    if case.valid:
        assert r.returncode == 0, f"refused:\n{r.stderr}\n{case.text}"
        assert "(server dry run)" in r.stdout, r.stdout
        return
    assert r.returncode != 0, f"accepted:\n{case.text}"
    if case.kubectl_says is not None:  # refused before the server: JSON cannot carry the value
        assert case.kubectl_says in r.stderr, r.stderr
    else:
        assert names_path(r.stderr, case.path), f"does not name {case.path}:\n{r.stderr}"


def test_duplicate_keys_kubectl_keeps_the_last_and_validate_refuses(
    table_namespace: str, kubectl: Kubectl, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The one place the verdicts differ on purpose, so it is not in the table: kubectl (v1.36) turns
    YAML into JSON keeping the last of two equal keys, and the API server never sees the first;
    `fedsec validate` refuses the document instead of guessing which one was meant."""
    text = (ROOT / "examples" / "breast-cancer" / "job.yaml").read_text().replace("rounds: 20", "rounds: 20\n  rounds: 3")
    r = kubectl("apply", "-n", table_namespace, "--dry-run=server", "-o", "jsonpath={.spec.rounds}", "-f", "-",
                input=text)
    assert r.stdout == "3"
    f = tmp_path / "job.yaml"
    f.write_text(text)
    assert main(["validate", "--schema-only", str(f)]) == exitcodes.CONFIG_ERROR
    assert "duplicate key 'rounds'" in capsys.readouterr().err
