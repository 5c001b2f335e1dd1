"""Read-only memory maps of immutable shard files, per process, for batched reads.

Why a map: copying a batch's latents out of pages that are already mapped is a ``memcpy``
per sample (what an ``np.memmap`` fancy-index gather does), while ``pread`` costs a syscall
and a kernel copy per sample. Committed shards are never rewritten in place (a new generation
writes new shard names), so a map never goes stale.

The one hazard of a map is a file truncated under it: touching a page past the new end raises
``SIGBUS`` and kills the process instead of raising a typed error. :meth:`ShardMaps.get`
therefore ``fstat``\\ s the descriptor on every call (one syscall per shard touched by a batch,
not per sample) and refuses a range past the file's current end, so a truncated shard is seen
and the caller re-reads it on the ``pread`` path, which raises ``ShardError``. Only a
truncation racing the copy itself (between that ``fstat`` and the ``memcpy``, microseconds) can
still fault; that needs someone truncating an immutable shard in place while it is read.
"""

from __future__ import annotations

import itertools
import mmap
import os
from collections.abc import Iterable

import numpy as np

__all__ = ["ShardMaps", "MAPS"]


class ShardMaps:
    """At most ``limit`` maps per process, keyed by the file's identity (device, inode), so a
    file replaced under the same name is mapped afresh and a deleted one keeps its old bytes
    exactly as an open descriptor does."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = int(limit)
        self._pid = -1
        self._maps: dict[tuple[int, int], tuple[memoryview, np.ndarray, int]] = {}
        # never reset, not even in a forked child: a serial names one map for good; ``next`` on a
        # count is one C call, so two threads mapping at once cannot draw the same serial
        self._serials = itertools.count(1)

    def get(self, fd: int, end: int) -> tuple[memoryview, np.ndarray, int] | None:
        """A flat read-only ``memoryview`` and ``uint8`` array of the whole file behind ``fd``
        and the map's serial (a positive int that no other map of this process had, nor any its
        parent had when it forked: what a reader checked in this map stays checked while the
        serial is the same; :mod:`latentds.batch_mapped`), or ``None`` when bytes ``[0, end)``
        are not all in the file now (truncated, or an empty file, which cannot be mapped)."""
        if self._pid != os.getpid():  # a fork's copies work, but the parent's LRU is not ours
            self._maps, self._pid = {}, os.getpid()
        st = os.fstat(fd)
        if end > st.st_size:
            return None
        ident = (st.st_dev, st.st_ino)
        hit = self._maps.get(ident)
        if hit is None or len(hit[0]) < end:
            if st.st_size == 0:
                return None
            # no MADV_RANDOM: a cold read of a 50 KB sample would then fault page by page
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            hit = (memoryview(mm), np.frombuffer(mm, np.uint8), next(self._serials))
            if len(self._maps) >= self.limit:
                # dropping our references unmaps once no returned view is alive (batches are
                # copies, so none is)
                self._maps.pop(next(iter(self._maps)))
            self._maps[ident] = hit
        return hit

    def many(self, fds: Iterable[int], ends: list[int]) -> list[tuple[memoryview, np.ndarray, int]] | None:
        """:meth:`get` for several files at once (one per shard a batch touches); ``None`` when
        any of them is short. ``fds`` may be a generator that opens each file as it is asked for:
        each is mapped before the next is taken, so a descriptor closed by its owner's LRU after
        that is harmless (the map holds its own duplicate)."""
        if self._pid != os.getpid():
            self._maps, self._pid = {}, os.getpid()
        out = []
        maps, fstat = self._maps, os.fstat
        for fd, end in zip(fds, ends):
            st = fstat(fd)
            hit = maps.get((st.st_dev, st.st_ino))
            if hit is None or len(hit[0]) < end or end > st.st_size:
                hit = self.get(fd, end)  # maps it (or finds the file short)
                if hit is None:
                    return None
            out.append(hit)
        return out

    def clear(self) -> None:
        self._maps = {}


#: the process-wide maps the batched read path uses
MAPS = ShardMaps()
