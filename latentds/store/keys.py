"""The manifest's key index: every sample key of a generation in one sorted fixed-width numpy
array, searched with ``np.searchsorted`` (no dict of millions of strings), and the two ways a
generation stores its key column.

A sample key is 40 lowercase hex digits (:data:`~latentds.store.layout.KEY_NAME`). Generations
written before issue 15 store it as that text (a Parquet string column, ``LEGACY`` here);
generations written since store the 20 bytes the digits spell (``fixed_size_binary(20)``,
:data:`STORED_KEY`): decoding it is a copy instead of a per-value walk over length-prefixed
strings (~10x less CPU, most of a 10M-row open), it needs no hex check (any 20 bytes spell a
valid key, so no crafted key can reach a path: docs/design.md invariant 10), and the index is
half the memory. Both are read; the index keeps whichever form the file has (no conversion at
open) and turns queries and answers into and out of it. Hex order is byte order, so a
generation sorted by its hex keys is sorted by its binary keys too.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from .layout import KEY_NAME

__all__ = ["KEY_BYTES", "KEY_HEX", "STORED_KEY", "KeyIndex", "all_hex", "binary_to_hex", "hex_keys",
           "hex_to_binary", "read_key_column", "stored_keys"]

KEY_HEX = 40
KEY_BYTES = 20
#: the key column of generations written since issue 15
STORED_KEY = pa.binary(KEY_BYTES)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_STEP = 1 << 18  # rows per chunk of the vectorised conversions (bounded temporaries)


def all_hex(keys: np.ndarray) -> bool:
    """Whether every byte of the fixed-width keys is a lowercase hex digit. Arithmetic on 1 MiB
    chunks (uint8 wrap-around turns each range test into one compare): ~4x faster than a
    lookup-table gather, which cost 2 CPU s on a 10M-row generation."""
    v = keys.view(np.uint8).reshape(-1)
    step = 1 << 20
    for s in range(0, len(v), step):
        c = v[s:s + step]
        if not ((c - np.uint8(48) < 10) | (c - np.uint8(97) < 6)).all():
            return False
    return True


def hex_to_binary(keys: np.ndarray) -> np.ndarray | None:
    """``S40`` hex keys as ``S20`` binary keys; ``None`` unless every key is 40 lowercase hex
    digits (such a key has no binary form: the caller keeps the text layout)."""
    if keys.dtype.kind != "S" or keys.dtype.itemsize != KEY_HEX or not all_hex(keys):
        return None
    v = keys.view(np.uint8).reshape(-1, KEY_HEX)
    out = np.empty((len(v), KEY_BYTES), np.uint8)
    for s in range(0, len(v), _STEP):
        c = v[s:s + _STEP]
        nib = c - np.where(c >= 97, np.uint8(87), np.uint8(48))
        out[s:s + _STEP] = (nib[:, 0::2] << 4) | nib[:, 1::2]
    return out.view(f"S{KEY_BYTES}").reshape(-1)


def binary_to_hex(keys: np.ndarray) -> np.ndarray:
    """Binary keys (``S20``, or any array of whole 20-byte keys) as an ``(n, 40)`` uint8 matrix of
    their hex digits."""
    b = np.ascontiguousarray(keys).view(np.uint8).reshape(-1, KEY_BYTES)
    out = np.empty((len(b), KEY_HEX), np.uint8)
    for s in range(0, len(b), _STEP):
        c = b[s:s + _STEP]
        out[s:s + _STEP, 0::2] = _HEX[c >> 4]
        out[s:s + _STEP, 1::2] = _HEX[c & 15]
    return out


def stored_keys(hex_fixed: np.ndarray) -> pa.Array | None:
    """The key column as a new generation stores it (``fixed_size_binary(20)``), from the keys
    as an ``S40`` array; ``None`` when some key is not 40 lowercase hex digits (the writer then
    keeps the text column, and readers refuse the row by name as before)."""
    b = hex_to_binary(hex_fixed)
    if b is None:
        return None
    return pa.FixedSizeBinaryArray.from_buffers(STORED_KEY, len(b), [None, pa.py_buffer(b)])


def _binary_chunk(arr: pa.Array) -> np.ndarray:
    """One ``fixed_size_binary(20)`` chunk's keys as ``(n, 20)`` uint8, straight from its buffer."""
    if arr.null_count:
        raise ValueError("the key column has null keys")
    data = np.frombuffer(arr.buffers()[1], np.uint8)
    return data[arr.offset * KEY_BYTES:(arr.offset + len(arr)) * KEY_BYTES].reshape(-1, KEY_BYTES)


def hex_keys(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A stored binary key column as the hex string column every table consumer sees."""
    chunks = []
    for arr in col.chunks:
        h = binary_to_hex(_binary_chunk(arr))
        offsets = np.arange(len(arr) + 1, dtype=np.int32) * KEY_HEX
        chunks.append(pa.StringArray.from_buffers(len(arr), pa.py_buffer(offsets), pa.py_buffer(h)))
    return pa.chunked_array(chunks, pa.string())


def read_key_column(num_rows: int, groups: int, read_group: Callable[[int], pa.ChunkedArray],
                    fixed_width: Callable[[pa.ChunkedArray], np.ndarray], release: Callable[[], None]) -> np.ndarray:
    """The key column as one fixed-width array (``S20`` for a binary column, ``S<width>`` for
    text), decoded a row group at a time into it (peak: the array plus one group's Arrow
    buffers, not the column twice: -0.4 GB at 10M rows). Text keys of unequal widths: the
    whole column, as ``fixed_width`` treats it."""
    out: np.ndarray | None = None
    pos = 0
    for g in range(groups):
        col = read_group(g)
        if pa.types.is_fixed_size_binary(col.type) and col.type.byte_width == KEY_BYTES:
            chunks = [_binary_chunk(a) for a in col.chunks] or [np.empty((0, KEY_BYTES), np.uint8)]
            # one chunk (the usual row group): a view of Arrow's buffer, copied once into ``out``
            part = (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)).view(f"S{KEY_BYTES}").reshape(-1)
        else:
            part = fixed_width(col)
        if out is None:
            out = np.empty(num_rows, part.dtype)
        elif part.dtype != out.dtype or pos + len(part) > num_rows:
            return _whole(groups, read_group, fixed_width)
        out[pos:pos + len(part)] = part
        pos += len(part)
        del part, col
        release()
    if out is None or pos != num_rows:
        return _whole(groups, read_group, fixed_width) if groups else np.empty(0, "S40")
    return out


def _whole(groups: int, read_group: Callable[[int], pa.ChunkedArray],
           fixed_width: Callable[[pa.ChunkedArray], np.ndarray]) -> np.ndarray:
    col = pa.chunked_array([c for g in range(groups) for c in read_group(g).chunks])
    return fixed_width(col)


class KeyIndex:
    """Sorted keys (``S40`` hex or ``S20`` binary, as the generation stores them) with the row
    each came from. Generations are committed sorted by key, so the order is normally the
    identity, kept as ``None`` (a 10M-row check costs ~0.07 s; an argsort ~2 s).

    Binary keys are compared as numpy ``S20`` values, which ignore trailing zero bytes: every
    key is exactly 20 bytes, so that loses nothing, but a key read back is taken from the raw
    bytes (never ``bytes(scalar)``, which would drop them)."""

    def __init__(self, keys: np.ndarray, *, binary: bool) -> None:
        self.width = keys.dtype.itemsize
        self.binary = binary
        if len(keys) > 1 and not bool(np.all(keys[:-1] <= keys[1:])):
            self.order: np.ndarray | None = np.argsort(keys, kind="stable")
            keys = keys[self.order]
        else:
            self.order = None
        self.keys = keys
        self._inv: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _query(self, key: str) -> bytes | None:
        """``key`` in the index's form, ``None`` if it cannot be a key here."""
        if not self.binary:
            return key.encode()
        if not KEY_NAME.fullmatch(key):
            return None
        return bytes.fromhex(key).rstrip(b"\0")  # as numpy compares S20 values (see above)

    def find(self, key: str) -> int:
        k = self._query(key)
        if k is None or not len(self.keys):
            return -1
        i = int(np.searchsorted(self.keys, k))
        if i < len(self.keys) and self.keys[i] == k:
            return int(self.order[i]) if self.order is not None else i
        return -1

    def find_many(self, keys: Sequence[str]) -> np.ndarray:
        if self.binary:
            hexk = np.asarray([x.encode() for x in keys]) if len(keys) else np.empty(0, "S40")
            q = hex_to_binary(hexk) if hexk.dtype.itemsize == KEY_HEX else None
            if q is None:  # some query is no key at all: look each up on its own (never a wrong row)
                return np.array([self.find(x) for x in keys], np.int64)
        else:
            q = np.asarray([x.encode() for x in keys])  # its own width: a longer key can never match
        if not len(self.keys) or not len(q):
            return np.full(len(q), -1, np.int64)
        i = np.searchsorted(self.keys, q)
        ok = i < len(self.keys)
        ok[ok] = self.keys[i[ok]] == q[ok]
        rows = np.where(ok, i, -1).astype(np.int64)
        if self.order is not None:
            rows[ok] = self.order[i[ok]]
        return rows

    def _slots(self, rows: Any) -> Any:
        """Positions in the sorted index of manifest ``rows``."""
        if self.order is None:
            return rows
        if self._inv is None:
            inv = np.empty_like(self.order)
            inv[self.order] = np.arange(len(self.order))
            self._inv = inv
        return self._inv[rows]

    def key_bytes(self, row: int) -> bytes:
        """The 40 hex digits of ``row``'s key."""
        i = int(self._slots(row))
        w = self.width
        raw = self.keys[i:i + 1].view(np.uint8).tobytes()[:w]  # raw bytes: no zeros dropped
        return raw.hex().encode() if self.binary else raw.rstrip(b"\0")

    def key_matrix(self, rows: np.ndarray) -> np.ndarray:
        """The hex keys of ``rows`` as an ``(n, 40)`` uint8 matrix."""
        sel = self.keys[self._slots(np.asarray(rows, np.int64))]
        if self.binary:
            return binary_to_hex(sel)
        return sel.view(np.uint8).reshape(len(sel), -1)
