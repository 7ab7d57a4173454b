"""Key rotation on real processes: epochs advance at round boundaries, no round is lost, a crashed
aggregator resumes in its epoch, and retired or not-yet-current epochs stop verifying."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedsec_runs import committed_rounds, fedsec, summary_of, write_job_dir, write_scenario
from fedsec.crypto import keyring, pki
from fedsec.crypto.signing import Signer
from fedsec.runtime import local
from fedsec.runtime.aggregator import METHOD
from fedsec.telemetry.audit import verify
from fedsec.wire.envelope import seal
from fedsec.wire.proto import round_pb2 as pb

pytestmark = [pytest.mark.integration]

EVERY = 2


def rotating_job(root: Path, *, rounds: int, every: int = EVERY, grace: int = 1, **kw: Any) -> Path:
    return write_job_dir(root, sites=4, rounds=rounds, quorum={"minClients": 3}, extra_spec={
        "keys": {"rotation": {"everyRounds": every, "graceRounds": grace}},
        "secureAggregation": {"mode": "secagg", "threshold": 3},
    }, **kw)


def audit_events(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(summary["artifacts"]["audit_log"]).read_text().splitlines()]


def epochs_by_round(summary: dict[str, Any]) -> list[int]:
    return [h["key_epoch"] for h in summary["history"] if h["kind"] == "train"]


def check_schedule(epochs: list[int], every: int) -> None:
    """Epochs only grow, one at a time, never before ``every`` rounds; the first rotation (its key
    is issued with the job) is exactly on time. Later ones may slip while a key is on its way."""
    assert epochs[:every] == [0] * every and epochs[every] == 1, epochs
    assert all(b - a in (0, 1) for a, b in zip(epochs, epochs[1:])), epochs
    for e in set(epochs) - {max(epochs)}:
        assert epochs.count(e) >= every, f"epoch {e} lasted {epochs.count(e)} rounds, less than {every}: {epochs}"


def test_keys_rotate_every_n_rounds_under_secure_aggregation_and_no_round_is_lost(tmp_path: Path) -> None:
    manifests = rotating_job(tmp_path / "m", rounds=6)
    proc = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and committed_rounds(s) == [1, 2, 3, 4, 5, 6]
    epochs = epochs_by_round(s)
    check_schedule(epochs, EVERY)
    assert s["keys"] == {"epoch": max(epochs), "rotate_every_rounds": EVERY, "grace_rounds": 1}

    rotations = [e["data"] for e in audit_events(s) if e["event"] == "key-rotated"]
    assert [(r["from_epoch"], r["to_epoch"]) for r in rotations] == [(e, e + 1) for e in range(max(epochs))]
    assert verify(Path(s["artifacts"]["audit_log"])).ok

    # Every participant holds the current epoch and the next, nothing older (the launcher retired it).
    final = s["keys"]["epoch"]
    for name in ["aggregator", "site-0", "site-1", "site-2", "site-3"]:
        held = keyring.KeyRing(tmp_path / "run" / "pki" / name).epochs()
        assert held == {final, final + 1}, (name, held)
    # The sites followed: each logged signing in every epoch the aggregator moved to.
    for i in range(4):
        log = (tmp_path / "run" / "logs" / f"site-{i}.log").read_text()
        for e in range(1, final + 1):
            assert f"signs in key epoch {e}" in log, f"site-{i} never signed in epoch {e}:\n{log[-2000:]}"


@pytest.mark.slow
def test_a_crashed_aggregator_resumes_in_its_key_epoch(tmp_path: Path) -> None:
    manifests = rotating_job(tmp_path / "m", rounds=5, every=1, grace=0)
    scenario = write_scenario(tmp_path / "crash.yaml", manifests, [{"kind": "aggregator-crash", "round": 3, "afterUpdates": 2}])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and committed_rounds(s) == [1, 2, 3, 4, 5]
    assert s["aggregator"]["exit_codes"] == [75, 0]
    check_schedule(epochs_by_round(s), 1)
    events = audit_events(s)
    restarted = next(i for i, e in enumerate(events) if e["event"] == "aggregator-started" and e["data"]["incarnation"] == 1)
    before = [e["data"]["to_epoch"] for e in events[:restarted] if e["event"] == "key-rotated"]
    after = [e["data"]["to_epoch"] for e in events[restarted:] if e["event"] == "key-rotated"]
    # rotating every round, rounds 3 to 5 rotate after the restart too: no epoch reused or skipped
    assert before and after and after[0] == before[-1] + 1, (before, after)


def _send(port: int, tls_dir: Path, ca_pem: bytes, raw: bytes) -> pb.Ack | pb.Reply:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=(tls_dir / "tls.key").read_bytes(),
                                         certificate_chain=(tls_dir / "tls.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "aggregator")]) as ch:
        env = pb.Envelope.FromString(ch.unary_unary(METHOD)(raw, timeout=30))
    header = pb.Header.FromString(env.header)
    request = pb.Header.FromString(pb.Envelope.FromString(raw).header)
    # Even a refusal answers the request by name and nonce: a site in an old epoch must be able to
    # verify it, learn the aggregator's epoch from it, and send again.
    assert (header.recipient, header.in_reply_to) == (request.sender, request.nonce), header
    body: pb.Ack | pb.Reply = pb.Reply() if header.body_type == "Reply" else pb.Ack()
    body.ParseFromString(env.body)
    return body


def test_retired_and_future_epochs_do_not_verify_after_a_restart(tmp_path: Path) -> None:
    manifests = rotating_job(tmp_path / "m", rounds=4, grace=1)
    run_dir = tmp_path / "run"
    proc = fedsec("run", str(manifests), "--run-dir", str(run_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    current = summary_of(proc)["keys"]["epoch"]
    assert current >= 1

    # The finished job's aggregator, started again on its state (and serving on, as under the
    # operator, instead of exiting at once): it resumes in the same epoch.
    layout = local.prepare(manifests, run_dir, None, [])
    cfg = json.loads(layout.aggregator_config.read_text()) | {"serve_after_finish": True}
    (tmp_path / "aggregator.json").write_text(json.dumps(cfg))
    agg = subprocess.Popen([sys.executable, "-m", "fedsec", "aggregator", "--config", str(tmp_path / "aggregator.json")],
                           stdout=subprocess.PIPE, stderr=open(tmp_path / "agg.log", "w"), text=True)  # noqa: SIM115
    try:
        assert agg.stdout is not None
        ready = json.loads(agg.stdout.readline())  # blocks until it listens (or dies)
        assert ready["event"] == "listening", ready
        assert json.loads(agg.stdout.readline()) == {"event": "key_epoch", "epoch": current}
        ca_pem = (layout.pki_dir / "ca.crt").read_bytes()
        ca = pki.load_ca((layout.pki_dir / local.CA_KEY).read_bytes(), ca_pem)

        def join_signed_in(epoch: int) -> pb.Ack | pb.Reply:
            files = keyring.identity_files(ca, "site-0", epoch)  # CA-issued: only the epoch is wrong
            signer = Signer(files[keyring.key_file(epoch)], files[keyring.cert_file(epoch)])
            raw = seal(signer, pb.Join(num_samples=1), job_uid=layout.job_uid, round_id=0, phase="",
                       recipient="aggregator").SerializeToString()
            return _send(ready["port"], layout.pki_dir / "site-0", ca_pem, raw)

        for epoch in (0, current - 1, current + 1, current + 7):  # retired, past its grace, not yet, far ahead
            reply = join_signed_in(epoch)
            assert isinstance(reply, pb.Ack) and not reply.accepted and reply.reason == "wrong-epoch", (epoch, reply)
        ok = join_signed_in(current)
        assert isinstance(ok, pb.Ack) and ok.accepted, ok
    finally:
        agg.terminate()
        agg.wait(timeout=30)
