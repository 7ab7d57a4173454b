"""`fedsec validate` plans what it is given and prints the plan; its exit code says which outcome."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml
from cli_manifests import EXAMPLES, job, job_dir, refusing_dir, site, write

from fedsec.cli.main import main
from fedsec.runtime import exitcodes


def test_a_small_job_prints_its_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_dir(tmp_path / "m")
    assert main(["validate", str(root)]) == exitcodes.OK
    out = capsys.readouterr().out
    assert f"FederatedJob/bc ({root / 'job.yaml'}): planned" in out
    assert "  admitted (3): site-0, site-1, site-2" in out
    assert "  quorum: 2 of the 3 admitted sites per round" in out
    # default threshold 2/3: 2 of 3 survivors unmask; the quorum (2) is the floor of any round
    assert "  secure aggregation: secagg, threshold 0.6666666666666666: a round of all 3 sites unmasks with at least 2" in out
    assert "  privacy: none (no differential privacy)" in out
    assert out.strip().splitlines()[-1] == (
        "ok: 4 manifest(s) valid (1 FederatedJob, 3 FederatedClient, 0 Scenario); 1 job(s) planned")


def test_json_output_is_one_document_with_the_same_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_dir(tmp_path / "m")
    assert main(["validate", str(root), "-o", "json"]) == exitcodes.OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["errors"] == []
    (j,) = doc["jobs"]
    assert (j["name"], j["status"], j["admitted"], j["refused"], j["quorum"]) == (
        "bc", "planned", ["site-0", "site-1", "site-2"], {}, 2)
    assert j["secure_aggregation"]["threshold"]["survivors_full_round"] == 2
    assert set(j["sites"]) == {"site-0", "site-1", "site-2"} and all(s["training_rows"] > 0 for s in j["sites"].values())
    assert main(["validate", str(root), "--output", "yaml"]) == exitcodes.OK
    assert yaml.safe_load(capsys.readouterr().out) == doc


def test_every_site_refusing_exits_3_naming_each_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = refusing_dir(tmp_path / "m")
    assert main(["validate", str(root)]) == exitcodes.REFUSED
    out, err = capsys.readouterr()
    assert f"FederatedJob/bc ({root / 'job.yaml'}): refused" in out
    assert err.startswith("1 problem(s) stop the job: the manifests are valid, but the sites refuse it:")
    assert f"  - {root / 'job.yaml'}: FederatedJob/bc: spec.clients.selector: every selected site refused the job" in err
    for i in range(3):
        assert f"site-{i}: the site requires differential privacy" in err
    assert main(["validate", str(root), "-o", "json"]) == exitcodes.REFUSED
    doc = json.loads(capsys.readouterr().out)
    assert doc["exit_code"] == exitcodes.REFUSED and doc["jobs"][0]["status"] == "refused"
    assert doc["jobs"][0]["errors"][0]["file"] == str(root / "job.yaml")


def test_invalid_beats_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refusing_dir(tmp_path / "m")
    broken = job("other", clients={"selector": {"matchLabels": {"study": "nobody"}}})  # selects no site: invalid
    write(tmp_path / "m" / "other.yaml", broken)
    assert main(["validate", str(tmp_path / "m")]) == exitcodes.CONFIG_ERROR
    out = capsys.readouterr().out
    assert "FederatedJob/bc" in out and "): refused" in out and "FederatedJob/other" in out and "): invalid" in out


def test_plan_errors_name_the_file_of_their_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_dir(tmp_path / "m", job(quorum={"minClients": 5}))
    assert main(["validate", str(root)]) == exitcodes.CONFIG_ERROR
    err = capsys.readouterr().err
    assert (f"  - {root / 'job.yaml'}: FederatedJob/bc: spec.quorum.minClients: the quorum needs 5 clients but the "
            "selector admits only 3") in err


def test_a_job_without_sites_is_not_planned_and_says_how(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "job.yaml", job())
    assert main(["validate", str(path)]) == exitcodes.CONFIG_ERROR
    out, err = capsys.readouterr()
    assert f"FederatedJob/bc ({path}): not-planned" in out
    assert "not planned: no FederatedClient was given" in err and "--schema-only" in err
    assert main(["validate", "--schema-only", str(path)]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "valid; not planned (--schema-only)" in out and "ok: 1 manifest(s) valid" in out


def test_a_site_no_job_selects_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_dir(tmp_path / "m", sites=[site(0), site(1), site(2, labels={"study": "other"})])
    assert main(["validate", str(root)]) == exitcodes.OK
    err = capsys.readouterr().err
    assert (f"warning: {root / 'site-2.yaml'}: FederatedClient/site-2: metadata.labels: no FederatedJob given "
            "selects this site (its labels: study=other)") in err
    assert "site-0" not in err and "site-1" not in err
    alone = root / "site-0.yaml"
    assert main(["validate", str(alone)]) == exitcodes.OK
    out, err = capsys.readouterr()
    assert f"warning: {alone}: FederatedClient/site-0: metadata.labels: no FederatedJob given selects" in err
    assert "ok: 1 manifest(s) valid (0 FederatedJob, 1 FederatedClient, 0 Scenario)" in out


def test_stdin_is_read_once_as_one_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stream = yaml.safe_dump_all([job(), site(0), site(1), site(2)]).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stream)))
    assert main(["validate", "-"]) == exitcodes.OK
    assert "FederatedJob/bc (<stdin>#1): planned" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"kind: [\n")))
    assert main(["validate", "-"]) == exitcodes.CONFIG_ERROR
    assert "  - <stdin>:2:1: not valid YAML" in capsys.readouterr().err
    assert main(["validate", "-", "-"]) == exitcodes.CONFIG_ERROR
    assert "standard input can be read only once" in capsys.readouterr().err


def test_duplicate_yaml_keys_are_no_longer_last_one_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = job_dir(tmp_path / "m")
    text = (root / "job.yaml").read_text().replace("  rounds: 2\n", "  rounds: 2\n  rounds: 50\n")
    (root / "job.yaml").write_text(text)
    line = text.splitlines().index("  rounds: 50") + 1
    assert main(["validate", str(root)]) == exitcodes.CONFIG_ERROR
    assert f"  - {root / 'job.yaml'}:{line}:3: duplicate key 'rounds' (first given at line {line - 1})" in capsys.readouterr().err


@pytest.mark.slow
def test_a_spent_ledger_refuses_what_fresh_ones_admit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Budgets of 1.5 and a job of epsilon 1: the first job fits; after it, 0.5 is left at each site.
    private = job(privacy={"mechanism": "distributed-gaussian", "targetEpsilon": 1.0, "delta": 1e-5, "clippingNorm": 1.0},
                  task={"standardize": False})
    root = job_dir(tmp_path / "m", private, [site(i, privacy={"budget": 1.5}) for i in range(3)])
    ledgers = tmp_path / "ledger"
    ledgers.mkdir()
    assert main(["validate", str(root), "--ledger-dir", str(ledgers)]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "privacy: distributed-gaussian, target epsilon 1 at each site over 2 rounds" in out
    assert "noise multiplier" in out
    from fedsec.privacy.ledger import JobRef, SiteLedger, Terms, ledger_path

    for i in range(3):
        name = f"site-{i}"
        ledger = SiteLedger(ledger_path(ledgers, name), name)
        terms = Terms(mechanism="distributed-gaussian", target_epsilon=1.0, planned_rounds=2, delta=1e-5,
                      accountant="rdp", budget=1.5, cap=None)
        ledger.admit(JobRef("earlier-job", "earlier", "default"), terms)  # reserves its whole target
    assert main(["validate", str(root), "--ledger-dir", str(ledgers)]) == exitcodes.REFUSED
    assert "the job plans to spend epsilon 1 here but the site's budget of 1.5 has only 0.5 left" in capsys.readouterr().err
    assert main(["validate", str(root)]) == exitcodes.OK  # fresh ledgers: nothing spent
    capsys.readouterr()
    assert main(["validate", str(root), "--ledger-dir", str(tmp_path / "nope")]) == exitcodes.CONFIG_ERROR
    assert "--ledger-dir: no such directory" in capsys.readouterr().err


@pytest.mark.slow
def test_the_budget_example_shows_hospital_12_refused(capsys: pytest.CaptureFixture[str]) -> None:
    example = EXAMPLES / "breast-cancer-dp-budget"
    assert main(["validate", str(example)]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "  admitted (11): hospital-01," in out
    assert ("    hospital-12: the job plans to spend epsilon 1.2 here but the site's budget of 0.5 has only 0.5 left"
            in out)
    assert "  quorum: 9 of the 11 admitted sites per round" in out
    assert "privacy: dp-sgd, target epsilon 1.2 at each site over 10 rounds" in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("    hospital-") and ln.split()[1].isdigit()]
    assert [r[0] for r in rows] == [f"hospital-{i:02d}" for i in range(1, 12)]
    assert all(0.95 * 1.2 <= float(r[-1]) <= 1.2 for r in rows)  # each site's planned epsilon, within target
    assert main(["validate", str(example), "-o", "json"]) == exitcodes.OK
    doc = json.loads(capsys.readouterr().out)
    (j,) = doc["jobs"]
    assert "hospital-12" in j["refused"] and "hospital-12" not in j["sites"]
    assert j["sites"]["hospital-04"]["privacy"]["steps_per_round"] == 2


def test_a_scenario_is_checked_against_its_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job_dir(tmp_path / "m")
    scenario = {"apiVersion": "fedsec.io/v1alpha1", "kind": "Scenario", "metadata": {"name": "s"},
                "spec": {"manifests": "m", "faults": [{"kind": "drop", "client": "site-9", "round": 1}]}}
    path = write(tmp_path / "s.yaml", scenario)
    assert main(["validate", str(path)]) == exitcodes.CONFIG_ERROR
    out, err = capsys.readouterr()
    assert f"Scenario/s ({path}): invalid" in out and "site-9" in err and str(path) in err
    scenario["spec"]["faults"] = [{"kind": "drop", "client": "site-1", "round": 1}]
    write(path, scenario)
    assert main(["validate", str(path)]) == exitcodes.OK
    assert f"Scenario/s ({path}): checked" in capsys.readouterr().out
