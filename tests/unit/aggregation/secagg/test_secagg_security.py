"""What the server and the network can and cannot get out of an honest client."""

from __future__ import annotations

import numpy as np
import pytest

from fedsec.aggregation.base import Aborted, ClientUpdate, Finished, NextPhase, ProtocolRejection, TensorSpec
from fedsec.aggregation.secagg import CONSISTENCY, MASKED_INPUT, PHASES, SHARE, UNMASK, SecAggConfig, SecAggMode
from fedsec.crypto.secagg import shamir
from fedsec.wire.proto import secagg_pb2 as pb
from secagg_harness import context, run_round, start, step


def _zeros(ctx, d: int, value: float = 0.0, weight: float = 1.0) -> dict[str, ClientUpdate]:
    return {c: ClientUpdate({"v": np.full(d, value, np.float32)}, weight) for c in ctx.participants}


def _byte_chi2(words: np.ndarray) -> float:
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = counts.sum() / 256
    return float(((counts - expected) ** 2 / expected).sum())


def _bit_z(words: np.ndarray) -> float:
    """Largest |z-score| of the frequency of any of the 32 bit positions being set."""
    bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    p = bits.mean(axis=0)
    return float(np.max(np.abs(p - 0.5) / np.sqrt(0.25 / words.size)))


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_a_single_masked_vector_is_indistinguishable_from_uniform(value: float) -> None:
    d = 40_000
    ctx = context(3, (TensorSpec("v", (d,)),))
    run = run_round(SecAggMode(), ctx, _zeros(ctx, d, value), weight_bound=1.0)
    assert isinstance(run.outcome, Finished)
    for c in ctx.participants:
        masked = pb.SecAggMaskedInputResponse.FromString(run.sent[c][2]).masked
        words = np.frombuffer(masked, dtype="<u4")
        # 255 degrees of freedom: a uniform source exceeds 400 with p < 1e-7; a bit frequency
        # beyond 6 sigma has p < 1e-8 over 32 positions.
        assert _byte_chi2(words) < 400
        assert _bit_z(words) < 6
    # The same statistics do catch structure: the unmasked encoding of the same input fails both.
    fixed = run.server.params.fixed
    plain = np.empty(d, dtype=fixed.dtype)
    fixed.encode(np.full(d, value), 1.0, plain)
    assert _byte_chi2(plain) > 10_000 and _bit_z(plain) > 50


def test_masked_vectors_of_different_inputs_have_the_same_distribution() -> None:
    d = 40_000
    ctx = context(3, (TensorSpec("v", (d,)),))
    low = run_round(SecAggMode(), ctx, _zeros(ctx, d, -0.9), weight_bound=1.0)
    high = run_round(SecAggMode(), ctx, _zeros(ctx, d, 0.9), weight_bound=1.0)
    a = np.frombuffer(pb.SecAggMaskedInputResponse.FromString(low.sent["site-00"][2]).masked, "<u4")
    b = np.frombuffer(pb.SecAggMaskedInputResponse.FromString(high.sent["site-00"][2]).masked, "<u4")
    # two-sample chi-square over the top byte (256 bins): homogeneity statistic stays at noise level
    ca = np.bincount((a >> 24).astype(np.int64), minlength=256)
    cb = np.bincount((b >> 24).astype(np.int64), minlength=256)
    stat = float((((ca - cb) ** 2) / np.maximum(ca + cb, 1)).sum())
    assert stat < 400


def _to_unmask(n: int = 5, threshold: float = 0.51):
    mode = SecAggMode(SecAggConfig(threshold=threshold))
    ctx = context(n, (TensorSpec("v", (4,)),))
    server, clients = start(mode, ctx, _zeros(ctx, 4, 0.1))
    for _ in range(4):
        assert isinstance(step(server, clients), NextPhase)
    assert server.phase == UNMASK
    return ctx, server, clients


def _honest_unmask(server, client_id: str, **change) -> bytes:
    """The server's genuine unmask request (with the neighbours' confirmations), lists changed."""
    req = pb.SecAggUnmaskRequest.FromString(server.request_for(client_id))
    for field, value in change.items():
        del getattr(req, field)[:]
        getattr(req, field).extend(value)
    return req.SerializeToString()


def test_a_server_asking_for_both_share_kinds_of_a_peer_is_refused() -> None:
    _, server, clients = _to_unmask()
    me = clients["site-00"]
    greedy = pb.SecAggUnmaskRequest(survivors=[1, 2, 3, 4], dropped=[2]).SerializeToString()
    with pytest.raises(ProtocolRejection) as exc:
        me.respond(UNMASK, greedy)
    assert exc.value.reason == "share_kind_conflict"
    # having refused, it holds no share or key of the round any more (Python cannot wipe memory;
    # dropping the references is what it can do) ...
    assert me._held == {} and me._own is None and me._seed is None and me._mask is None  # noqa: SLF001
    # ... and reveals nothing more this round, however the server asks
    with pytest.raises(ProtocolRejection, match="round_over"):
        me.respond(UNMASK, _honest_unmask(server, "site-00"))


def test_a_client_answers_unmask_once_so_the_other_kind_cannot_be_asked_later() -> None:
    _, server, clients = _to_unmask()
    me = clients["site-01"]
    first = pb.SecAggUnmaskResponse.FromString(me.respond(UNMASK, _honest_unmask(server, "site-01")))
    assert not first.mask_key_shares
    with pytest.raises(ProtocolRejection, match="round_over"):
        me.respond(UNMASK, _honest_unmask(server, "site-01", survivors=[2, 3, 4], dropped=[0]))


def test_an_unmask_request_that_contradicts_the_confirmed_survivor_set_is_refused() -> None:
    _, server, clients = _to_unmask()
    with pytest.raises(ProtocolRejection) as exc:
        clients["site-03"].respond(UNMASK, _honest_unmask(server, "site-03", survivors=[1, 2, 4], dropped=[0]))
    assert exc.value.reason == "inconsistent"


def test_a_forged_or_foreign_confirmation_is_caught() -> None:
    _, server, clients = _to_unmask()
    req = pb.SecAggUnmaskRequest.FromString(server.request_for("site-02"))
    req.confirmations[0].mac = bytes(32)  # the server cannot make a neighbour's MAC
    with pytest.raises(ProtocolRejection) as exc:
        clients["site-02"].respond(UNMASK, req.SerializeToString())
    assert exc.value.reason == "inconsistent"


def test_a_split_view_is_caught_by_the_consistency_check() -> None:
    # The server shows {0, 1, 2} the survivor set U3 = {0..4} and {3, 4} the set without client 0,
    # hoping for 0's seed shares from the first group and its mask-key shares from the second.
    # The second group's MACs vouch for another set: relayed, they are caught; withheld, the second
    # group has too few confirmations and reveals nothing. No mask-key share of 0 ever leaves.
    mode = SecAggMode(SecAggConfig(threshold=0.51))
    ctx = context(5, (TensorSpec("v", (4,)),))
    server, clients = start(mode, ctx, _zeros(ctx, 4, 0.1))
    for _ in range(3):
        assert isinstance(step(server, clients), NextPhase)
    assert server.phase == CONSISTENCY
    full, lie = pb.SecAggConsistencyRequest(survivors=range(5)), pb.SecAggConsistencyRequest(survivors=range(1, 5))
    macs: dict[int, dict[int, bytes]] = {}
    for i in range(5):
        shown = lie if i in (3, 4) else full
        if i == 0:
            continue  # (0 is not in the lie; the server asks it with the full set like the others below)
        res = pb.SecAggConsistencyResponse.FromString(clients[ctx.participants[i]].respond(CONSISTENCY, shown.SerializeToString()))
        for c in res.confirmations:
            macs.setdefault(c.peer, {})[i] = c.mac
    res0 = pb.SecAggConsistencyResponse.FromString(clients["site-00"].respond(CONSISTENCY, full.SerializeToString()))
    for c in res0.confirmations:
        macs.setdefault(c.peer, {})[0] = c.mac

    def unmask(i: int, survivors: list[int], dropped: list[int], senders: list[int]) -> bytes:
        req = pb.SecAggUnmaskRequest(survivors=survivors, dropped=dropped)
        for w in senders:
            req.confirmations.add(peer=w, mac=macs[i][w])
        return req.SerializeToString()

    # Relaying the second group's MACs to the first group is caught.
    with pytest.raises(ProtocolRejection) as exc:
        clients["site-01"].respond(UNMASK, unmask(1, [0, 2, 3, 4], [], [0, 2, 3]))
    assert exc.value.reason == "inconsistent"
    # Withheld, the second group cannot gather the local threshold of matching confirmations.
    for i in (3, 4):
        other = 7 - i
        with pytest.raises(ProtocolRejection) as exc:
            clients[ctx.participants[i]].respond(UNMASK, unmask(i, [1, 2, other], [0], [other]))
        assert exc.value.reason == "below_threshold"
        assert clients[ctx.participants[i]]._held == {}  # noqa: SLF001 - refused: it forgot every share


@pytest.mark.parametrize("phase", [SHARE, MASKED_INPUT, UNMASK])
def test_below_threshold_rounds_abort_without_revealing_shares(phase: str) -> None:
    n = 6  # threshold 2/3 -> 4 survivors needed
    mode = SecAggMode()
    ctx = context(n, (TensorSpec("v", (4,)),))
    server, clients = start(mode, ctx, _zeros(ctx, 4, 0.1))
    gone = {"site-00", "site-02", "site-04"}
    outcome = NextPhase("advertise")
    while isinstance(outcome, NextPhase):
        late = PHASES.index(server.phase) >= PHASES.index(phase)
        outcome = step(server, clients, skip=gone if late else set())
    if phase == UNMASK:
        # masked inputs of all six are in the sum; three fail to unmask: some seeds cannot be rebuilt
        assert isinstance(outcome, Aborted) and "shares" in outcome.reason
    else:
        assert isinstance(outcome, Aborted) and "fewer than the 4 required" in outcome.reason
        # no client was ever sent an unmask request, so no share left any client
        assert all(c.state != "done" for c in clients.values())
    assert server.survivors() == 0 and server.expected() == frozenset()
    assert server.request_for("site-01") is None
    assert server.close_phase() is outcome


def test_server_state_never_holds_an_individual_update() -> None:
    # Inputs that quantize exactly make any unmasked copy recognisable; none may appear in the
    # server's state at any point of the round.
    d = 64
    mode = SecAggMode(SecAggConfig(neighbours="complete"))
    ctx = context(4, (TensorSpec("v", (d,)),))
    frac = mode.server(ctx).params.fixed.frac_bits
    rng = np.random.default_rng(3)
    ms = {c: rng.integers(-1000, 1000, d) for c in ctx.participants}
    updates = {c: ClientUpdate({"v": (m / 2.0**frac).astype(np.float32)}, 1.0) for c, m in ms.items()}
    server, clients = start(mode, ctx, updates, weight_bound=1.0)

    def arrays(obj, depth=0):
        if isinstance(obj, np.ndarray):
            yield obj
        elif depth < 4 and isinstance(obj, dict):
            for v in obj.values():
                yield from arrays(v, depth + 1)
        elif depth < 4 and isinstance(obj, (list, tuple, set)):
            for v in obj:
                yield from arrays(v, depth + 1)

    outcome = NextPhase("advertise")
    while isinstance(outcome, NextPhase):
        outcome = step(server, clients)
        for arr in arrays(vars(server)):
            if arr.size >= d:
                signed = arr[:d].view(np.int32) if arr.dtype == np.uint32 else arr[:d]
                assert not any(np.array_equal(signed, m) for m in ms.values())
    assert isinstance(outcome, Finished)
