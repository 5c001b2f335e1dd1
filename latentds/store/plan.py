"""The warm path's bookkeeping: which manifest row holds each of a reader's samples.

A reader (``LatentDataset``, a batch reader, a sampler) hands the store its keys once:
``plan = store.plan(keys)``; then ``store.read(plan, i)`` is one ranged read. The plan resolves
a key to its row on first use (``keys`` may be lazy: a sequence whose ``__getitem__`` computes
the key, so an unread sample costs no ``stat``/``HEAD``) and forgets every row when the store
moves to another manifest generation, so rows and the generation they index always agree.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .manifest import Manifest

__all__ = ["ReadPlan", "UNRESOLVED"]

#: a row not looked up yet (-1: looked up, not committed)
UNRESOLVED = -2


class ReadPlan:
    """Rows of ``keys`` in one manifest generation (:attr:`manifest`), resolved lazily."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = keys
        self.manifest: Manifest | None = None
        self._rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        # rows belong to a generation loaded in this process; a worker resolves its own
        return {"keys": self.keys, "manifest": None, "_rows": None}

    @property
    def generation(self) -> str | None:
        return self.manifest.generation if self.manifest is not None else None

    def bind(self, m: Manifest | None) -> None:
        """Index generation ``m`` from now on (rows of another generation are dropped)."""
        if m is not self.manifest:
            self.manifest, self._rows = m, None

    def forget(self) -> None:
        """Drop every resolved row (keys are looked up again on their next read): for a reader
        whose keys may have changed (``LatentDataset.refresh`` re-checks source identities)."""
        self._rows = None

    def row(self, i: int) -> int:
        """Manifest row of sample ``i`` (-1: not committed in :attr:`manifest`)."""
        m = self.manifest
        if m is None:
            return -1
        rows = self._rows
        if rows is None:
            rows = self._rows = np.full(len(self.keys), UNRESOLVED, np.int64)
        r = int(rows[i])
        if r == UNRESOLVED:
            r = rows[i] = m.find(self.keys[i])
        return r

    def rows(self, idx: Any) -> np.ndarray:
        """Manifest rows of the samples ``idx`` (int array; -1: not committed), resolved now."""
        idx = np.asarray(idx, np.int64)
        m = self.manifest
        if m is None:
            return np.full(len(idx), -1, np.int64)
        if self._rows is None:
            self._rows = np.full(len(self.keys), UNRESOLVED, np.int64)
        r = self._rows[idx]
        todo = np.flatnonzero(r == UNRESOLVED)
        if len(todo):
            found = m.find_many([self.keys[int(i)] for i in idx[todo]])
            r[todo] = found
            self._rows[idx[todo]] = found
        return r

    def committed(self) -> np.ndarray:
        """Boolean mask: which samples have a row (resolves every key)."""
        return self.rows(np.arange(len(self.keys))) >= 0
