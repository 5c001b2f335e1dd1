"""A streaming epoch's rows, small enough to ship to a spawned DataLoader worker.

A forked worker inherits the parent's loaded manifest generation and epoch plan. A spawned one
(macOS, Windows, Python 3.14's forkserver default, or any process that called
``litdata.optimize``) receives a pickle, and before this module it received only the pointer:
it then made an S3 client, read the pointer's generation (one GET of the whole manifest) and
decoded it before its first shard GET. :class:`EpochPlan` carries instead exactly what
streaming reads per row - byte layout, target, CRC32C and key (sha256 only for rows written
before the CRC column) - for the epoch's rows alone, plus the generation it was planned from,
so a spawned worker's first request is its first shard. It answers the few ``Manifest`` calls
streaming makes (``row_layout``, ``key_bytes``, ``crc32c_at``, ``locate``), so the reader and its
checks (tar member names, CRC32C) run the same code on either.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EpochPlan", "MAX_SHIPPED_ROWS"]

#: above this many rows in an epoch the pointer alone is shipped (each worker then loads the
#: generation, as before): a shipped row costs 88 bytes in every worker's pickle, so 1M rows
#: is ~90 MB per worker, about what loading a 1M-row generation costs a worker anyway
MAX_SHIPPED_ROWS = 1 << 20

#: the per-row integers, in ``row_layout`` order, then the CRC32C (-1: check with sha256)
_FIELDS = ("offset", "length", "mean_length", "std_offset", "target", "crc32c")


class EpochPlan:
    """The rows of one epoch, renumbered ``0..n-1`` in shard order (a duck of ``Manifest`` for
    streaming reads), and ``by_shard``: each shard's plan rows, in the order they are read."""

    #: pickled bytes per row (6 int64 + a 40-byte key), for callers sizing a pickle
    BYTES_PER_ROW = 88

    def __init__(self, generation: str, shards: list[str], counts: np.ndarray, ints: np.ndarray,
                 keys: np.ndarray, sha: dict[int, str]) -> None:
        self.generation = generation
        self._shards = list(shards)
        self._counts = np.asarray(counts, np.int64)  # rows per shard, in ``shards`` order
        self._ints = np.ascontiguousarray(ints, np.int64)  # (n, 6): _FIELDS
        self._keys = np.ascontiguousarray(keys, "S40")  # hex keys, as tar member names spell them
        self._sha = dict(sha)  # plan row -> sha256 hex, only for rows without a CRC32C
        self._rows = self._ints.tolist()  # one list lookup per read, as fast as the manifest's

    @classmethod
    def from_manifest(cls, m: Any, by_shard: dict[str, list[int]]) -> "EpochPlan":
        """The plan of ``by_shard`` (manifest rows per shard) taken from generation ``m``."""
        shards = list(by_shard)
        rows = np.fromiter((r for s in shards for r in by_shard[s]), np.int64)
        counts = np.array([len(by_shard[s]) for s in shards], np.int64)
        if tuple(getattr(m, "ROW_COLUMNS", ())) == _FIELDS:  # a Manifest: one vectorised gather
            ints = m.row_columns(rows).reshape(-1, 6)
        else:  # any other Manifest-like: the public per-row calls
            ints = np.array([(*m.row_layout(r), m.crc32c_at(r)) for r in rows.tolist()], np.int64).reshape(-1, 6)
        keys = np.ascontiguousarray(m.key_matrix(rows)).view("S40").reshape(-1) if len(rows) else np.empty(0, "S40")
        sha = {i: m.locate(int(rows[i]))[5] for i in np.flatnonzero(ints[:, 5] < 0).tolist()}
        return cls(m.generation, shards, counts, ints, keys, sha)

    def by_shard(self) -> dict[str, list[int]]:
        ends = np.cumsum(self._counts).tolist()
        starts = [0, *ends[:-1]]
        return {s: list(range(a, b)) for s, a, b in zip(self._shards, starts, ends)}

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def shards(self) -> list[str]:
        return list(self._shards)

    def row_layout(self, row: int) -> tuple[int, int, int, int, int]:
        o, n, ml, so, t, _ = self._rows[row]
        return o, n, ml, so, t

    def key_bytes(self, row: int) -> bytes:
        return bytes(self._keys[row])

    def row_columns(self, rows: np.ndarray) -> np.ndarray:
        """As ``Manifest.row_columns``: ``(len(rows), 6)`` int64 of ``_FIELDS`` (a whole shard's)."""
        return self._ints[np.asarray(rows, np.int64)]

    def key_matrix(self, rows: np.ndarray) -> np.ndarray:
        """As ``Manifest.key_matrix``: the hex keys of ``rows`` as an ``(n, 40)`` uint8 matrix."""
        return self._keys[np.asarray(rows, np.int64)].view(np.uint8).reshape(-1, 40)

    def crc32c_at(self, row: int) -> int:
        return self._rows[row][5]

    def locate(self, row: int) -> tuple[str, int, int, int, int, str, int]:
        """As ``Manifest.locate``; the sha256 is carried only for rows without a CRC32C."""
        o, n, ml, so, t, _ = self._rows[row]
        shard = self._shards[int(np.searchsorted(np.cumsum(self._counts), row, side="right"))]
        return shard, o, n, ml, so, self._sha.get(row, ""), t

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_rows"]  # rebuilt from the array: a list of lists pickles ~10x bigger
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._rows = self._ints.tolist()
