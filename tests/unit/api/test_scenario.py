"""Scenarios: checked like manifests, and against the job they run; a fault that can never fire is refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.aggregation.plaintext import PlaintextMode
from fedsec.aggregation.secagg.mode import SecAggMode
from fedsec.api import loader
from fedsec.api.errors import FieldError, ManifestError, SitesRefused
from fedsec.api.scenario import Fault, Scenario, check_scenario

ROOT = Path(__file__).resolve().parents[3]
SCENARIOS = sorted((ROOT / "examples" / "scenarios").glob("*.yaml"))


def job_dir(root: Path, *, sites: int = 4, rounds: int = 3, mode: str = "none", standardize: bool = True,
            min_clients: int = 3, policies: dict[int, dict[str, Any]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    job = {
        "apiVersion": "fedsec.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "small"},
        "spec": {
            "model": {"builtin": "logistic-regression", "inputDim": 30},
            "task": {"standardize": standardize},
            "rounds": rounds,
            "clients": {"selector": {"matchLabels": {"study": "small"}}},
            "quorum": {"minClients": min_clients},
            "secureAggregation": {"mode": mode},
        },
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    for i in range(sites):
        client = {
            "apiVersion": "fedsec.io/v1alpha1", "kind": "FederatedClient",
            "metadata": {"name": f"site-{i}", "labels": {"study": "small"}},
            "spec": {"data": {"builtin": {"name": "breast-cancer", "partition": {"shards": sites, "shard": i}}},
                     **({"policy": policies[i]} if policies and i in policies else {})},
        }
        (root / f"site-{i}.yaml").write_text(yaml.safe_dump(client))
    return root


def scenario_file(path: Path, manifests: str, faults: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "fedsec.io/v1alpha1", "kind": "Scenario",
                                    "metadata": {"name": "s"}, "spec": {"manifests": manifests, "faults": faults}}))
    return path


def check(tmp_path: Path, faults: list[dict[str, Any]], **job: Any) -> list[FieldError]:
    job_dir(tmp_path / "m", **job)
    path = scenario_file(tmp_path / "s.yaml", "m", faults)
    return check_scenario(loader.load([path]).scenarios[0], path)


def only(errors: list[FieldError]) -> FieldError:
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_example_scenario_passes(path: Path) -> None:
    m = loader.load([path])
    assert [s.ref for s in m.scenarios] == [f"Scenario/{path.stem}"]
    assert check_scenario(m.scenarios[0], path) == []


def test_the_documented_scenario_is_the_file_it_names() -> None:
    text = (ROOT / "docs" / "running-locally.md").read_text()
    shown = re.findall(r"This is `(examples/scenarios/[\w.-]+\.yaml)`:\n\n```yaml\n(.*?)```", text, re.S)
    assert [name for name, _ in shown] == ["examples/scenarios/dropouts.yaml"]
    for name, body in shown:
        assert body == (ROOT / name).read_text()


def test_the_documented_refusal_is_what_the_check_says(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "running-locally.md").read_text()
    documented = re.search(r"`phase: update` on the secure-aggregation job above is refused with\n\n```text\n(.*?)\n```",
                           text, re.S)
    assert documented is not None
    doc = yaml.safe_load((ROOT / "examples" / "scenarios" / "dropouts.yaml").read_text())
    doc["spec"]["faults"][1]["phase"] = "update"
    # The same directory as the example, so the manifests path resolves the same way.
    path = ROOT / "examples" / "scenarios" / "dropouts.yaml"
    error = only(check_scenario(Scenario.model_validate(doc), path, source="examples/scenarios/dropouts.yaml"))
    assert str(error) == documented.group(1)


def test_a_missing_manifests_directory_names_the_scenario_file(tmp_path: Path) -> None:
    path = scenario_file(tmp_path / "s.yaml", "nowhere", [])
    e = only(check_scenario(loader.load([path]).scenarios[0], path))
    assert (e.source, e.obj, e.path) == (str(path), "Scenario/s", "spec.manifests")
    assert f"'nowhere' ({tmp_path / 'nowhere'}) does not exist" in e.message


def test_manifests_is_resolved_relative_to_the_scenario_file_not_the_cwd(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job_dir(tmp_path / "m")
    path = scenario_file(tmp_path / "s.yaml", "m", [])
    monkeypatch.chdir(ROOT)  # no "m" here
    assert check_scenario(loader.load([path]).scenarios[0], path) == []


def test_a_manifests_file_instead_of_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("{}")
    path = scenario_file(tmp_path / "s.yaml", "m.yaml", [])
    e = only(check_scenario(loader.load([path]).scenarios[0], path))
    assert e.path == "spec.manifests" and "is not a directory" in e.message


def test_an_empty_manifests_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    path = scenario_file(tmp_path / "s.yaml", "m", [])
    errors = check_scenario(loader.load([path]).scenarios[0], path)
    assert [e.path for e in errors] == ["spec.manifests", ""]
    assert errors[1].source == str(tmp_path / "m") and "manifests" in errors[1].message  # the loader's own words


def test_invalid_manifests_are_reported_with_their_own_files(tmp_path: Path) -> None:
    m = job_dir(tmp_path / "m")
    (m / "site-1.yaml").write_text((m / "site-1.yaml").read_text().replace("shard: 1", "shard: 9"))
    path = scenario_file(tmp_path / "s.yaml", "m", [])
    errors = check_scenario(loader.load([path]).scenarios[0], path)
    assert errors[0].source == str(path) and errors[0].path == "spec.manifests"
    assert [e.source for e in errors[1:]] == [str(m / "site-1.yaml")]


def test_planning_errors_name_the_file_of_their_object(tmp_path: Path) -> None:
    m = job_dir(tmp_path / "m", sites=2, min_clients=3)
    path = scenario_file(tmp_path / "s.yaml", "m", [])
    e = only(check_scenario(loader.load([path]).scenarios[0], path))
    assert (e.source, e.obj, e.path) == (str(m / "job.yaml"), "FederatedJob/small", "spec.quorum.minClients")


def test_a_directory_of_two_jobs_is_refused(tmp_path: Path) -> None:
    m = job_dir(tmp_path / "m")
    (m / "other.yaml").write_text((m / "job.yaml").read_text().replace("name: small", "name: other"))
    path = scenario_file(tmp_path / "s.yaml", "m", [])
    e = only(check_scenario(loader.load([path]).scenarios[0], path))
    assert e.path == "spec.manifests" and "holds 2 FederatedJobs (other, small)" in e.message


def test_a_client_fault_names_an_admitted_site(tmp_path: Path) -> None:
    e = only(check(tmp_path, [{"kind": "drop", "client": "site-9", "round": 1}]))
    assert e.path == "spec.faults[0].client"
    assert e.message == ("'site-9' is not a site FederatedJob/small admits; allowed: an admitted site "
                         "(site-0, site-1, site-2, site-3)")


def test_a_client_fault_on_a_refused_site_says_why_it_was_refused(tmp_path: Path) -> None:
    e = only(check(tmp_path, [{"kind": "crash", "client": "site-3", "round": 1}], policies={3: {"requireDp": True}}))
    assert e.path == "spec.faults[0].client"
    assert e.message.startswith("'site-3' is refused by FederatedJob/small (")
    assert e.message.endswith("; allowed: an admitted site (site-0, site-1, site-2)")


def test_when_the_sites_refuse_the_job_a_sound_scenario_raises_sites_refused(tmp_path: Path) -> None:
    with pytest.raises(SitesRefused) as exc:
        check(tmp_path, [{"kind": "drop", "client": "site-0", "round": 1}], sites=3,
              policies={0: {"requireDp": True}})
    assert [e.path for e in exc.value.errors] == ["spec.quorum.minClients"]
    assert exc.value.errors[0].source == str(tmp_path / "m" / "job.yaml")


def test_when_the_sites_refuse_the_job_a_broken_fault_is_still_an_error(tmp_path: Path) -> None:
    errors = check(tmp_path, [{"kind": "drop", "client": "site-0", "round": 7}], sites=3,
                   policies={0: {"requireDp": True}})
    assert [e.path for e in errors] == ["spec.faults[0].round", "spec.quorum.minClients"]


@pytest.mark.parametrize(("round_", "standardize", "allowed"), [
    (4, True, "0 (the feature-statistics round) to 3"),
    (0, False, "1 to 3 (round 0, the feature-statistics round, runs only when task.standardize is true)"),
])
def test_a_round_the_job_does_not_have_is_refused(tmp_path: Path, round_: int, standardize: bool, allowed: str) -> None:
    e = only(check(tmp_path, [{"kind": "aggregator-crash", "round": round_}], standardize=standardize))
    assert e.path == "spec.faults[0].round"
    assert e.message == f"round {round_} never happens: FederatedJob/small has 3 rounds (spec.rounds); allowed: {allowed}"


def test_round_zero_is_the_statistics_round_when_the_job_standardises(tmp_path: Path) -> None:
    assert check(tmp_path, [{"kind": "crash", "client": "site-0", "round": 0, "phase": "update"}]) == []


@pytest.mark.parametrize(("mode", "phases"), [("secagg", SecAggMode.info.phases), ("none", PlaintextMode.info.phases)])
def test_the_phases_are_the_modes_own(tmp_path: Path, mode: str, phases: tuple[str, ...]) -> None:
    for i, phase in enumerate(("train", *phases)):
        assert check(tmp_path / str(i), [{"kind": "drop", "client": "site-0", "round": 2, "phase": phase}], mode=mode) == []
    wrong = "update" if mode == "secagg" else "masked-input"
    e = only(check(tmp_path / "wrong", [{"kind": "drop", "client": "site-0", "round": 2, "phase": wrong}], mode=mode))
    assert e.path == "spec.faults[0].phase"
    assert f"under secureAggregation.mode {mode!r} its rounds go through {', '.join(phases)}; allowed: train" in e.message


@pytest.mark.parametrize(("mode", "most"), [("none", 4), ("secagg", 4 * len(SecAggMode.info.phases))])
def test_after_updates_can_be_at_most_every_answer_of_the_round(tmp_path: Path, mode: str, most: int) -> None:
    assert check(tmp_path / "a", [{"kind": "aggregator-crash", "round": 2, "afterUpdates": most}], mode=mode) == []
    e = only(check(tmp_path / "b", [{"kind": "aggregator-crash", "round": 2, "afterUpdates": most + 1}], mode=mode))
    assert e.path == "spec.faults[0].afterUpdates"
    assert e.message.startswith(f"can never fire: round 2 brings at most {most} accepted answer(s) (4 admitted site(s) x ")
    assert e.message.endswith(f"; allowed: 0 to {most}")


def test_sites_dropped_earlier_bring_fewer_answers(tmp_path: Path) -> None:
    faults = [{"kind": "drop", "client": "site-0", "round": 1}, {"kind": "aggregator-crash", "round": 2, "afterUpdates": 4}]
    e = only(check(tmp_path, faults, min_clients=2))
    assert e.path == "spec.faults[1].afterUpdates"
    assert "at most 3 accepted answer(s)" in e.message and "fewer after the drops of spec.faults[0]" in e.message


def test_a_site_dropped_in_the_round_brings_the_answers_before_its_drop(tmp_path: Path) -> None:
    faults = [{"kind": "drop", "client": "site-0", "round": 2, "phase": "share"},
              {"kind": "aggregator-crash", "round": 2, "afterUpdates": 3 * 5 + 2}]
    assert check(tmp_path / "a", faults, mode="secagg", min_clients=2) == []
    faults[1]["afterUpdates"] = 3 * 5 + 3
    assert only(check(tmp_path / "b", faults, mode="secagg", min_clients=2)).path == "spec.faults[1].afterUpdates"


def test_nothing_fires_for_a_site_after_it_dropped(tmp_path: Path) -> None:
    faults = [{"kind": "drop", "client": "site-1", "round": 3, "phase": "update"},
              {"kind": "crash", "client": "site-1", "round": 5},
              {"kind": "crash", "client": "site-1", "round": 3, "phase": "update"},
              {"kind": "slow", "client": "site-1", "round": 4, "delaySeconds": 1}]
    errors = check(tmp_path, faults, rounds=5)
    assert [e.path for e in errors] == ["spec.faults[1].round", "spec.faults[2].round", "spec.faults[3].round"]
    assert errors[0].message == ("can never fire: spec.faults[0] drops site-1 for good in round 3 (round 3, after "
                                 "answering update), before this fault's round 5, on receiving its task")


def test_a_fault_before_the_drop_fires(tmp_path: Path) -> None:
    faults = [{"kind": "drop", "client": "site-1", "round": 3, "phase": "share"},
              {"kind": "crash", "client": "site-1", "round": 3, "phase": "advertise"},
              {"kind": "slow", "client": "site-1", "round": 3, "delaySeconds": 1},
              {"kind": "slow", "client": "site-2", "delaySeconds": 1}]
    assert check(tmp_path, faults, mode="secagg") == []


def test_a_slow_round_is_never_answered_by_a_site_that_dropped_on_receiving_it(tmp_path: Path) -> None:
    faults = [{"kind": "drop", "client": "site-1", "round": 2}, {"kind": "slow", "client": "site-1", "round": 2, "delaySeconds": 1}]
    assert only(check(tmp_path, faults)).path == "spec.faults[1].round"


def test_a_site_crashes_at_most_once(tmp_path: Path) -> None:
    faults = [{"kind": "crash", "client": "site-0", "round": 3}, {"kind": "crash", "client": "site-0", "round": 1},
              {"kind": "crash", "client": "site-1", "round": 3}]
    e = only(check(tmp_path, faults))
    assert e.path == "spec.faults[0].round"
    assert e.message.startswith("can never fire: spec.faults[1] crashes site-0 first (round 1, on receiving its task)")


def test_the_aggregator_crashes_once_without_every_incarnation(tmp_path: Path) -> None:
    faults = [{"kind": "aggregator-crash", "round": 2, "afterUpdates": 1},
              {"kind": "aggregator-crash", "round": 2, "afterUpdates": 3}]
    e = only(check(tmp_path / "a", faults))
    assert e.path == "spec.faults[1].round" and "spec.faults[0] crashes the aggregator first" in e.message
    faults[1]["everyIncarnation"] = True  # the restarted aggregator does crash there
    assert check(tmp_path / "b", faults) == []


def test_nothing_fires_after_a_crash_loop(tmp_path: Path) -> None:
    faults = [{"kind": "aggregator-crash", "round": 2, "afterUpdates": 1, "everyIncarnation": True},
              {"kind": "drop", "client": "site-0", "round": 3},
              {"kind": "aggregator-crash", "round": 2, "afterUpdates": 2, "everyIncarnation": True},
              {"kind": "crash", "client": "site-1", "round": 2}]
    errors = check(tmp_path, faults)
    assert [e.path for e in errors] == ["spec.faults[1].round", "spec.faults[2].round"]
    assert "the job cannot get past round 2: spec.faults[0] crashes every aggregator there" in errors[0].message


def test_nothing_fires_after_the_round_too_few_sites_are_left_for(tmp_path: Path) -> None:
    faults = [{"kind": "drop", "client": "site-0", "round": 1}, {"kind": "drop", "client": "site-1", "round": 2},
              {"kind": "crash", "client": "site-2", "round": 3}, {"kind": "crash", "client": "site-3", "round": 4}]
    e = only(check(tmp_path, faults, rounds=5))
    assert e.path == "spec.faults[3].round"
    assert e.message == ("can never fire: the job cannot get past round 3: after the drops of spec.faults[0], "
                         "spec.faults[1] only 2 of 4 admitted sites are left in round 3, fewer than the quorum of 3, "
                         "so the job ends Failed there")


@pytest.mark.parametrize(("fault", "message"), [
    ({"kind": "slow", "client": "site-0", "delaySeconds": 1, "phase": "share"}, "'phase' applies to 'drop' and 'crash' faults only, not 'slow'"),
    ({"kind": "drop", "client": "site-0", "round": 1, "afterUpdates": 2}, "'afterUpdates' applies to 'aggregator-crash' faults only, not 'drop'"),
    ({"kind": "aggregator-crash", "round": 1, "delaySeconds": 2}, "'delaySeconds' applies to 'slow' faults only, not 'aggregator-crash'"),
    ({"kind": "aggregator-crash", "round": 1, "phase": "update"}, "'phase' applies to 'drop' and 'crash' faults only, not 'aggregator-crash'"),
])
def test_a_field_the_kind_does_not_take_is_refused_by_the_loader(tmp_path: Path, fault: dict[str, Any], message: str) -> None:
    path = scenario_file(tmp_path / "s.yaml", "m", [fault])
    with pytest.raises(ManifestError) as exc:
        loader.load([path])
    e = only(exc.value.errors)
    assert (e.source, e.obj, e.path, e.message) == (str(path), "Scenario/s", "spec.faults[0]", message)


def test_a_fault_written_out_with_every_field_reads_back_the_same() -> None:
    """The launcher hands each process its faults as JSON with every field: they must validate again."""
    for doc in ({"kind": "drop", "client": "site-0", "round": 2, "phase": "share"},
                {"kind": "slow", "client": "site-0", "delaySeconds": 2.5},
                {"kind": "aggregator-crash", "round": 1, "afterUpdates": 3, "everyIncarnation": True}):
        fault = Fault.model_validate(doc)
        assert Fault.model_validate_json(fault.model_dump_json(by_alias=True)) == fault
        assert Fault.model_validate(fault.model_dump()) == fault
