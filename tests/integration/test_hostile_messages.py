"""A live aggregator under attack: every bad message is refused with its reason, counted in the
metrics, and the aggregator keeps serving honest sites. Real process, real mutual TLS."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedsec_runs import write_job_dir
from fedsec.crypto import keyring, pki
from fedsec.crypto.signing import Signer
from fedsec.runtime import limits, local
from fedsec.runtime.aggregator import LONG_POLL_SECONDS, METHOD
from fedsec.protocol import stats as fstats
from fedsec.wire import tensors as wire_tensors
from fedsec.wire.envelope import SerializedBody, seal
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


def start_live(root: Path, sites: int, extra_spec: dict[str, Any]) -> Iterator[Live]:
    """A live aggregator for a job whose every site must be live to start a round (none will time out)."""
    manifests = write_job_dir(root / "manifests", sites=sites, rounds=50, quorum={"minClients": sites}, round_timeout=600,
                              extra_spec=extra_spec)
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


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from start_live(tmp_path_factory.mktemp("hostile"), 3, {"maxMessageBytes": MAX_MESSAGE_BYTES})


@pytest.fixture(scope="module")
def live_plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Plaintext FedAvg, two sites: the aggregator parses the updates' safetensors itself."""
    yield from start_live(tmp_path_factory.mktemp("hostile-plain"), 2, {"secureAggregation": {"mode": "none"}})


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


def padded(body: pb.Poll | pb.Join, size: int) -> SerializedBody:
    """``body`` carrying ``size`` bytes in an unknown field: it parses, so only its size is wrong."""
    data = body.SerializeToString() + _varint(1000 << 3 | 2) + _varint(size) + os.urandom(size)  # field 1000, bytes
    return SerializedBody(data, type(body).DESCRIPTOR.name, hashlib.sha256(data).digest())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def test_oversized_and_malformed_messages_are_refused(live: Live) -> None:
    ch = channel(live, "site-0")
    s = signer_for(live, "site-0")
    # An advert is a few hundred bytes: 20 kB is far above its cap and far below maxMessageBytes.
    big = envelope(live, s, pb.Contribution(response=os.urandom(20_000)), phase="advertise")
    reply = send(ch, big)
    assert rejected_reason(reply) == "oversized" and "phase 'advertise'" in reply.detail  # type: ignore[union-attr]
    # Beyond twice the largest message this job can need, gRPC refuses before the message is read.
    huge = envelope(live, s, pb.Contribution(response=os.urandom(MAX_MESSAGE_BYTES + 1)))
    with pytest.raises(grpc.RpcError) as err:
        ch.unary_unary(METHOD)(huge, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert rejected_reason(send(ch, b"\x08\x96\x01 this is not an envelope \xff\xff")) == "malformed"
    assert rejected_reason(send(ch, pb.Envelope(header=b"\x01\x02", body=b"", signature=b"s", signer_cert=b"c").SerializeToString())) == "malformed"


def test_an_oversized_poll_is_refused_before_its_body_is_parsed(live: Live) -> None:
    s = signer_for(live, "site-1")
    reply = send(channel(live, "site-1"), envelope(live, s, padded(pb.Poll(), limits.CONTROL_MESSAGE_BYTES)))
    assert rejected_reason(reply) == "oversized" and "Poll" in reply.detail  # type: ignore[union-attr]
    small = send(channel(live, "site-1"), envelope(live, s, padded(pb.Join(num_samples=10), 100)))  # within the cap
    assert isinstance(small, pb.Ack) and small.accepted, small


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


# --- plaintext mode: the aggregator decodes each update's safetensors -----------------------------


def safetensors_payload(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def answer(live: Live, site: str, task: pb.Task, delta: bytes) -> pb.Ack:
    body = pb.Contribution(response=pb.PlainUpdate(delta=delta, weight=10.0).SerializeToString())
    reply = send(channel(live, site), envelope(live, signer_for(live, site), body, round_id=task.round_id, phase=task.phase))
    assert isinstance(reply, pb.Ack), reply
    return reply


@pytest.fixture(scope="module")
def plain_task(live_plain: Live) -> pb.Task:
    """Both sites joined, so round 0 (its first feature-statistics step, phase ``update``) is under way:
    site-0's task."""
    for site in ("site-0", "site-1"):
        ack = send(channel(live_plain, site), envelope(live_plain, signer_for(live_plain, site), pb.Join(num_samples=10)))
        assert isinstance(ack, pb.Ack) and ack.accepted, ack
    reply = send(channel(live_plain, "site-0"), envelope(live_plain, signer_for(live_plain, "site-0"), pb.Poll()))
    assert isinstance(reply, pb.Reply) and reply.WhichOneof("kind") == "task", reply
    assert (reply.task.kind, reply.task.phase) == ("stats-scale", "update")
    return reply.task


def test_a_bf16_update_is_an_invalid_update_and_the_aggregator_lives(live_plain: Live, plain_task: pb.Task) -> None:
    # numpy cannot hold BF16: the stock safetensors loader raised KeyError and the aggregator exited
    bf16 = safetensors_payload({"mean": {"dtype": "BF16", "shape": [30], "data_offsets": [0, 60]},
                                "sqmean": {"dtype": "F32", "shape": [30], "data_offsets": [60, 180]}}, bytes(180))
    ack = answer(live_plain, "site-0", plain_task, bf16)
    assert (ack.accepted, ack.reason) == (False, "invalid-update") and "'BF16'" in ack.detail, ack
    assert live_plain.proc.poll() is None


def test_a_safetensors_header_that_lies_about_sizes_is_an_invalid_update(live_plain: Live, plain_task: pb.Task) -> None:
    lying = safetensors_payload({"mean": {"dtype": "F32", "shape": [30], "data_offsets": [0, 120]},
                                 "sqmean": {"dtype": "F32", "shape": [30_000], "data_offsets": [120, 120_120]}}, bytes(240))
    ack = answer(live_plain, "site-0", plain_task, lying)
    assert (ack.accepted, ack.reason) == (False, "invalid-update") and "beyond the 240 data bytes" in ack.detail, ack
    assert live_plain.proc.poll() is None


def test_after_the_bad_updates_an_honest_update_is_accepted(live_plain: Live, plain_task: pb.Task) -> None:
    stats = fstats.site_scale(np.ones((10, 30), dtype=np.float32))
    ack = answer(live_plain, "site-0", plain_task, wire_tensors.encode(stats))
    assert ack.accepted, ack


def test_a_site_over_its_concurrent_call_bound_is_busy_while_another_is_served(live_plain: Live, plain_task: pb.Task) -> None:
    # site-0 has answered: each of its polls now waits (long poll) for site-1's answer, holding a worker.
    stub = channel(live_plain, "site-0").unary_unary(METHOD)
    s0 = signer_for(live_plain, "site-0")
    extra = 3
    results: list[futures.Future[bytes]] = []
    for _ in range(limits.MAX_CALLS_PER_SITE + extra):
        call = stub.future(envelope(live_plain, s0, pb.Poll(last_round_id=plain_task.round_id)), timeout=120)
        results.append(futures.Future())
        call.add_done_callback(lambda c, f=results[-1]: f.set_result(c.result()))
    started = time.monotonic()
    first = futures.as_completed(results, timeout=LONG_POLL_SECONDS + 60)
    refused = [next(first) for _ in range(extra)]
    assert time.monotonic() - started < LONG_POLL_SECONDS, "the calls over the bound were not refused at once"
    for f in refused:
        assert rejected_reason(_body(f.result())) == "busy"
    held = [f for f in results if not f.done()]
    assert len(held) == limits.MAX_CALLS_PER_SITE  # the bound's worth of long polls is still being held ...
    reply = send(channel(live_plain, "site-1"), envelope(live_plain, signer_for(live_plain, "site-1"), pb.Poll()))
    assert isinstance(reply, pb.Reply) and reply.WhichOneof("kind") == "task", reply  # ... and site-1 is served
    assert not any(f.done() for f in held)
    for f in futures.as_completed(held, timeout=LONG_POLL_SECONDS + 60):
        body = _body(f.result())
        assert isinstance(body, pb.Reply) and body.WhichOneof("kind") == "wait", body


def _body(raw: bytes) -> pb.Ack | pb.Reply:
    env = pb.Envelope.FromString(raw)
    body = pb.Reply() if pb.Header.FromString(env.header).body_type == "Reply" else pb.Ack()
    body.ParseFromString(env.body)
    return body


def test_the_plaintext_refusals_are_counted(live_plain: Live) -> None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{live_plain.metrics_port}/metrics", timeout=10).read().decode()
    for reason in ("invalid-update", "busy"):
        assert f'fedsec_messages_rejected_total{{job="small",reason="{reason}"}}' in text, reason
    assert live_plain.proc.poll() is None
