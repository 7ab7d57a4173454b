"""A job whose metadata.uid would name a file outside the run's directories is refused by
`fedsec run` itself (a real process), before anything is written: uids name ledger entries and kept
updates in local runs, and '../../x' once wrote outside the ledger directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedsec_runs import fedsec, write_job_dir

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize("uid", ["../../escaped", "/etc/escaped", ".hidden"])
def test_fedsec_run_refuses_a_uid_that_is_not_a_safe_file_name(tmp_path: Path, uid: str) -> None:
    manifests = write_job_dir(tmp_path / "m", sites=3, rounds=1,
                              extra_spec={"privacy": {"mechanism": "dp-sgd", "targetEpsilon": 2.0, "delta": 1e-5},
                                          "task": {"standardize": False, "featureRanges": [[0.0, 5000.0]] * 30}})
    docs = list(yaml.safe_load_all((manifests / "manifests.yaml").read_text()))
    docs[0]["metadata"]["uid"] = uid
    (manifests / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    ledger = tmp_path / "deep" / "er" / "ledger"
    proc = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "deep" / "run"), "--ledger-dir", str(ledger))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "metadata.uid" in proc.stderr + proc.stdout
    # nothing was written anywhere: not the run, not the ledger, not where the uid pointed
    assert not (tmp_path / "deep").exists()
    assert not (tmp_path / "escaped").exists() and not Path("/etc/escaped").exists()
