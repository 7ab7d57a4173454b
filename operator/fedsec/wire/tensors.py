"""Typed arrays on the wire: safetensors bytes, checked against the shapes the receiver expects.

safetensors is a JSON header plus raw little-endian buffers: parsing it runs no code from the
sender, unlike pickle. We still check every name, dtype and shape against what the model declares,
and that every value is finite, so a malformed or hostile payload is refused with the field named.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fedsec.aggregation.base import Tensors, TensorSpec


class TensorPayloadError(ValueError):
    """A tensor payload does not match what was expected; the message names the tensor."""


def encode(tensors: Tensors) -> bytes:
    return _st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def decode(
    data: bytes,
    specs: Sequence[TensorSpec],
    *,
    require_finite: bool = True,
) -> Tensors:
    """Parse ``data`` and check it holds exactly ``specs`` (names, dtypes, shapes), in any order."""
    try:
        loaded = _st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError) as exc:
        raise TensorPayloadError(f"not a valid safetensors payload: {exc}") from None
    want = {s.name: s for s in specs}
    missing = sorted(set(want) - set(loaded))
    extra = sorted(set(loaded) - set(want))
    if missing or extra:
        raise TensorPayloadError(
            f"tensor names do not match the model: missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    out: Tensors = {}
    for spec in specs:
        arr = loaded[spec.name]
        if str(arr.dtype) != spec.dtype:
            raise TensorPayloadError(f"tensor {spec.name!r}: dtype {arr.dtype}, expected {spec.dtype}")
        if tuple(arr.shape) != tuple(spec.shape):
            raise TensorPayloadError(
                f"tensor {spec.name!r}: shape {tuple(arr.shape)}, expected {tuple(spec.shape)}"
            )
        if require_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise TensorPayloadError(f"tensor {spec.name!r}: contains NaN or infinity")
        out[spec.name] = arr
    return out


def specs_of(tensors: Tensors) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(k, tuple(int(d) for d in v.shape), str(v.dtype)) for k, v in tensors.items())
