"""`fedsec validate`'s verdict on every case of the shared manifest table (tests/manifest_cases.py); the API
server's verdict on the same cases is tests/e2e/operator/test_crds.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedsec.cli.main import main
from fedsec.runtime import exitcodes
from manifest_cases import CASES, INVALID, VALID, Case, names_path


def test_the_table_is_large_enough_both_ways() -> None:
    assert len(INVALID) >= 45 and len(VALID) >= 10
    for cases in (INVALID, VALID):
        assert {yaml.safe_load(c.text)["kind"] for c in cases} == {"FederatedJob", "FederatedClient"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_verdict(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "manifest.yaml"
    f.write_text(case.text)
    # --schema-only: one manifest on its own, the verdict the API server can give (no sites, no plan).
    code = main(["validate", "--schema-only", str(f)])
    out, err = capsys.readouterr()
    if case.valid:
        assert (code, err) == (exitcodes.OK, ""), f"refused:\n{err}"
        return
    assert code == exitcodes.CONFIG_ERROR, f"exit {code}, not {exitcodes.CONFIG_ERROR}:\n{out}{err}"
    assert "Traceback" not in err
    assert names_path(err, case.path), f"does not name {case.path}:\n{err}"
    assert str(f) in err  # the file, for the user to open


@pytest.mark.parametrize(("message", "path", "named"), [
    ("m.yaml: spec.model: give exactly one", "spec.model", True),
    ('"spec.model" must not validate the schema (not)', "spec.model", True),
    ("spec.model.params.a: Too many", "spec.model", False),
    ("spec.model.params.a: Too many", "spec.model.params.a", True),
    ("spec.task.featureRanges[1]: Invalid value", "spec.task.featureRanges", False),
    ("must be of type integer (default format) in spec.rounds", "spec.rounds", True),
    ("spec.roundsExtra: unknown", "spec.rounds", False),
    ("xspec.rounds: x", "spec.rounds", False),
    ("Go struct field ObjectMeta.metadata.labels of type string", "metadata.labels", True),
])
def test_a_path_is_named_only_as_a_whole(message: str, path: str, named: bool) -> None:
    assert names_path(message, path) is named
