"""Malformed, tampered and misdirected messages: each side refuses them and names what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from fedsec.aggregation.base import Aborted, ClientUpdate, Finished, NextPhase, ProtocolRejection, TensorSpec
from fedsec.aggregation.secagg import ADVERTISE, MASKED_INPUT, SHARE, UNMASK, SecAggConfig, SecAggMode
from fedsec.crypto.secagg import shamir
from fedsec.wire.proto import secagg_pb2 as pb
from secagg_harness import context, identities, start, step

SPECS = (TensorSpec("v", (6,)),)


def _round(n: int = 4, config: SecAggConfig | None = None):
    mode = SecAggMode(config or SecAggConfig(threshold=0.51))
    ctx = context(n, SPECS)
    updates = {c: ClientUpdate({"v": np.full(6, 0.25 * i, np.float32)}, 1.0 + i) for i, c in enumerate(ctx.participants)}
    server, clients = start(mode, ctx, updates)
    return mode, ctx, server, clients, updates


def _rejects(reason: str, fn, *args) -> ProtocolRejection:
    with pytest.raises(ProtocolRejection) as exc:
        fn(*args)
    assert exc.value.reason == reason, exc.value
    return exc.value


# --- the client refuses ---------------------------------------------------------------------------


def test_client_refuses_parameters_that_differ_from_its_own() -> None:
    _, ctx, _, clients, _ = _round()
    other = SecAggMode(SecAggConfig(threshold=0.51, clip_range=2.0)).server(ctx)
    _rejects("params_mismatch", clients["site-00"].respond, ADVERTISE, other.request_for("site-00"))
    assert clients["site-00"].state == "failed"


def test_client_refuses_a_request_for_another_phase() -> None:
    _, _, server, clients, _ = _round()
    _rejects("unexpected_phase", clients["site-00"].respond, SHARE, server.request_for("site-00"))
    assert clients["site-00"].state == ADVERTISE  # a stray message does not end the round


def _share_request(server, clients, victim: str) -> pb.SecAggShareRequest:
    assert isinstance(step(server, clients), NextPhase)
    return pb.SecAggShareRequest.FromString(server.request_for(victim))


def _left_out(client, req: pb.SecAggShareRequest, peer: int, reason: str) -> None:
    """The client goes on without ``peer``: no shares for it, and it says why."""
    res = pb.SecAggShareResponse.FromString(client.respond(SHARE, req.SerializeToString()))
    assert peer not in {s.peer for s in res.shares}
    assert [(b.peer, b.reason) for b in res.blamed] == [(peer, reason)]
    assert client.state == MASKED_INPUT and client.blamed == {peer: reason}


def test_client_leaves_out_an_advert_whose_keys_were_swapped_by_the_server() -> None:
    _, _, server, clients, _ = _round()
    req = _share_request(server, clients, "site-00")
    from fedsec.crypto.secagg import keys

    req.peers[0].advert.mask_public_key = keys.KeyPair().public  # a key the server controls
    _left_out(clients["site-00"], req, req.peers[0].index, "bad_signature")


def test_client_leaves_out_a_low_order_key() -> None:
    _, _, server, clients, _ = _round()
    req = _share_request(server, clients, "site-00")
    req.peers[0].advert.cipher_public_key = bytes(32)  # the identity point: every agreement is zero
    _left_out(clients["site-00"], req, req.peers[0].index, "bad_key")


def test_client_refuses_an_advert_signed_under_another_name() -> None:
    _, _, server, clients, _ = _round()
    req = _share_request(server, clients, "site-00")
    # site-01's advert re-signed by site-03 with site-03's certificate: valid signature, wrong peer
    from fedsec.crypto.secagg import keys

    a = req.peers[0].advert
    forger = identities()["site-03"]
    msg = keys.advert_message(keys.RoundBinding("job-uid", 7), "site-01", a.cipher_public_key, a.mask_public_key, a.seed_commitment)
    a.signature, a.cert = forger.sign(msg), forger.cert
    _left_out(clients["site-00"], req, req.peers[0].index, "bad_signature")


def test_client_refuses_an_advert_replayed_from_another_round() -> None:
    mode, ctx, server, clients, updates = _round()
    old_req = _share_request(server, clients, "site-00")
    fresh_ctx = context(4, SPECS, round_id=8)
    server2, clients2 = start(mode, fresh_ctx, updates)
    assert isinstance(step(server2, clients2), NextPhase)
    # Every advert is from round 7: none verifies in round 8, and too few are left to go on with.
    _rejects("below_threshold", clients2["site-00"].respond, SHARE, old_req.SerializeToString())
    assert clients2["site-00"].blamed == {1: "bad_signature", 2: "bad_signature", 3: "bad_signature"}


def test_client_refuses_peers_outside_its_neighbourhood() -> None:
    config = SecAggConfig(threshold=0.51, neighbours=2, complete_graph_max=1)
    _, ctx, server, clients, _ = _round(n=8, config=config)
    req = _share_request(server, clients, "site-00")
    outsider = next(i for i in range(1, 8) if i not in clients["site-00"].neighbours)
    req.peers.add(index=outsider, advert=req.peers[0].advert)
    _rejects("unknown_peer", clients["site-00"].respond, SHARE, req.SerializeToString())


def test_client_refuses_too_few_neighbours() -> None:
    _, _, server, clients, _ = _round(n=5)
    req = _share_request(server, clients, "site-00")
    del req.peers[1:]
    _rejects("below_threshold", clients["site-00"].respond, SHARE, req.SerializeToString())


def test_client_blames_tampered_or_redirected_shares_and_holds_none_of_them() -> None:
    _, _, server, clients, _ = _round()
    for _ in range(2):
        assert isinstance(step(server, clients), NextPhase)
    req = pb.SecAggMaskedInputRequest.FromString(server.request_for("site-00"))
    tampered = pb.SecAggMaskedInputRequest()
    tampered.CopyFrom(req)
    ct = bytearray(tampered.shares[0].ciphertext)
    ct[-1] ^= 1
    tampered.shares[0].ciphertext = bytes(ct)
    res = pb.SecAggMaskedInputResponse.FromString(clients["site-00"].respond(MASKED_INPUT, tampered.SerializeToString()))
    assert [(b.peer, b.reason) for b in res.blamed] == [(tampered.shares[0].peer, "bad_share")]
    # site-01's ciphertext for site-00 presented to site-02 as if it came from site-01
    misdirected = pb.SecAggMaskedInputRequest.FromString(server.request_for("site-02"))
    misdirected.shares[0].ciphertext = req.shares[0].ciphertext
    res2 = pb.SecAggMaskedInputResponse.FromString(clients["site-02"].respond(MASKED_INPUT, misdirected.SerializeToString()))
    assert [(b.peer, b.reason) for b in res2.blamed] == [(misdirected.shares[0].peer, "bad_share")]


def test_client_refuses_an_unmask_request_naming_strangers_or_itself() -> None:
    _, _, server, clients, _ = _round()
    for _ in range(4):
        assert isinstance(step(server, clients), NextPhase)
    _rejects("share_kind_conflict", clients["site-00"].respond, UNMASK,
             pb.SecAggUnmaskRequest(survivors=[1, 2], dropped=[0, 3]).SerializeToString())
    _rejects("unknown_peer", clients["site-01"].respond, UNMASK,
             pb.SecAggUnmaskRequest(survivors=[0, 2]).SerializeToString())


# --- the server refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xff\xff", "malformed"),
        (pb.SecAggKeyAdvert(cipher_public_key=b"x" * 31, mask_public_key=b"x" * 32).SerializeToString(), "wrong_size"),
        (pb.SecAggKeyAdvert(cipher_public_key=b"x" * 32, mask_public_key=b"x" * 32, seed_commitment=b"c" * 32,
                            signature=b"s" * 64).SerializeToString(), "wrong_size"),
    ],
)
def test_server_refuses_malformed_adverts(body: bytes, reason: str) -> None:
    _, _, server, _, _ = _round()
    _rejects(reason, server.receive, "site-00", body)
    assert "site-00" in server.expected()


def test_server_refuses_answers_from_strangers() -> None:
    _, _, server, _, _ = _round()
    _rejects("unknown_client", server.receive, "mallory", b"")


def test_server_refuses_shares_for_the_wrong_recipients_or_of_the_wrong_size() -> None:
    _, _, server, clients, _ = _round()
    assert isinstance(step(server, clients), NextPhase)
    good = pb.SecAggShareResponse.FromString(clients["site-00"].respond(SHARE, server.request_for("site-00")))
    short = pb.SecAggShareResponse()
    short.CopyFrom(good)
    del short.shares[0]
    _rejects("unexpected_recipients", server.receive, "site-00", short.SerializeToString())
    bad = pb.SecAggShareResponse()
    bad.CopyFrom(good)
    bad.shares[0].ciphertext = b"x"
    _rejects("wrong_size", server.receive, "site-00", bad.SerializeToString())
    server.receive("site-00", good.SerializeToString())  # the genuine answer is still accepted


def test_a_rejected_masked_input_leaves_no_trace_in_the_sum() -> None:
    _, _, server, clients, updates = _round()
    for _ in range(2):
        assert isinstance(step(server, clients), NextPhase)
    for body in (pb.SecAggMaskedInputResponse(masked=b"\x00" * 5).SerializeToString(), b"\x0a\x03abc\x12"):
        with pytest.raises(ProtocolRejection):
            server.receive("site-00", body)
    for _ in range(3):
        outcome = step(server, clients)
    assert isinstance(outcome, Finished)
    total = sum(u.weight for u in updates.values())
    want = sum(u.delta["v"].astype(np.float64) * u.weight for u in updates.values()) / total
    np.testing.assert_allclose(outcome.aggregate.mean_delta["v"], want, atol=1e-4)


def test_a_corrupted_share_aborts_instead_of_unmasking_garbage() -> None:
    _, ctx, server, clients, _ = _round(n=3, config=SecAggConfig(threshold=1.0))
    for _ in range(4):
        assert isinstance(step(server, clients), NextPhase)
    for c in ctx.participants:
        res = pb.SecAggUnmaskResponse.FromString(clients[c].respond(UNMASK, server.request_for(c)))
        if c == "site-01":
            y = shamir.decode_share(res.seed_shares[0].share)
            res.seed_shares[0].share = shamir.encode_share((y + 1) % shamir.PRIME)
        server.receive(c, res.SerializeToString())
    outcome = server.close_phase()
    assert isinstance(outcome, Aborted) and "corrupted" in outcome.reason


def test_server_refuses_unmask_answers_with_the_wrong_owners() -> None:
    _, _, server, clients, _ = _round()
    for _ in range(4):
        assert isinstance(step(server, clients), NextPhase)
    genuine = pb.SecAggUnmaskResponse.FromString(clients["site-00"].respond(UNMASK, server.request_for("site-00")))
    forged = pb.SecAggUnmaskResponse()
    forged.CopyFrom(genuine)
    forged.mask_key_shares.add(owner=1, share=genuine.seed_shares[1].share)
    _rejects("unexpected_owners", server.receive, "site-00", forged.SerializeToString())
