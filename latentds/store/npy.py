""".npy bytes without pickle: written with headers made once per layout, read with headers
parsed once (both are on the per-sample paths of compaction and reads)."""

from __future__ import annotations

import ast
import io
import math

import numpy as np

from ..errors import ShardError

__all__ = ["dtype_name", "npy_bytes", "parse_npy"]


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def npy_bytes(a: np.ndarray) -> bytes:
    """``a`` as ``.npy`` bytes, exactly what ``np.lib.format.write_array`` writes; the header
    depends only on dtype and shape, so it is made by numpy once per layout and reused."""
    a = np.ascontiguousarray(a)
    k = (a.dtype.str, a.shape)
    head = _NPY_HEADERS.get(k)
    if head is None:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a, allow_pickle=False)
        out = buf.getvalue()
        head = out[: len(out) - a.nbytes]
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[k] = head
        return out
    return head + a.tobytes()


_DTYPE_NAMES: dict[np.dtype, str] = {}


def dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)``, made once per dtype (numpy builds the string anew each time, ~40 us; it
    is on the per-sample paths of compaction and entry checks)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = str(dtype)
        if len(_DTYPE_NAMES) < 256:
            _DTYPE_NAMES[dtype] = name
    return name


_HEADER_CACHE: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def parse_npy(buf: memoryview | bytes, name: str) -> np.ndarray:
    """Decode one ``.npy`` from bytes without pickle. Headers repeat (same shape, dtype), so
    they are parsed once and cached: this is on the hot path of every warm read."""
    mv = memoryview(buf)
    if len(mv) < 10 or bytes(mv[:6]) != b"\x93NUMPY":
        raise ShardError(f"{name}: not a .npy array (bad magic); the shard is corrupt")
    major = mv[6]
    if major == 1:
        hlen, start = int.from_bytes(mv[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(mv[8:12], "little"), 12
    else:
        raise ShardError(f"{name}: unsupported .npy version {major}")
    header = bytes(mv[start:start + hlen])
    parsed = _HEADER_CACHE.get(header)
    if parsed is None:
        try:
            d = ast.literal_eval(header.decode("latin1"))  # a dict literal; literal_eval runs no code
            dtype = np.dtype(d["descr"])
            shape = tuple(int(s) for s in d["shape"])
            fortran = bool(d["fortran_order"])
        except Exception as exc:
            raise ShardError(f"{name}: unreadable .npy header ({exc})") from exc
        if dtype.hasobject:
            raise ShardError(f"{name}: object arrays are refused (they would need pickle)")
        parsed = (dtype, shape, fortran)
        if len(_HEADER_CACHE) < 4096:
            _HEADER_CACHE[header] = parsed
    dtype, shape, fortran = parsed
    data = mv[start + hlen:]
    n = math.prod(shape) * dtype.itemsize
    if len(data) < n:
        raise ShardError(f"{name}: .npy data truncated ({len(data)} of {n} bytes)")
    arr = np.frombuffer(data[:n], dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")
