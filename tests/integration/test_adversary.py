"""A site trusts only what it admitted: attacks by a modified aggregator and by malicious sites,
run as real processes over real mutual TLS (tests/integration/adversary.py), each refused.

The aggregator attacks ride on consecutive attempts of one round (attempt k carries attack k), so
one job shows every refusal at every site: counted by reason in the site's own directory, written
to the site's own audit log, and not one attacked attempt committed. The site attacks show one
authenticated site can neither crash the aggregator nor sink the round for the others.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedsec.runtime import local
from fedsec.runtime.site_record import read_counts
from fedsec.telemetry.audit import verify
from fedsec_runs import RUN_TIMEOUT_SECONDS, write_job_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HARNESS = str(Path(__file__).with_name("adversary.py"))
SITES = [f"site-{i}" for i in range(4)]


@dataclass
class Outcome:
    layout: local.RunLayout
    aggregator_code: int
    client_codes: dict[str, int]
    audit: list[dict]
    summary: dict


def run_job(root: Path, *, aggregator: list[str] | None = None, evil_client: tuple[str, str] | None = None,
            rounds: int = 1, quorum: int = 3) -> Outcome:
    """4 sites, secure aggregation; ``aggregator`` lists the modified aggregator's attacks (attempt k
    carries the k-th), ``evil_client`` is (site, attack)."""
    manifests = write_job_dir(root / "manifests", sites=4, rounds=rounds, quorum={"minClients": quorum},
                              round_timeout=60, max_retries=10, extra_spec={"task": {
                                  "localEpochs": 1, "batchSize": 16, "learningRate": 0.1, "standardize": False}})
    layout = local.prepare(manifests, root / "run", None, [])
    local.write_configs(layout, None)
    cfg = str(layout.aggregator_config)
    argv = ([sys.executable, HARNESS, "aggregator", ",".join(aggregator), cfg] if aggregator
            else [sys.executable, "-m", "fedsec", "aggregator", "--config", cfg])
    agg_log = open(root / "aggregator.log", "w")  # noqa: SIM115 - closed below
    agg = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=agg_log, text=True)
    assert agg.stdout is not None
    ready = json.loads(agg.stdout.readline())  # blocks until it listens (or dies)
    assert ready["event"] == "listening", ready
    local.write_configs(layout, int(ready["port"]))
    clients: dict[str, subprocess.Popen[bytes]] = {}
    for site in SITES:
        ccfg = str(layout.client_config(site))
        if evil_client and evil_client[0] == site:
            argv = [sys.executable, HARNESS, "client", evil_client[1], ccfg]
        else:
            argv = [sys.executable, "-m", "fedsec", "client", "--config", ccfg]
        clients[site] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(root / f"{site}.log", "w"))  # noqa: SIM115
    try:
        codes = {s: p.wait(timeout=RUN_TIMEOUT_SECONDS) for s, p in clients.items()}
        for _ in agg.stdout:  # the event stream ends when the aggregator exits
            pass
        agg_code = agg.wait(timeout=RUN_TIMEOUT_SECONDS)
    finally:
        for p in [agg, *clients.values()]:
            if p.poll() is None:
                p.kill()
        agg_log.close()
    audit_path = layout.run_dir / "audit.jsonl"
    audit = [json.loads(line) for line in audit_path.read_text().splitlines() if line.strip()]
    summary = json.loads((layout.run_dir / "summary.json").read_text())
    return Outcome(layout, agg_code, codes, audit, summary)


def _events(o: Outcome, name: str) -> list[dict]:
    return [e["data"] for e in o.audit if e["event"] == name]


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    from adversary import AGGREGATOR_ATTACKS

    # Quorum 4: every attempt has all four sites as participants, so attempt k meets every site.
    # Round 1's attempts carry the Task attacks and the split view; round 2 the forged confirmation.
    yield run_job(tmp_path_factory.mktemp("evil-aggregator"), aggregator=list(AGGREGATOR_ATTACKS), rounds=2, quorum=4)


# What each site must have refused, attack by attack (see adversary.py for what each one does).
EXPECTED = {
    # the aggregator's own identity in the round: a stranger to every roster
    "aggregator-joins": {s: "not-in-roster" for s in SITES},
    # a round of two under a quorum of four (the other two are not asked)
    "too-few": {"site-0": "below-quorum", "site-1": "below-quorum"},
    "chosen-seed": {s: "bad-seed" for s in SITES},
    "inflated-survivors": {s: "bad-survivors" for s in SITES},
    "extra-round": {s: "beyond-plan" for s in SITES},
    # secure aggregation's own check: the weight bound is the plan's, not the server's
    "weight-bound": {s: "protocol" for s in SITES},
    # ... and so are the threshold and the neighbourhood threshold
    "weak-threshold": {s: "protocol" for s in SITES},
    # the consistency check: site-0, shown a survivor set without site-1, refuses to confirm it (too
    # few survivors for the plan) and reveals nothing; the others, shown the true set, unmask it
    "split-view": {"site-0": "protocol"},
    # a confirmation the server made up for site-0 does not verify under the pair's key
    "forged-confirmation": {"site-0": "protocol"},
}
# Attacks the victim alone refuses: the others' answers still unmask the true sum of all four (the
# victim's input included, its seed rebuilt from its neighbours' shares), which is no leak.
CAUGHT_BY_THE_VICTIM = ("split-view", "forged-confirmation")


def test_every_attack_of_a_modified_aggregator_is_refused_at_every_site(attacked: Outcome) -> None:
    want: dict[str, Counter[str]] = {s: Counter() for s in SITES}
    for per_site in EXPECTED.values():
        for site, reason in per_site.items():
            want[site][reason] += 1
    for site in SITES:
        got = read_counts(attacked.layout.site_dir(site))
        assert got == dict(want[site]), (site, got, (attacked.layout.run_dir.parent / f"{site}.log"))


def test_the_sites_record_each_refusal_in_their_own_verified_audit_log(attacked: Outcome) -> None:
    for site in SITES:
        path = attacked.layout.site_dir(site) / "audit.jsonl"
        result = verify(path)
        assert result.ok, (site, result)
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        refused = [e["data"] for e in entries if e["event"] == "task-refused"]
        assert len(refused) == sum(read_counts(attacked.layout.site_dir(site)).values())
        assert all(r["site"] == site and r["round_id"] >= 1 and r["detail"] for r in refused)


def test_no_attacked_attempt_committed_and_the_job_still_finished(attacked: Outcome) -> None:
    committed = _events(attacked, "round-committed")
    discarded = _events(attacked, "round-discarded")
    refused_by_all = len(EXPECTED) - len(CAUGHT_BY_THE_VICTIM)
    # the first attempts carried Task attacks every site refused: each was discarded, nothing unmasked
    assert [d["round_id"] for d in discarded] == list(range(1, refused_by_all + 1))
    assert [c["round_id"] for c in committed] == [refused_by_all + 1, refused_by_all + 2]
    # ... and the victim of the last two kept its secrets: it revealed no share in those attempts
    site0 = [json.loads(x) for x in (attacked.layout.site_dir("site-0") / "audit.jsonl").read_text().splitlines()]
    assert {e["data"]["round_id"] for e in site0 if e["event"] == "task-refused"} >= {c["round_id"] for c in committed}
    assert attacked.summary["status"] == "Succeeded" and attacked.aggregator_code == 0
    assert attacked.client_codes == {s: 0 for s in SITES}


@pytest.mark.parametrize("attack", ["low-order-key", "garbage-shares"])
def test_one_malicious_site_is_blamed_and_left_out_while_the_others_train(tmp_path: Path, attack: str) -> None:
    o = run_job(tmp_path, evil_client=("site-3", attack), rounds=2)
    assert o.summary["status"] == "Succeeded" and o.aggregator_code == 0, o.summary.get("reason")
    blamed = _events(o, "sites-blamed")
    assert blamed and all(set(b["blamed"]) == {"site-3"} for b in blamed), blamed
    committed = _events(o, "round-committed")
    assert [c["round"] for c in committed] == [1, 2]
    assert all("site-3" not in c["contributors"] and len(c["contributors"]) == 3 for c in committed)
    if attack == "low-order-key":
        # anyone can check a public key: the server refused the advert itself, no round was lost
        assert not _events(o, "round-discarded")
        assert o.summary["rejected_messages"]["invalid-update"] >= 2  # one refused advert per round
    else:
        # only the neighbours can tell the shares do not open: they say so, and the retry leaves site-3 out
        assert len(_events(o, "round-discarded")) == 2
        for site in ("site-0", "site-1", "site-2"):
            entries = [json.loads(x) for x in (o.layout.site_dir(site) / "audit.jsonl").read_text().splitlines()]
            left_out = [e["data"]["peers"] for e in entries if e["event"] == "peers-left-out"]
            assert {"site-3": "bad_share"} in left_out, (site, left_out)
