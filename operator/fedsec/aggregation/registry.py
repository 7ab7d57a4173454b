"""The one place a job's ``secureAggregation`` spec becomes an aggregation protocol."""

from __future__ import annotations

from fedsec.aggregation.base import AggregationMode
from fedsec.aggregation.plaintext import PlaintextMode
from fedsec.api.job import SecureAggregationSpec


def mode_for(spec: SecureAggregationSpec) -> AggregationMode:
    if spec.mode == "none":
        return PlaintextMode()
    raise ValueError(f"secureAggregation.mode {spec.mode!r} is not available in this build")
