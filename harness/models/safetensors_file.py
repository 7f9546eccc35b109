"""An adapter's safetensors file read as the pre-flight needs it: the header alone (validated by safetensors'
own reader, no tensor data), then one bounded pass over the data (NaN/Inf, the adapter id's hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import AdapterFileError

#: safetensors' dtype names -> torch's (the names the adapter id has always hashed)
_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
           "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "bfloat16", "F32": "float32",
           "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
#: floating dtypes stored as (unsigned view, exponent mask): all exponent bits set is NaN or Inf
_NONFINITE_MASKS = {"F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80), "F32": ("<u4", 0x7F800000),
                    "F64": ("<u8", 0x7FF0000000000000), "F8_E5M2": ("u1", 0x7C), "F8_E4M3": ("u1", 0x7F)}


_CHUNK = 16 << 20  # bytes read at a time: a multiple of every element size, so a chunk never splits a value


@dataclass(frozen=True)
class Tensor:
    key: str
    dtype: str  # safetensors' name (F32, BF16, ...)
    shape: list[int]
    start: int  # absolute file offsets of the tensor's bytes
    end: int


def header(weights: Path) -> list[Tensor]:
    """Every tensor's name, dtype, shape and byte range, in name order, reading the header only.

    safetensors' own (Rust) reader validates the header first (its size, the JSON, that every tensor's
    offsets match its dtype and shape, are contiguous and cover the file exactly); then the validated
    header is read back for the offsets. No tensor data is read: a 2 GiB tensor costs nothing here.

    Raises:
        SafetensorError: not a readable safetensors file. OSError: it cannot be read.
    """
    import struct

    from safetensors import safe_open

    with safe_open(str(weights), framework="numpy"):
        pass
    with open(weights, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return sorted((Tensor(key, t["dtype"], list(t["shape"]), 8 + n + t["data_offsets"][0], 8 + n + t["data_offsets"][1])
                   for key, t in header.items()), key=lambda t: t.key)


def _chunks(f: Any, t: Tensor) -> Iterator[bytes]:
    """A tensor's bytes from an open file, ``_CHUNK`` at a time (memory stays bounded for any tensor size)."""
    f.seek(t.start)
    left = t.end - t.start
    while left > 0:
        block = f.read(min(_CHUNK, left))
        if not block:
            raise AdapterFileError(f"{f.name}: the file ended inside tensor {t.key}; fix: re-copy the artifact")
        left -= len(block)
        yield block


def _all_finite(dtype: str, data: bytes) -> bool:
    """No NaN or Inf in a floating tensor's bytes (integer tensors are always finite)."""
    import numpy as np

    if dtype not in _NONFINITE_MASKS:
        return True
    view, mask = _NONFINITE_MASKS[dtype]
    bits = np.frombuffer(data, dtype=view)
    return not bool(np.any((bits & np.array(mask, dtype=view)) == np.array(mask, dtype=view)))


def _hash_head(h: hashlib._Hash, t: Tensor) -> None:
    h.update(f"{t.key}|{_DTYPES.get(t.dtype, t.dtype.lower())}|{list(t.shape)}|".encode())


def read_header(weights: Path) -> list[Tensor]:
    from safetensors import SafetensorError

    try:
        tensors = header(weights)
    except SafetensorError as exc:
        raise AdapterFileError(
            f"{weights} is not a readable safetensors file ({exc}); fix: re-copy the artifact (it may be truncated)"
        ) from None
    except OSError as exc:
        raise AdapterFileError(f"cannot read {weights}: {exc}") from None
    if not tensors:
        raise AdapterFileError(f"{weights} holds no tensors; fix: re-save the adapter")
    return tensors


def hash_data(weights: Path, tensors: list[Tensor], prefix: str, check: bool = True) -> str:
    """One pass over the tensor bytes, a chunk at a time: the adapter id (config and tensors hashed), and
    with ``check`` every floating tensor checked for NaN/Inf on the way. ``prefix`` (the canonical config)
    is hashed first."""
    h = hashlib.sha256(prefix.encode())
    try:
        with open(weights, "rb") as f:
            for t in tensors:
                _hash_head(h, t)
                for block in _chunks(f, t):
                    if check and not _all_finite(t.dtype, block):
                        raise AdapterFileError(f"{weights}: tensor {t.key} holds NaN or Inf values; the training run diverged")
                    h.update(block)
    except OSError as exc:
        raise AdapterFileError(f"cannot read {weights}: {exc}") from None
    return h.hexdigest()
