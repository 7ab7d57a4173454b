"""A live aggregator under attack: every bad message is refused with its reason, counted in the
metrics, and the aggregator keeps serving honest sites. Real process, real mutual TLS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from fedsec_runs import write_job_dir
from fedsec.crypto import keyring, pki
from fedsec.crypto.signing import Signer
from fedsec.runtime import local
from fedsec.runtime.aggregator import METHOD
from fedsec.wire.envelope import seal
from fedsec.wire.proto import round_pb2 as pb

pytestmark = [pytest.mark.integration]
MAX_MESSAGE_BYTES = 256 * 1024


@dataclass
class Live:
    layout: local.RunLayout
    ca: pki.CA
    port: int
    metrics_port: int
    proc: subprocess.Popen[str]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("hostile")
    manifests = write_job_dir(root / "manifests", sites=3, rounds=50, quorum={"minClients": 3}, round_timeout=600,
                              extra_spec={"maxMessageBytes": MAX_MESSAGE_BYTES})
    layout = local.prepare(manifests, root / "run", None, [])
    ca = pki.new_ca("small")  # re-issue the job's PKI with a CA the test keeps, to mint identities
    local.issue_job_pki(layout, ca)
    local.write_configs(layout, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsec", "aggregator", "--config", str(layout.aggregator_config)],
        stdout=subprocess.PIPE, stderr=open(root / "aggregator.log", "w"), text=True,  # noqa: SIM115
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())  # blocks until the server listens (or the process dies)
    assert ready["event"] == "listening", ready
    yield Live(layout, ca, int(ready["port"]), int(ready["metrics_port"]), proc)
    proc.terminate()
    proc.wait(timeout=30)


def channel(live: Live, name: str, tls_name: str | None = None) -> grpc.Channel:
    paths = live.layout.pki_paths(tls_name or name)
    creds = grpc.ssl_channel_credentials(
        root_certificates=paths.ca_cert.read_bytes(), private_key=paths.tls_key.read_bytes(),
        certificate_chain=paths.tls_cert.read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{live.port}", creds, options=[("grpc.ssl_target_name_override", "aggregator")])


def signer_for(live: Live, name: str) -> Signer:
    return keyring.KeyRing(live.layout.pki_paths(name).keys_dir, name).require(0)


def send(ch: grpc.Channel, raw: bytes) -> pb.Ack | pb.Reply:
    env = pb.Envelope.FromString(ch.unary_unary(METHOD)(raw, timeout=30))
    header = pb.Header.FromString(env.header)
    body = pb.Reply() if header.body_type == "Reply" else pb.Ack()
    body.ParseFromString(env.body)
    return body


def envelope(live: Live, s: Signer, body: object, **kw: object) -> bytes:
    args = dict(job_uid=live.layout.job_uid, round_id=0, phase="", recipient="aggregator")
    args.update(kw)
    return seal(s, body, **args).SerializeToString()  # type: ignore[arg-type]


def rejected_reason(reply: pb.Ack | pb.Reply) -> str:
    assert isinstance(reply, pb.Ack) and not reply.accepted, reply
    return reply.reason


def issue(live: Live, name: str, epoch: int = 0) -> tuple[Signer, Path]:
    """A CA-issued identity (and TLS key) for ``name``, written beside the job's."""
    d = live.layout.pki_dir / name
    tls, ident = pki.issue_tls(live.ca, name, []), pki.issue_signing(live.ca, name, epoch)
    for fname, data in (("tls.key", tls.key_pem), ("tls.crt", tls.cert_pem), (keyring.key_file(epoch), ident.key_pem),
                        (keyring.cert_file(epoch), ident.cert_pem)):
        pki.write_private(d / fname, data)
    return Signer(ident.key_pem, ident.cert_pem), d


def test_an_honest_join_is_accepted(live: Live) -> None:
    reply = send(channel(live, "site-0"), envelope(live, signer_for(live, "site-0"), pb.Join(num_samples=10)))
    assert isinstance(reply, pb.Ack) and reply.accepted


def test_replayed_message_is_refused(live: Live) -> None:
    ch = channel(live, "site-1")
    raw = envelope(live, signer_for(live, "site-1"), pb.Join(num_samples=10))
    assert send(ch, raw).accepted  # type: ignore[union-attr]
    assert rejected_reason(send(ch, raw)) == "replay"


def test_forged_signature_from_another_ca_is_refused(live: Live) -> None:
    evil = pki.issue_signing(pki.new_ca("evil"), "site-0", 0)
    raw = envelope(live, Signer(evil.key_pem, evil.cert_pem), pb.Join())
    assert rejected_reason(send(channel(live, "site-0"), raw)) == "bad-signature"


def test_identity_of_one_site_over_the_tls_channel_of_another_is_refused(live: Live) -> None:
    raw = envelope(live, signer_for(live, "site-1"), pb.Join())
    assert rejected_reason(send(channel(live, "site-0"), raw)) == "peer-mismatch"


def test_unknown_sender_with_a_valid_certificate_is_refused(live: Live) -> None:
    mallory, _ = issue(live, "mallory")
    assert rejected_reason(send(channel(live, "mallory"), envelope(live, mallory, pb.Join()))) == "unknown-sender"


def test_wrong_job_and_wrong_epoch_are_refused(live: Live) -> None:
    ch = channel(live, "site-0")
    assert rejected_reason(send(ch, envelope(live, signer_for(live, "site-0"), pb.Join(), job_uid="another-job"))) == "wrong-job"
    later, _ = issue(live, "site-2-epoch1", epoch=1)
    epoch_ch = channel(live, "site-2-epoch1")
    assert rejected_reason(send(epoch_ch, envelope(live, later, pb.Join()))) == "wrong-epoch"


def test_stale_round_answer_is_refused(live: Live) -> None:
    raw = envelope(live, signer_for(live, "site-0"), pb.Contribution(response=b"x"), round_id=999, phase="update")
    assert rejected_reason(send(channel(live, "site-0"), raw)) == "stale-round"


def test_oversized_and_malformed_messages_are_refused(live: Live) -> None:
    ch = channel(live, "site-0")
    big = envelope(live, signer_for(live, "site-0"), pb.Contribution(response=os.urandom(MAX_MESSAGE_BYTES + 1)))
    assert rejected_reason(send(ch, big)) == "oversized"
    assert rejected_reason(send(ch, b"\x08\x96\x01 this is not an envelope \xff\xff")) == "malformed"
    assert rejected_reason(send(ch, pb.Envelope(header=b"\x01\x02", body=b"", signature=b"s", signer_cert=b"c").SerializeToString())) == "malformed"


def test_a_client_without_a_certificate_cannot_connect(live: Live) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=live.layout.pki_paths("site-0").ca_cert.read_bytes())
    ch = grpc.secure_channel(f"127.0.0.1:{live.port}", creds, options=[("grpc.ssl_target_name_override", "aggregator")])
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(METHOD)(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_rejections_are_counted_and_the_aggregator_still_serves(live: Live) -> None:
    # run after the attacks above (pytest keeps file order)
    reply = send(channel(live, "site-2"), envelope(live, signer_for(live, "site-2"), pb.Join(num_samples=5)))
    assert isinstance(reply, pb.Ack) and reply.accepted
    text = urllib.request.urlopen(f"http://127.0.0.1:{live.metrics_port}/metrics", timeout=10).read().decode()
    for reason in ("replay", "bad-signature", "peer-mismatch", "unknown-sender", "wrong-job", "wrong-epoch",
                   "stale-round", "oversized", "malformed"):
        assert f'fedsec_messages_rejected_total{{job="small",reason="{reason}"}}' in text, reason
    assert live.proc.poll() is None
    audit = (live.layout.run_dir / "audit.jsonl").read_text()
    assert audit.count('"message-rejected"') >= 10
