"""The mapped half of a batched read (:mod:`latentds.batch_read`): a batch's samples copied out
of per-process read-only maps of immutable shard files (:mod:`latentds.mapped`).

Cost model (measured, ``benchmarks/batched_reads.py``): one ``memoryview`` slice assignment per
sample copies a batch as fast as an ``np.memmap`` fancy-index gather of the same rows (the same
``memcpy`` of the same bytes; the Python loop is ~0.3 µs a sample), while one numpy fancy index
per shard cannot write into the scattered batch positions without a second copy (54-60 % of
the gather). So the copy stays one slice per sample, and everything else is vectorised per batch.

Checks: every sample's tar member name and CRC32C, as ``dataset[i]`` checks them, unless
``once`` and this process has checked that very manifest row in that very map of its shard
before (:class:`Checked`): the row fixes the shard, offset, length, CRC and key, and a mapped
shard is immutable while its map lives (a replaced file has another inode, so another map and
another serial), so its bytes are those that passed unless the file is rewritten in place or
rots after that first read (which "once" accepts; the default checks every read). A map
dropped and mapped again gets a new serial: its rows are checked again on their next read.
"""

from __future__ import annotations

import weakref
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .errors import LatentdsError
from .mapped import MAPS
from .store.shards import TAR_HEADER, check_member

if TYPE_CHECKING:
    from .store.manifest import Manifest

__all__ = ["Checked", "Mismatch", "names_match", "read_mapped"]


class Mismatch(Exception):
    """The batched read saw something wrong; the per-sample path re-reads and raises it."""


class Checked:
    """Per manifest, built once (vectorised over its read plan): ``fast[row]``, may the batched
    path read the row (it has a CRC32C and its offsets are sane: anything else takes the
    per-sample path, which names what is wrong); ``ends[shard]``, the furthest byte any row of
    the shard needs (one ``fstat`` per shard touched then guards every row of it); and which
    rows this process has checked (name + CRC32C) in which map: ``serial[row]`` is the serial
    of the map (:meth:`latentds.mapped.ShardMaps.get`) its bytes were checked in, 0 for never.
    One int32 per row (40 MB at 10M rows), allocated on the first ``batch_verify = "once"``
    read; all freed with the manifest."""

    __slots__ = ("fast", "ends", "one_layout", "_serial", "__weakref__")

    def __init__(self, plan: np.ndarray, layouts: list[Any], n_shards: int) -> None:
        shard, off, length, mean_data, _, crc, layout = plan.T
        nb = np.array([dt.itemsize * count for dt, _, count in layouts] or [0], np.int64)[layout]
        # one more entry, False: row -1 (a sample not committed) indexes it, so one fancy index
        # and ``all()`` tell whether a whole batch is fast
        self.fast = np.zeros(len(plan) + 1, bool)
        self.fast[:-1] = (crc >= 0) & (off >= TAR_HEADER) & (length <= 1 << 31) & (length >= mean_data + nb)
        self.one_layout = len(layouts) <= 1
        ends = np.zeros(n_shards, np.int64)
        np.maximum.at(ends, shard, off + length)
        self.ends: list[int] = ends.tolist()
        self._serial: np.ndarray | None = None

    @property
    def serial(self) -> np.ndarray:
        if self._serial is None:
            self._serial = np.zeros(len(self.fast) - 1, np.int32)
        return self._serial

    @classmethod
    def of(cls, m: "Manifest") -> "Checked":
        got = _CHECKED.get(m)
        if got is None:
            plan, layouts = m.read_plan()
            got = _CHECKED[m] = cls(plan, layouts, len(m.shards))
        return got


_CHECKED: "weakref.WeakKeyDictionary[Manifest, Checked]" = weakref.WeakKeyDictionary()
_NPY = np.frombuffer(b".npy", np.uint8)


def names_match(m: "Manifest", rows: np.ndarray, heads: np.ndarray) -> bool:
    """Does every tar header name its row's ``<key>.npy`` member (what ``check_member`` checks
    per sample), compared as one byte matrix."""
    km = m.key_matrix(rows) if len(rows) else None
    if km is not None and km.shape[1] + 5 < TAR_HEADER and km.all():
        w = km.shape[1]
        return bool((heads[:, :w] == km).all() and (heads[:, w:w + 4] == _NPY).all() and not heads[:, w + 4].any())
    for k, r in enumerate(rows.tolist()):
        try:
            check_member(heads[k].tobytes(), m.key_bytes(r), ".npy", "batch")
        except LatentdsError:
            return False
    return True


def read_mapped(m: "Manifest", fds_of: Callable[[list[int]], Iterable[int]], rows: np.ndarray, shard: np.ndarray, off: np.ndarray,
                length: np.ndarray, mean_data: np.ndarray, layout: np.ndarray, dest: np.ndarray,
                bufs: list[memoryview | None], nbytes: np.ndarray, want: np.ndarray, once: bool, one: bool,
                on_bad: Callable[[int], None] | None = None) -> int:
    """Copy samples (manifest ``rows`` and their plan columns, one entry per sample) out of
    the maps of their shards (``fds_of(shards)``: descriptors of the local files) into
    ``bufs[layout][dest : dest + nbytes[layout]]`` (``one``: all of one layout), checking names and CRC32Cs first (see the
    module docs). Raises :class:`Mismatch` on any doubt (a truncated shard, a bad CRC, a wrong
    name, a row overrunning its member), calling ``on_bad(shard)`` for a bad CRC, before
    anything is marked checked. Returns the number of shards read."""
    import google_crc32c

    value = google_crc32c.value  # takes numpy views of the map without a copy (not memoryviews)
    nb = nbytes[layout]
    end = off + length
    # one map per shard touched, each fstat'ed once: the truncation guard, for every row of it
    st = Checked.of(m)
    sh = shard.tolist()
    touched = list(set(sh))
    hits = MAPS.many(fds_of(touched), itemgetter(*touched)(st.ends) if len(touched) > 1 else [st.ends[touched[0]]])
    if hits is None:
        raise Mismatch()  # a truncated or empty shard: the per-sample path raises its ShardError
    mvs = {s: h[0] for s, h in zip(touched, hits)}
    arrs = {s: h[1] for s, h in zip(touched, hits)}
    if once:
        checked = st.serial
        serials = {s: h[2] for s, h in zip(touched, hits)}
        cur = np.array(itemgetter(*sh)(serials) if len(sh) > 1 else [serials[sh[0]]], np.int32)
        todo = np.flatnonzero(checked[rows] != cur)
    else:
        checked, cur, todo = None, None, np.arange(len(rows))
    src = off + mean_data
    if len(todo):
        # first reads: header, CRC32C and copy per sample (the copy then reads a cache-hot member)
        heads = np.empty((len(todo), TAR_HEADER), np.uint8)
        hv = memoryview(heads.reshape(-1))
        got = []
        for h, s, o, e, a, la, d, n in zip(range(0, len(todo) * TAR_HEADER, TAR_HEADER), shard[todo].tolist(),
                                           off[todo].tolist(), end[todo].tolist(), src[todo].tolist(),
                                           layout[todo].tolist(), dest[todo].tolist(), nb[todo].tolist()):
            v = mvs[s]
            hv[h:h + TAR_HEADER] = v[o - TAR_HEADER:o]
            got.append(value(arrs[s][o:e]))
            bufs[la][d:d + n] = v[a:a + n]  # type: ignore[index]
        bad = np.flatnonzero(np.asarray(got, np.int64) != want[todo])
        if len(bad):
            if on_bad is not None:
                on_bad(int(shard[todo[bad[0]]]))
            raise Mismatch()
        if not names_match(m, rows[todo], heads):
            raise Mismatch()
        if checked is not None:
            checked[rows[todo]] = cur[todo]  # type: ignore[index]
        if len(todo) == len(rows):
            return len(mvs)
        rest = np.ones(len(rows), bool)
        rest[todo] = False
        ks: np.ndarray | slice = np.flatnonzero(rest)
    else:
        ks = slice(None)
    if one:  # one layout (the usual batch): nothing to look up per sample but its map
        buf, n = bufs[int(layout[0])], int(nb[0])
        for d, s, a in zip(dest[ks].tolist(), sh if isinstance(ks, slice) else shard[ks].tolist(), src[ks].tolist()):
            buf[d:d + n] = mvs[s][a:a + n]  # type: ignore[index]
    else:
        for d, s, a, la, n in zip(dest[ks].tolist(), shard[ks].tolist(), src[ks].tolist(), layout[ks].tolist(),
                                  nb[ks].tolist()):
            bufs[la][d:d + n] = mvs[s][a:a + n]  # type: ignore[index]
    return len(mvs)
