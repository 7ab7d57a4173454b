"""``secagg``: the default aggregation mode of every job, as an AggregationMode the engine drives."""

from __future__ import annotations

from fedsec.aggregation.base import (
    AggregationMode,
    ClientUpdate,
    ModeInfo,
    PeerIdentity,
    RoundContext,
)
from fedsec.aggregation.secagg.client import SecAggClient
from fedsec.aggregation.secagg.config import MIN_PARTICIPANTS, SecAggConfig, threshold_count
from fedsec.aggregation.secagg.phases import PHASES
from fedsec.aggregation.secagg.server import AdvertVerifier, SecAggServer


class SecAggMode(AggregationMode):
    """Bonawitz et al. secure aggregation over the SecAgg+ graph of Bell et al., with their
    consistency check.

    ``verify_advert`` (optional) lets the server check each key advert's identity signature itself
    (the aggregator passes the job CA's verifier), so a forged advert blames its sender at once
    instead of costing every neighbour its check; the clients check it regardless.
    """

    info = ModeInfo(name="secagg", server_sees_individual_updates=False, phases=PHASES)

    def __init__(self, config: SecAggConfig | None = None, verify_advert: AdvertVerifier | None = None) -> None:
        self.config = config if config is not None else SecAggConfig()
        self.config.validate()
        self.verify_advert = verify_advert

    def server(self, ctx: RoundContext) -> SecAggServer:
        return SecAggServer(self.config, ctx, self.verify_advert)

    def client(self, ctx: RoundContext, identity: PeerIdentity, update: ClientUpdate) -> SecAggClient:
        return SecAggClient(self.config, ctx, identity, update)

    def required_survivors(self, participants: int, quorum: int) -> int:
        """max(quorum, threshold_count, 2): a round never commits with fewer than the threshold.

        Never raises: for a round the config cannot serve (fewer than two participants, a count
        threshold above the round) the answer exceeds the participants, so the engine ends the
        round at once; the server's Aborted reason says why.
        """
        try:
            t = threshold_count(self.config, participants)
        except ValueError:
            t = self.config.threshold if isinstance(self.config.threshold, int) else participants + 1
            t = max(t, participants // 2 + 1)
        return max(quorum, t, MIN_PARTICIPANTS)
