"""A streamed shard's samples, checked for the whole shard at once when it arrives.

``LatentIterableDataset`` yields every sample of a downloaded shard. Checking and decoding them
one at a time (per sample: the manifest row's layout, its key, the tar member name, the ``.npy``
header, the CRC32C, the target) cost ~60 us of Python per sample, the worker's ceiling once the
GETs overlap (RESULTS.md, issue 15 item 1, fifth pass: LitData's steady rate equalled ours with
no download at all). Here the shard's rows are gathered once (``row_columns``/``key_matrix``,
vectorised), the member names, bounds and ``.npy`` headers compared for all rows in numpy, and
the CRC32Cs computed in one pass; a row is then one ``np.frombuffer`` at a known offset.

The checks are exactly those of the per-row path and nothing is trusted that it would refuse:
a row that does not pass every fast check (a bad name, a truncated shard, a CRC mismatch, a
legacy row checked by sha256, a ``.npy`` header other than the shard's first) is decoded by that
per-row path at its own turn, which raises the same typed error at the same sample as before.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from google_crc32c import value as _crc32c_value  # takes numpy views without a copy

from .errors import LatentdsError
from .store.npy import parse_npy
from .store.shards import TAR_HEADER

__all__ = ["shard_columns", "ShardWalk"]

#: ``row_columns`` fields: offset, length, mean_length, std_offset, target, crc32c (-1: none)
_OFF, _LEN, _MLEN, _TGT, _CRC = 0, 1, 2, 4, 5


def shard_columns(m: Any, rows: list[int]) -> tuple[np.ndarray, list[bytes]]:
    """``(row_columns (n, 6) int64, keys as bytes)`` of ``rows`` of a ``Manifest`` or an
    ``EpochPlan``, each one vectorised gather."""
    idx = np.asarray(rows, np.int64)
    cols = np.asarray(m.row_columns(idx), np.int64).reshape(-1, 6)
    km = np.ascontiguousarray(m.key_matrix(idx), np.uint8)
    keys = km.view(f"S{km.shape[1]}").reshape(-1).tolist() if km.size else [b""] * len(idx)
    return cols, keys  # S-dtype items drop trailing NULs, as key_bytes does


class ShardWalk:
    """The checked means of one shard's ``rows`` (manifest order), computed on arrival.

    ``mean(i)`` is row ``rows[i]``'s mean: a read-only view into ``data`` where every fast check
    passed, else ``slow(row)`` (the per-row path, which raises the row's typed error)."""

    __slots__ = ("keys", "cols", "_views", "_rows", "_slow")

    def __init__(self, m: Any, rows: list[int], data: bytes, slow: Callable[[int], np.ndarray]) -> None:
        self._rows, self._slow = rows, slow
        self.cols, self.keys = cols, keys = shard_columns(m, rows)
        n = len(rows)
        self._views: list[np.ndarray | None] = [None] * n
        if not n:
            return
        buf = np.frombuffer(data, np.uint8)
        off, length, mlen, crc = cols[:, _OFF], cols[:, _LEN], cols[:, _MLEN], cols[:, _CRC]
        # bounds (the truncation check) and a CRC32C to check against (legacy rows: sha256)
        ok = (off >= TAR_HEADER) & (length >= 0) & (off + length <= len(buf)) & (crc >= 0)
        if not ok.any():  # e.g. a shard shorter than a name: the per-row path raises ShardError
            return  # (past here some row is in bounds, so len(buf) >= 512 and every name gather is too)
        # tar member names: "<key>.npy\0" right at the start of each row's header block
        names = [k + b".npy\0" for k in keys]
        width = max(map(len, names))
        want = np.frombuffer(b"".join(s.ljust(width, b"\0") for s in names), np.uint8).reshape(n, width)
        base = np.where(ok, off - TAR_HEADER, 0)
        ok &= (buf[base[:, None] + np.arange(width)] == want).all(axis=1)  # stricter than per-row: the rest goes there
        if not ok.any():
            return
        # the .npy header of the first good row, parsed as the per-row path parses it; rows whose
        # header bytes are the same and whose mean holds the whole array share its layout
        first = int(np.flatnonzero(ok)[0])
        o0, m0 = int(off[first]), int(mlen[first])
        try:
            arr0 = parse_npy(memoryview(data)[o0:o0 + m0], "shard walk")
        except LatentdsError:
            return  # every row takes the per-row path (which names the bad one)
        if not arr0.flags.c_contiguous or arr0.ndim == 0:
            return  # Fortran order, scalars: the per-row path
        nbytes = arr0.nbytes
        hdr = _header_len(data, o0)
        ok &= (mlen >= hdr + nbytes) & (mlen <= length)  # the array lies inside the CRC-checked bytes
        ok &= (buf[np.where(ok, off, 0)[:, None] + np.arange(hdr)] == buf[o0:o0 + hdr]).all(axis=1)
        dtype, shape, count = arr0.dtype, arr0.shape, arr0.size
        views, offs, lens, crcs = self._views, off.tolist(), length.tolist(), crc.tolist()
        for i in np.flatnonzero(ok).tolist():
            o = offs[i]
            if _crc32c_value(buf[o:o + lens[i]]) == crcs[i]:  # a mismatch: the per-row path raises it
                views[i] = np.frombuffer(data, dtype, count, o + hdr).reshape(shape)

    def mean(self, i: int) -> np.ndarray:
        v = self._views[i]
        return v if v is not None else self._slow(self._rows[i])


def _header_len(data: bytes, off: int) -> int:
    """Bytes of the ``.npy`` member at ``off`` before its array data (magic, version, header)."""
    major = data[off + 6]
    if major == 1:
        return 10 + int.from_bytes(data[off + 8:off + 10], "little")
    return 12 + int.from_bytes(data[off + 8:off + 12], "little")
