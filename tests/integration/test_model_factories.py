"""A job's model factory is code of the job's choosing: on real processes, no site runs one it does
not list in policy.allowedModelFactories, neither when the launcher plans the job nor when a
client's config is edited after planning to carry another one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.api.admitted import spec_digest
from fedsec.api.job import FederatedJob
from fedsec.runtime import exitcodes, local
from fedsec_runs import RUN_TIMEOUT_SECONDS, committed_rounds, fedsec, summary_of, write_job_dir

pytestmark = [pytest.mark.integration]

FIELD = "policy.allowedModelFactories"


def evil_model(marker: Path) -> dict[str, Any]:
    return {"factory": "os:system", "inputDim": 30, "params": {"command": f"touch {marker}"}}


def set_policies(root: Path, policies: list[dict[str, Any]], model: dict[str, Any] | None = None) -> Path:
    """The job's model and each site's policy, in the manifests write_job_dir wrote."""
    docs = list(yaml.safe_load_all((root / "manifests.yaml").read_text()))
    if model is not None:
        docs[0]["spec"]["model"] = model
    for doc, policy in zip(docs[1:], policies, strict=True):
        doc["spec"]["policy"] = policy
    (root / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return root


def test_a_job_whose_factory_no_site_lists_is_refused_everywhere_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    manifests = write_job_dir(tmp_path / "m", sites=3, quorum={"minClients": 2})
    # None of them lists os:system: one lists nothing, one a neighbour of it, one a reviewed model.
    set_policies(manifests, [{}, {"allowedModelFactories": ["os:popen"]},
                             {"allowedModelFactories": ["mypkg.models:make"]}], model=evil_model(marker))

    checked = fedsec("validate", str(manifests))
    assert checked.returncode == exitcodes.REFUSED, checked.stdout + checked.stderr  # the sites' own lists refuse it
    run_dir = tmp_path / "run"
    proc = fedsec("run", str(manifests), "--run-dir", str(run_dir), "--ledger-dir", str(tmp_path / "ledger"), "--quiet")
    assert proc.returncode == exitcodes.REFUSED, proc.stdout + proc.stderr[-3000:]
    for out in (checked.stdout + checked.stderr, proc.stderr):
        assert "every selected site refused the job" in out, out
        for site in ("site-0", "site-1", "site-2"):
            assert f"{site}: the job's spec.model.factory 'os:system' is not in the site's {FIELD}" in out, out
    assert not marker.exists(), "os:system ran: a site ran a factory it does not list"
    assert not run_dir.exists()  # refused before any key, process or training


def test_a_client_config_tampered_after_planning_is_refused_by_the_client_itself(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    manifests = write_job_dir(tmp_path / "m", sites=2, quorum={"minClients": 2})  # a builtin model: admitted
    layout = local.prepare(manifests, tmp_path / "run", None, [], tmp_path / "ledger")
    assert layout.plan.site_names == ("site-0", "site-1") and not layout.plan.refused
    # No aggregator listens there: a client that got past building its model would only retry, and
    # a short give-up bounds that.
    local.write_configs(layout, port=9)
    config_path = layout.client_config("site-0")
    cfg = json.loads(config_path.read_text())
    assert cfg["site"]["spec"]["policy"]["allowedModelFactories"] == []
    cfg["job"]["spec"]["model"].update(builtin=None, **evil_model(marker))
    cfg["give_up_seconds"] = 5.0
    config_path.write_text(json.dumps(cfg))

    def start() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fedsec", "client", "--config", str(config_path)],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS)

    # First line of defence: the job no longer matches the spec digest the site admitted.
    proc = start()
    assert proc.returncode == exitcodes.CONFIG_ERROR, proc.stderr[-3000:]
    assert "not the job this site admitted" in proc.stderr and "spec digest" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists(), "the tampered config made the client run os:system"
    # Whoever can edit the config can fix the digest too: the site's own factory list still refuses.
    tampered = FederatedJob.model_validate(cfg["job"])
    cfg["plan"]["spec_digest"] = spec_digest(tampered)
    config_path.write_text(json.dumps(cfg))
    proc = start()
    assert proc.returncode == exitcodes.CONFIG_ERROR, proc.stderr[-3000:]
    assert "site site-0 cannot start" in proc.stderr, proc.stderr[-3000:]
    assert f"factory 'os:system' is not in this site's {FIELD}" in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists(), "the tampered config made the client run os:system"


_REVIEWED_MODULE = '''
from collections import OrderedDict

from torch import nn
from fedsec.training.models import Standardize


def make(width: int = 30) -> nn.Module:
    return nn.Sequential(OrderedDict(input_norm=Standardize(width), linear=nn.Linear(width, 1)))
'''


@pytest.mark.slow
def test_a_factory_the_sites_list_trains_and_a_site_that_does_not_is_left_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The control for the refusals above: a listed factory does run, at the sites that list it.
    modules = tmp_path / "site-code"
    modules.mkdir()
    (modules / "fedsec_it_reviewed.py").write_text(_REVIEWED_MODULE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(modules), os.environ.get("PYTHONPATH")])))
    factory = "fedsec_it_reviewed:make"
    lists_it = {"allowedModelFactories": [factory]}
    manifests = write_job_dir(tmp_path / "m", sites=4, rounds=2, quorum={"minClients": 2})
    set_policies(manifests, [lists_it, lists_it, lists_it, {}],
                 model={"factory": factory, "inputDim": 30, "params": {"width": 30}})
    # The job standardises features, which needs the model's input_norm: this factory has one.
    proc = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "run"), "--ledger-dir", str(tmp_path / "ledger"),
                  "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and committed_rounds(s) == [1, 2]
    assert set(s["clients"]) == {"site-0", "site-1", "site-2"}
    assert f"'{factory}' is not in the site's {FIELD}" in s["privacy"]["refused"]["site-3"]
