"""msgpack framing with numpy arrays as ``{dtype, shape, data}`` maps; never pickle.

Decoding is bounded (frame size, string/bin/array/map lengths), refuses msgpack extension types
and non-string map keys, and turns every failure into :class:`ProtocolError` so that a
receiver can log and drop or answer, never crash.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a model or a 100k-atom structure fits; more is refused

# dtypes that may cross the wire, little-endian only
ARRAY_DTYPES = {"<f8", "<f4", "<i8", "<i4", "|b1", "|u1"}


class ProtocolError(ValueError):
    """A message that does not decode or does not match the schema."""


def _default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.str not in ARRAY_DTYPES:
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.str not in ARRAY_DTYPES:
            raise TypeError(f"array dtype {obj.dtype} cannot be sent")
        return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def pack(message: dict) -> bytes:
    data = msgpack.packb(message, default=_default, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def _no_ext(code: int, data: bytes) -> object:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def unpack(frame: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
    if len(frame) > max_bytes:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the limit of {max_bytes}")
    try:
        message = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            max_bin_len=max_bytes,
            max_str_len=1024 * 1024,
            max_array_len=1_000_000,
            max_map_len=10_000,
        )
    except ProtocolError:
        raise
    except Exception as err:  # msgpack raises several types for malformed input
        raise ProtocolError(f"undecodable frame: {type(err).__name__}: {err}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a map, got {type(message).__name__}")
    return message


def array_from_wire(obj: object, dtype: str, shape: tuple, name: str) -> np.ndarray:
    """Rebuild and check an array: allowed dtype, declared rank, byte count, finite floats.

    ``shape`` entries are ints (fixed) or None (any length). The result is a writable copy.
    """
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise ProtocolError(f"{name}: an array must be a map with dtype, shape, data")
    wire_dtype, wire_shape, data = obj["dtype"], obj["shape"], obj["data"]
    if wire_dtype not in ARRAY_DTYPES:
        raise ProtocolError(f"{name}: dtype {wire_dtype!r} is not allowed")
    if not isinstance(wire_shape, list) or not all(isinstance(n, int) and n >= 0 for n in wire_shape):
        raise ProtocolError(f"{name}: bad shape {wire_shape!r}")
    if len(wire_shape) != len(shape) or any(s is not None and s != n for s, n in zip(shape, wire_shape, strict=True)):
        raise ProtocolError(f"{name}: shape {wire_shape} does not match {list(shape)}")
    if not isinstance(data, bytes):
        raise ProtocolError(f"{name}: data must be bytes")
    count = math.prod(wire_shape)
    if count * np.dtype(wire_dtype).itemsize != len(data):
        raise ProtocolError(f"{name}: {len(data)} bytes do not hold {wire_shape} of {wire_dtype}")
    arr = np.frombuffer(data, dtype=wire_dtype).reshape(wire_shape)
    if np.dtype(wire_dtype).kind != np.dtype(dtype).kind:
        raise ProtocolError(f"{name}: expected {np.dtype(dtype).kind}-kind data, got {wire_dtype}")
    arr = arr.astype(dtype)  # copies: frombuffer arrays are read-only
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ProtocolError(f"{name}: contains NaN or infinity")
    return arr
