"""Secure aggregation (mode ``secagg``): Bonawitz et al. with the SecAgg+ graph of Bell et al.

The protocol is a pure state machine per role: ``SecAggServer`` and ``SecAggClient`` consume and
emit bytes (``fedsec/wire/proto/secagg.proto``) and do no I/O. ``SecAggMode`` is what the round
engine holds; ``SecAggConfig`` mirrors ``spec.secureAggregation``. See docs/secure-aggregation.md.
"""

from fedsec.aggregation.secagg.client import SecAggClient
from fedsec.aggregation.secagg.config import (
    RoundParams,
    SecAggConfig,
    check_consistency,
    threshold_count,
)
from fedsec.aggregation.secagg.mode import SecAggMode
from fedsec.aggregation.secagg.phases import ADVERTISE, CONSISTENCY, MASKED_INPUT, PHASES, SHARE, UNMASK
from fedsec.aggregation.secagg.server import SecAggServer

__all__ = [
    "ADVERTISE",
    "CONSISTENCY",
    "MASKED_INPUT",
    "PHASES",
    "SHARE",
    "UNMASK",
    "RoundParams",
    "SecAggClient",
    "SecAggConfig",
    "SecAggMode",
    "SecAggServer",
    "check_consistency",
    "threshold_count",
]
