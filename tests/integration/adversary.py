"""The adversary harness: a modified aggregator and malicious sites, as real processes.

Run as a script, this module starts fedsec's own aggregator or client process with one part of its
behaviour replaced by an attack — the rest (TLS, envelopes, signing, the round engine, the secure
aggregation state machines) is the real code:

    python adversary.py aggregator ATTACK[,ATTACK...] CONFIG   # attack k rides on round attempt k
    python adversary.py client ATTACK CONFIG                   # a site that cheats in every round

Aggregator attacks change the Task (or a protocol request) the aggregator sends; each is one thing
the site trusts only as far as it derived it from its admitted plan. Client attacks are what one
authenticated site could send to break the aggregator or its neighbours.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from fedsec.aggregation.secagg import phases as ph
from fedsec.aggregation.secagg.client import SecAggClient
from fedsec.aggregation.secagg.server import SecAggServer
from fedsec.protocol import engine as eng
from fedsec.wire.proto import round_pb2 as pb
from fedsec.wire.proto import secagg_pb2 as spb

TaskAttack = Callable[[pb.Task], None]


def _aggregator_joins(task: pb.Task) -> None:
    """Isolate one site: a round of the aggregator's own identity and the victim."""
    del task.participants[:]
    task.participants.extend(sorted(["aggregator", "site-0"]))


def _too_few(task: pb.Task) -> None:
    """Two participants where the plan's quorum is three: the sum would nearly be one update."""
    del task.participants[2:]


def _chosen_seed(task: pb.Task) -> None:
    """A graph seed the server picked (to surround a victim with colluders)."""
    task.round_seed = b"\x07" * 32


def _inflated_survivors(task: pb.Task) -> None:
    """More survivors than the plan: distributed noise would be sized for a sum that never comes."""
    task.min_survivors += 5


def _extra_round(task: pb.Task) -> None:
    """A training round the plan does not have: privacy spend the site never admitted."""
    task.round_number = 99


def _weight_bound(task: pb.Task) -> None:
    """A per-client weight bound: rounds every other update to zero, or wipes out precision."""
    if task.phase == ph.ADVERTISE:
        req = spb.SecAggAdvertiseRequest.FromString(task.request)
        req.params.weight_bound = 1e-3
        task.request = req.SerializeToString()


def _weak_threshold(task: pb.Task) -> None:
    """Secrets shared at a bare minimum of holders, whatever the job's threshold says."""
    if task.phase == ph.ADVERTISE:
        req = spb.SecAggAdvertiseRequest.FromString(task.request)
        req.params.threshold = req.params.local_threshold = 2
        task.request = req.SerializeToString()


TASK_ATTACKS: dict[str, TaskAttack] = {
    "aggregator-joins": _aggregator_joins,
    "too-few": _too_few,
    "chosen-seed": _chosen_seed,
    "inflated-survivors": _inflated_survivors,
    "extra-round": _extra_round,
    "weight-bound": _weight_bound,
    "weak-threshold": _weak_threshold,
}
SPLIT_VIEW = "split-view"  # the server shows site-0 a survivor set without site-1 (consistency check)
FORGED_CONFIRMATION = "forged-confirmation"  # the server hands site-0 a neighbour's confirmation it made up
AGGREGATOR_ATTACKS = (*TASK_ATTACKS, SPLIT_VIEW, FORGED_CONFIRMATION)


def run_evil_aggregator(attacks: list[str], config: Path) -> int:
    from fedsec.runtime import aggregator

    by_attempt = dict(enumerate(attacks, start=1))  # round ids are issued 1, 2, ... one per attempt
    real_task = aggregator.Aggregator._task
    real_request = SecAggServer._build_request

    def task(self: aggregator.Aggregator, t: eng.TaskView) -> pb.Task:
        out = real_task(self, t)
        attack = TASK_ATTACKS.get(by_attempt.get(t.round_id, ""))
        if attack is not None:
            attack(out)
        return out

    def request(self: SecAggServer, i: int) -> bytes:
        body = real_request(self, i)
        if by_attempt.get(self._ctx.round_id) == SPLIT_VIEW and self.phase == ph.CONSISTENCY and i == 0:
            lie = spb.SecAggConsistencyRequest.FromString(body)
            kept = [s for s in lie.survivors if s != 1]
            del lie.survivors[:]
            lie.survivors.extend(kept)
            body = lie.SerializeToString()
        if by_attempt.get(self._ctx.round_id) == FORGED_CONFIRMATION and self.phase == ph.UNMASK and i == 0:
            req = spb.SecAggUnmaskRequest.FromString(body)
            req.confirmations[0].mac = bytes(len(req.confirmations[0].mac))
            body = req.SerializeToString()
        return body

    real_poll = eng.RoundEngine.poll

    def poll(self: eng.RoundEngine, site: str, last_round_id: int, now: float):  # type: ignore[no-untyped-def]
        result, effects = real_poll(self, site, last_round_id, now)
        # A round of two is run with those two only: the others are not asked at all.
        if by_attempt.get(self.current_round_id) == "too-few" and isinstance(result, eng.TaskView) \
                and site not in result.participants[:2]:
            return eng.WaitView("not in this round"), effects
        return result, effects

    real_maybe_close = eng.RoundEngine._maybe_close_phase

    def maybe_close(self: eng.RoundEngine, now: float) -> list[eng.Effect]:
        # An attacker wants every site to see its attack: an attacked attempt waits for each site
        # it asked to answer or withdraw, rather than ending at the first withdrawal below quorum.
        a = self._attempt
        attack = by_attempt.get(a.round_id) if a is not None else None
        if a is None or attack is None:
            return real_maybe_close(self, now)
        asked = set(a.participants[:2]) if attack == "too-few" else set(a.server.expected())
        if asked - a.answered - a.withdrawn:
            return []
        return self._close_phase(now, deadline=attack == "too-few")

    eng.RoundEngine.poll = poll  # type: ignore[method-assign]
    eng.RoundEngine._maybe_close_phase = maybe_close  # type: ignore[method-assign]
    aggregator.Aggregator._task = task  # type: ignore[method-assign]
    SecAggServer._build_request = request  # type: ignore[method-assign]
    return aggregator.main(config, 0)


# --- malicious sites ------------------------------------------------------------------------------

LOW_ORDER = bytes(32)  # the X25519 identity point: every agreement with it is all zeros


def run_evil_client(attack: str, config: Path) -> int:
    from fedsec.runtime import client

    if attack == "low-order-key":
        real = SecAggClient._advertise

        def advertise(self: SecAggClient, body: bytes) -> bytes:
            advert = spb.SecAggKeyAdvert.FromString(real(self, body))
            advert.mask_public_key = LOW_ORDER
            return advert.SerializeToString()

        SecAggClient._advertise = advertise  # type: ignore[method-assign]
    elif attack == "garbage-shares":
        real_share = SecAggClient._share

        def share(self: SecAggClient, body: bytes) -> bytes:
            res = spb.SecAggShareResponse.FromString(real_share(self, body))
            for s in res.shares:
                s.ciphertext = bytes(len(s.ciphertext))  # right size, opens for no one
            return res.SerializeToString()

        SecAggClient._share = share  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown client attack {attack!r}")
    return client.main(config, 0)


if __name__ == "__main__":
    role, attack_list, cfg = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if role == "aggregator":
        sys.exit(run_evil_aggregator(attack_list.split(","), cfg))
    sys.exit(run_evil_client(attack_list, cfg))
