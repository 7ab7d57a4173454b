"""Envelopes: what a valid one looks like, and each way a bad one is refused with its reason."""

from __future__ import annotations

import pytest

from fedsec.crypto import pki
from fedsec.crypto.signing import Signer, Verifier
from fedsec.protocol.rejections import Rejected
from fedsec.protocol.replay import ReplayGuard
from fedsec.protocol.key_epochs import EpochWindow
from fedsec.wire.envelope import open_envelope, seal
from fedsec.wire.proto import round_pb2 as pb

NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def ca() -> pki.CA:
    return pki.new_ca("test")


def signer(ca: pki.CA, name: str, epoch: int = 0) -> Signer:
    m = pki.issue_signing(ca, name, epoch)
    return Signer(m.key_pem, m.cert_pem)


def open_(env: pb.Envelope, ca: pki.CA, replay: ReplayGuard | None = None, **kw: object):
    args = dict(job_uid="job-1", key_epochs=EpochWindow(0, 0), recipient="aggregator", replay=replay, now_ms=NOW, max_bytes=1 << 20)
    args.update(kw)
    return open_envelope(env, Verifier(ca.cert_pem), **args)  # type: ignore[arg-type]


def sealed(s: Signer, body: object = None, **kw: object) -> pb.Envelope:
    args = dict(job_uid="job-1", round_id=3, phase="update", recipient="aggregator", now_ms=NOW)
    args.update(kw)
    return seal(s, body or pb.Poll(last_round_id=2), **args)  # type: ignore[arg-type]


def reason(env: pb.Envelope, ca: pki.CA, **kw: object) -> str:
    with pytest.raises(Rejected) as exc:
        open_(env, ca, **kw)
    return exc.value.reason


def test_valid_envelope_opens_with_its_binding(ca: pki.CA) -> None:
    opened = open_(sealed(signer(ca, "site-a")), ca)
    h = opened.header
    assert (h.job_uid, h.round_id, h.phase, h.key_epoch, h.sender) == ("job-1", 3, "update", 0, "site-a")
    assert len(h.nonce) == 16 and opened.body.last_round_id == 2 and opened.sender.name == "site-a"


def test_tampered_header_or_body_is_refused(ca: pki.CA) -> None:
    env = sealed(signer(ca, "site-a"))
    header = pb.Header.FromString(env.header)
    header.round_id = 99
    forged = pb.Envelope(header=header.SerializeToString(), body=env.body, signature=env.signature, signer_cert=env.signer_cert)
    assert reason(forged, ca) == "bad-signature"
    other_body = pb.Poll(last_round_id=7).SerializeToString()
    swapped = pb.Envelope(header=env.header, body=other_body, signature=env.signature, signer_cert=env.signer_cert)
    assert reason(swapped, ca) == "malformed"


def test_certificate_from_another_ca_is_refused(ca: pki.CA) -> None:
    assert reason(sealed(signer(pki.new_ca("evil"), "site-a")), ca) == "bad-signature"


def test_signature_by_one_site_claiming_another_is_refused(ca: pki.CA) -> None:
    a, b = signer(ca, "site-a"), signer(ca, "site-b")
    env = sealed(a)
    header = pb.Header.FromString(env.header)
    header.sender = "site-b"
    hb = header.SerializeToString()
    # b's certificate with a's signature over the altered header: the signature fails
    assert reason(pb.Envelope(header=hb, body=env.body, signature=a.sign(b"fedsec/v1/envelope\x00" + hb), signer_cert=b.cert_der), ca) == "bad-signature"
    # a's certificate and a valid signature, but the header names b
    assert reason(pb.Envelope(header=hb, body=env.body, signature=a.sign(b"fedsec/v1/envelope\x00" + hb), signer_cert=a.cert_der), ca) == "forged-sender"


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"job_uid": "job-2"}, "wrong-job"),
        ({"key_epochs": EpochWindow(1, 1)}, "wrong-epoch"),
        ({"recipient": "someone-else"}, "wrong-recipient"),
        ({"max_bytes": 64}, "oversized"),
    ],
)
def test_binding_mismatches_are_refused(ca: pki.CA, kw: dict, expected: str) -> None:
    assert reason(sealed(signer(ca, "site-a")), ca, **kw) == expected


def test_replay_and_expiry(ca: pki.CA) -> None:
    guard = ReplayGuard(window_ms=60_000)
    env = sealed(signer(ca, "site-a"))
    open_(env, ca, replay=guard)
    assert reason(env, ca, replay=guard) == "replay"
    assert reason(sealed(signer(ca, "site-a"), now_ms=NOW - 120_000), ca, replay=guard) == "expired"


def test_garbage_fields_are_malformed(ca: pki.CA) -> None:
    env = sealed(signer(ca, "site-a"))
    assert reason(pb.Envelope(header=b"\xff\xff\xff", body=env.body, signature=env.signature, signer_cert=env.signer_cert), ca) == "malformed"
    assert reason(pb.Envelope(header=env.header, body=env.body), ca) == "malformed"
    assert reason(pb.Envelope(header=env.header, body=env.body, signature=env.signature, signer_cert=b"not der"), ca) == "bad-signature"


def test_a_refusal_after_the_signature_names_the_request_and_one_before_does_not(ca: pki.CA) -> None:
    env = sealed(signer(ca, "site-a", epoch=1))
    with pytest.raises(Rejected) as exc:
        open_(env, ca, key_epochs=EpochWindow(2, 2))
    assert exc.value.reason == "wrong-epoch" and "accepted epochs: 2" in exc.value.detail
    assert (exc.value.sender, exc.value.nonce) == ("site-a", pb.Header.FromString(env.header).nonce)
    with pytest.raises(Rejected) as exc:
        open_(sealed(signer(pki.new_ca("evil"), "site-a")), ca)
    assert exc.value.reason == "bad-signature" and (exc.value.sender, exc.value.nonce) == ("", b"")
