"""Key epochs: when identity keys rotate and which epochs a message may be signed in. Pure.

Every envelope names the key epoch of the identity key that signed it, and the identity
certificate carries the same epoch (:mod:`fedsec.crypto.pki`). The rules, each in one place here:

- The aggregator owns the job's current epoch. It starts at 0 and only grows: a rollback restores a
  model, never old keys. The epoch and the rounds committed in it are persisted with the engine
  state, so a restarted aggregator continues where it was.
- With ``keys.rotation.everyRounds = N`` a rotation is *due* once N training rounds were committed
  in the current epoch. It happens at the next round boundary (just before a round starts) if the
  next epoch's key is there; if it is not yet (the operator writes it, a Secret volume propagates
  it), rounds go on in the current epoch and the rotation happens at the first boundary after the
  key arrived. Rounds are never held up or lost for a rotation.
- After a rotation the previous epoch still verifies for ``graceRounds`` committed rounds (a site
  that signed before it saw the rotation is not dropped), then only the current epoch does.
  Older epochs never verify again.
- Key material is issued one epoch ahead: while epoch e is current, participants hold the keys of
  e and e+1, so the key for the next rotation is in place before it is due.
- A site follows the aggregator: it signs with the epoch of the aggregator's latest verified reply
  (falling back to the newest key it holds below that), never accepts a reply from an epoch older
  than one it has already seen, and accepts another site's secure-aggregation signatures from the
  aggregator's epoch or the one before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class EpochWindow:
    """The key epochs a message may be signed in: ``low`` to ``high`` inclusive (None: no limit)."""

    low: int
    high: int | None = None

    def __contains__(self, epoch: object) -> bool:
        return isinstance(epoch, int) and epoch >= self.low and (self.high is None or epoch <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{self.low} or later"
        return str(self.low) if self.low == self.high else f"{self.low} to {self.high}"


@dataclass(frozen=True)
class RotationPolicy:
    every_rounds: int | None = None  # None: never rotate
    grace_rounds: int = 1

    @property
    def rotates(self) -> bool:
        return self.every_rounds is not None


def peer_epochs(aggregator_epoch: int) -> EpochWindow:
    """Epochs a site's secure-aggregation advert may be signed in, for its peers and for the
    aggregator alike: the aggregator's epoch and the one before, whatever the grace. A site signs
    its advert when its round starts, possibly just before it learns of a rotation, and the advert
    travels inside the round's messages for the rest of the round."""
    return EpochWindow(max(0, aggregator_epoch - 1), aggregator_epoch)


@dataclass(frozen=True)
class EpochState:
    """The aggregator's key epoch and the training rounds committed in it."""

    epoch: int = 0
    rounds: int = 0

    def accepted(self, policy: RotationPolicy) -> EpochWindow:
        """Epochs the aggregator accepts a site's message in."""
        in_grace = self.epoch > 0 and self.rounds < policy.grace_rounds
        return EpochWindow(self.epoch - 1 if in_grace else self.epoch, self.epoch)

    def due(self, policy: RotationPolicy) -> bool:
        return policy.every_rounds is not None and self.rounds >= policy.every_rounds

    def committed(self) -> EpochState:
        """After a training round committed."""
        return EpochState(self.epoch, self.rounds + 1)

    def rotated(self) -> EpochState:
        return EpochState(self.epoch + 1, 0)

    def to_json(self) -> dict[str, int]:
        return {"key_epoch": self.epoch, "rounds_in_key_epoch": self.rounds}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> EpochState:
        return cls(int(saved.get("key_epoch", 0)), int(saved.get("rounds_in_key_epoch", 0)))


def issued_epochs(current: int, policy: RotationPolicy) -> frozenset[int]:
    """The epochs whose keys participants hold while ``current`` is the aggregator's epoch."""
    return frozenset({current, current + 1}) if policy.rotates else frozenset({current})


@dataclass
class SiteEpochs:
    """A site's view of the key epochs, learned only from replies it verified."""

    aggregator: int  # the newest epoch the aggregator signed a verified reply in

    def accepted(self) -> EpochWindow:
        """Epochs the site accepts the aggregator's replies in: never older than one already seen."""
        return EpochWindow(self.aggregator)

    def peers(self) -> EpochWindow:
        """Epochs another site's secure-aggregation signature may be made in."""
        return peer_epochs(self.aggregator)

    def saw(self, epoch: int) -> None:
        self.aggregator = max(self.aggregator, epoch)

    def signing_epoch(self, held: Iterable[int]) -> int | None:
        """The epoch to sign in: the aggregator's if we hold its key, else the newest we hold below
        it (the aggregator's grace may still accept it), else the oldest we hold (the aggregator's
        epoch is not known yet: material is issued from its epoch on, so this is it or its next)."""
        keys = sorted(set(held))
        if not keys:
            return None
        if self.aggregator in keys:
            return self.aggregator
        below = [e for e in keys if e < self.aggregator]
        return below[-1] if below else keys[0]
