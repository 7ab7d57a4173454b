"""Typed arrays on the wire: safetensors bytes, checked against the shapes the receiver expects.

safetensors is a JSON header plus raw little-endian buffers: parsing it runs no code from the
sender, unlike pickle. We still check every name, dtype and shape against what the model declares,
and that every value is finite, so a malformed or hostile payload is refused with the field named.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from safetensors.numpy import save as _st_save

from fedsec.aggregation.base import Tensors, TensorSpec


class TensorPayloadError(ValueError):
    """A tensor payload does not match what was expected; the message names the tensor."""


# The safetensors dtypes numpy can represent exactly (BF16 and the FP8 kinds have no numpy dtype).
# Anything else is refused by name, before a buffer is touched.
_DTYPES: dict[str, np.dtype[Any]] = {
    code: np.dtype(name).newbyteorder("<")
    for code, name in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("I64", "int64"), ("U64", "uint64"),
        ("I32", "int32"), ("U32", "uint32"), ("I16", "int16"), ("U16", "uint16"), ("I8", "int8"),
        ("U8", "uint8"), ("BOOL", "bool"),
    )
}
MAX_HEADER_BYTES = 1 << 20  # ~10k tensors' entries: far above any model here, far below a memory threat
MAX_RANK = 16  # no model tensor has more dimensions; a long shape list is only a way to burn CPU


def encoded_size(specs: Sequence[TensorSpec]) -> int:
    """Exact length of :func:`encode` of tensors matching ``specs`` (to bound what a peer may send)."""
    return len(encode({s.name: np.zeros(s.shape, dtype=s.dtype) for s in specs}))


def encode(tensors: Tensors) -> bytes:
    return _st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def decode(
    data: bytes,
    specs: Sequence[TensorSpec],
    *,
    require_finite: bool = True,
) -> Tensors:
    """Parse ``data`` and check it holds exactly ``specs`` (names, dtypes, shapes), in any order.

    Raises only :class:`TensorPayloadError` whatever the bytes: a peer's payload must never crash us.
    """
    loaded = _parse(memoryview(data))
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


def _parse(buf: memoryview) -> dict[str, np.ndarray]:
    """Read a safetensors payload ourselves: the 8-byte little-endian header length, a JSON header of
    ``{name: {dtype, shape, data_offsets}}`` (and an optional ``__metadata__``), then the buffers.
    Every claim of the header is checked against the bytes before an array is made, because a lying
    header is exactly what a hostile sender would write (the stock loader raises KeyError on BF16)."""
    if len(buf) < 8:
        raise TensorPayloadError(f"not a valid safetensors payload: {len(buf)} bytes, shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", buf[:8])
    if header_len > MAX_HEADER_BYTES:
        raise TensorPayloadError(f"safetensors header of {header_len} bytes exceeds the limit of {MAX_HEADER_BYTES}")
    if 8 + header_len > len(buf):
        raise TensorPayloadError(f"safetensors header claims {header_len} bytes but only {len(buf) - 8} follow")
    try:
        header = json.loads(bytes(buf[8 : 8 + header_len]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except TensorPayloadError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TensorPayloadError(f"safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise TensorPayloadError(f"safetensors header must be a JSON object, got {type(header).__name__}")
    data = buf[8 + header_len :]
    entries: list[tuple[int, int, str, np.dtype[Any], tuple[int, ...]]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue  # free-form strings; nothing of ours reads them
        entries.append((*_check_entry(name, entry), name, *_entry_type(name, entry)))
    entries.sort()
    cursor = 0
    out: dict[str, np.ndarray] = {}
    for begin, end, name, dtype, shape in entries:
        # safetensors requires the buffers to tile the data region exactly: no gap, no overlap, no tail
        if begin != cursor:
            raise TensorPayloadError(
                f"tensor {name!r}: data_offsets start at {begin}, expected {cursor} (buffers overlap or leave a gap)"
            )
        want = math.prod(shape) * dtype.itemsize  # Python ints: a crafted shape cannot wrap around
        if end - begin != want:
            raise TensorPayloadError(
                f"tensor {name!r}: data_offsets span {end - begin} bytes, but shape {shape} of {dtype.name} needs {want}"
            )
        if end > len(data):
            raise TensorPayloadError(f"tensor {name!r}: data_offsets end at {end}, beyond the {len(data)} data bytes")
        out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        cursor = end
    if cursor != len(data):
        raise TensorPayloadError(f"safetensors payload has {len(data) - cursor} bytes after the last tensor")
    return out


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise TensorPayloadError(f"safetensors header names {k!r} twice")
        out[k] = v
    return out


def _check_entry(name: str, entry: Any) -> tuple[int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise TensorPayloadError(f"tensor {name!r}: header entry must hold exactly dtype, shape and data_offsets")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise TensorPayloadError(f"tensor {name!r}: data_offsets must be two non-negative integers, got {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise TensorPayloadError(f"tensor {name!r}: data_offsets end {end} before they begin {begin}")
    return begin, end


def _entry_type(name: str, entry: dict[str, Any]) -> tuple[np.dtype[Any], tuple[int, ...]]:
    code, shape = entry["dtype"], entry["shape"]
    dtype = _DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise TensorPayloadError(
            f"tensor {name!r}: dtype {code!r} is not one this runtime reads (known: {', '.join(_DTYPES)})"
        )
    if not (isinstance(shape, list) and len(shape) <= MAX_RANK and all(_is_count(d) for d in shape)):
        raise TensorPayloadError(
            f"tensor {name!r}: shape must be at most {MAX_RANK} non-negative integers, got {str(shape)[:100]}"
        )
    return dtype, tuple(shape)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62


def specs_of(tensors: Tensors) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(k, tuple(int(d) for d in v.shape), str(v.dtype)) for k, v in tensors.items())
