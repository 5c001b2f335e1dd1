"""Batched warm reads: ``LatentDataset.__getitems__`` (``DataLoader`` calls it for a whole batch).

The per-sample warm path (:meth:`latentds.store.ShardedStore.read_planned`) costs one ranged
read and one Python round trip per sample. A batch instead:

1. resolves every index to its committed manifest row (once per process and generation, as
   the per-sample path does), and takes the plan rows with one fancy index;
2. groups the rows by shard, sorts them by offset and coalesces neighbouring byte ranges
   (each range includes the 512-byte tar header in front of the member, whose name is checked)
   whose gap is at most ``gap`` bytes into one read;
3. reads: local disk -> one ``os.preadv`` per coalesced range that scatters each sample's
   latent bytes straight into its slot of one preallocated batch tensor (no second copy) and
   everything else (tar headers, ``.npy`` headers, std, gaps) into scratch; object stores ->
   every coalesced range of the batch in ONE concurrent ``fs.cat_ranges`` call (s3fs issues
   the GETs on its event loop at once), so requests per batch <= ranges <= samples, and
   <= shards touched when ``gap`` spans a shard;
4. checks every sample's tar member name and CRC32C (as the per-sample path does), in batch
   order;
5. returns ``[(latent, target), ...]`` whose latents are views of one contiguous tensor per
   layout, so ``default_collate``'s stack is a plain memcpy.

Exactness contract: the batch equals ``[dataset[i] for i in indices]`` bit for bit. Whatever
the batched path does not reproduce exactly takes the per-sample path: a ``transform``
(its per-sample contract stays), ``sample_posterior`` (same random stream), a read-through
local cache, samples not committed yet (staging, misses: they are encoded or read per
sample), and rows without a CRC32C (legacy generations). Any failure the batched read sees
(a CRC or member-name mismatch, a short read, a missing shard, a storage error) re-runs the
batch per sample, so the caller gets exactly the typed error that ``dataset[i]`` raises for
the first bad sample in batch order, never a different one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .errors import LatentdsError
from .shards import TAR_HEADER, check_member
from .storage import call

if TYPE_CHECKING:
    from .dataset import LatentDataset
    from .manifest import Manifest

__all__ = ["LOCAL_GAP_BYTES", "REMOTE_GAP_BYTES", "getitems", "coalesce"]

#: Local disk: a syscall costs about as much as copying a few KiB from the page cache, so only
#: true neighbours merge (consecutive members are ~1 KiB apart: the ``.json`` member between).
LOCAL_GAP_BYTES = 8 << 10
#: Object stores: a request costs 10-30 ms on S3 while one connection moves ~50-100 MB/s, so
#: reading up to ~2 MiB of unwanted bytes is cheaper than another round trip.
REMOTE_GAP_BYTES = 2 << 20
_IOV_MAX = 1000  # os.preadv takes at most IOV_MAX (1024 on Linux) buffers per call


class _Mismatch(Exception):
    """The batched read saw something wrong; the per-sample path re-reads and raises it."""


def coalesce(starts: np.ndarray, ends: np.ndarray, gap: int) -> list[tuple[int, int, list[int]]]:
    """Merge byte ranges ``[starts[k], ends[k])`` (sorted by start) whose gap is ``<= gap``.
    Returns ``(start, end, members)`` per merged range, members as indices into the input."""
    out: list[tuple[int, int, list[int]]] = []
    for k in range(len(starts)):
        s, e = int(starts[k]), int(ends[k])
        if out and s - out[-1][1] <= gap:
            last = out[-1]
            out[-1] = (last[0], max(last[1], e), last[2] + [k])
        else:
            out.append((s, e, [k]))
    return out


def _per_sample(ds: "LatentDataset", indices: Sequence[int]) -> list[tuple[Any, Any]]:
    return [ds[i] for i in indices]


def _rows(ds: "LatentDataset", m: "Manifest", idx: np.ndarray) -> np.ndarray:
    """Manifest rows of ``idx`` (-1: not committed), resolved once per process and generation
    in the dataset's own memo, exactly as :meth:`LatentDataset.arrays` resolves them."""
    rows = ds._rows
    if rows is None or ds._rows_of is not m:
        rows = ds._rows = np.full(len(ds.samples), -2, np.int64)
        ds._rows_of = m
    r = rows[idx]
    for j in np.flatnonzero(r == -2).tolist():
        i = int(idx[j])
        rows[i] = r[j] = m.find(ds.key(i))
    return r


def getitems(ds: "LatentDataset", indices: Sequence[int], *, gap: int | None = None) -> list[tuple[Any, Any]]:
    """``[ds[i] for i in indices]``, read in coalesced ranges per shard (see the module docs).
    ``gap``: merge ranges this close (bytes); default ``ds.batch_gap_bytes`` if set, else
    :data:`LOCAL_GAP_BYTES` / :data:`REMOTE_GAP_BYTES`."""
    indices = [int(i) for i in indices]
    store = ds.store
    if (not indices or ds.transform is not None or ds.sample_posterior or store.readthrough is not None):
        return _per_sample(ds, indices)
    m = store.manifest()
    if m is None:
        return _per_sample(ds, indices)
    n = len(ds.samples)
    idx = np.asarray(indices, np.int64)
    idx = np.where(idx < 0, idx + n, idx)
    if ((idx < 0) | (idx >= n)).any():
        return _per_sample(ds, indices)  # the IndexError ds[i] raises
    rows = _rows(ds, m, idx)
    plan, layouts = m.read_plan()
    fast = rows >= 0
    prow = plan[np.where(fast, rows, 0)]
    fast &= prow[:, 5] >= 0  # legacy rows (no CRC32C) take the sha256-checked path
    out: list[Any] = [None] * len(indices)
    for j in np.flatnonzero(~fast).tolist():
        out[j] = ds[indices[j]]
    sel = np.flatnonzero(fast)
    if len(sel):
        try:
            latents = _read(ds, m, rows[sel], prow[sel], layouts, gap)
        except (_Mismatch, LatentdsError, OSError, ValueError):
            return _per_sample(ds, indices)  # exactly the error (or data) ds[i] gives
        targets = ds.targets
        tt = ds.target_transform
        for k, j in enumerate(sel.tolist()):
            t = targets[indices[j]]
            out[j] = (latents[k], tt(t) if tt is not None else t)
    return out


def _read(ds: "LatentDataset", m: "Manifest", rows: np.ndarray, plan: np.ndarray, layouts: list[Any],
          gap: int | None) -> list[torch.Tensor]:
    store = ds.store
    if store._local is None:
        store._local = store.location.is_local
    local = bool(store._local)
    if gap is None:
        gap = getattr(ds, "batch_gap_bytes", None)
        if gap is None:
            gap = LOCAL_GAP_BYTES if local else REMOTE_GAP_BYTES
    shard, off, length, mean_data, std_data, crc, layout = (plan[:, c] for c in range(7))
    if (off < TAR_HEADER).any() or (length < 0).any() or (length > (1 << 31)).any():
        raise _Mismatch()  # a corrupt row: the per-sample path names it
    # one contiguous batch tensor per layout (dtype, shape); each sample gets a slot in it
    slots = np.empty(len(rows), np.int64)
    bufs: dict[int, np.ndarray] = {}
    tensors: dict[int, torch.Tensor] = {}
    for lay in np.unique(layout).tolist():
        where = np.flatnonzero(layout == lay)
        slots[where] = np.arange(len(where))
        dtype, shape, _ = layouts[lay]
        t = torch.from_numpy(np.empty((len(where), *shape), dtype))
        tensors[lay] = t
        bufs[lay] = t.numpy().reshape(len(where), -1).view(np.uint8)
    nbytes = {lay: layouts[lay][0].itemsize * layouts[lay][2] for lay in bufs}
    start = off - TAR_HEADER
    end = off + length
    paths = m.shards
    owner, plan_paths = store._plan_paths
    if owner is not m:
        plan_paths = [store.shard_path(name) for name in paths]
        store._plan_paths = (m, plan_paths)
    # headers[k]: the 512 bytes before sample k's member; members[k]: its bytes (data aside)
    crcs = np.zeros(len(rows), np.int64)
    headers: list[bytes] = [b""] * len(rows)
    groups: list[tuple[int, int, int, list[int]]] = []  # (shard, start, end, samples)
    for s in np.unique(shard).tolist():
        ks = np.flatnonzero(shard == s)
        ks = ks[np.argsort(start[ks], kind="stable")]
        for a, b, members in coalesce(start[ks], end[ks], gap):
            groups.append((s, a, b, ks[members].tolist()))
    if local:
        _read_local(store, groups, plan_paths, start, off, length, mean_data, layout, slots, bufs, nbytes,
                    headers, crcs)
    else:
        _read_remote(store, groups, plan_paths, start, off, length, mean_data, layout, slots, bufs, nbytes,
                     headers, crcs)
    # checks in batch order: the first bad sample is the one the per-sample loop would hit
    for k in range(len(rows)):
        key = m.key_bytes(int(rows[k]))
        try:
            check_member(headers[k], key, ".npy", "batch")
        except LatentdsError:
            raise _Mismatch() from None
        if crcs[k] != crc[k]:
            raise _Mismatch()
    out: list[torch.Tensor] = []
    for k in range(len(rows)):
        out.append(tensors[int(layout[k])][int(slots[k])])
    if ds.normalize:
        mean, std = ds._normalizer()
        # the same elementwise ops as the per-sample path, on the whole batch at once
        for lay, t in tensors.items():
            shape = (1, -1) + (1,) * (t.ndim - 2)
            tensors[lay] = (t - mean.view(shape)) / std.view(shape)
        out = [tensors[int(layout[k])][int(slots[k])] for k in range(len(rows))]
    return out


def _crc_of(parts: list[np.ndarray]) -> int:
    import google_crc32c

    c = 0
    for p in parts:
        if len(p):
            c = google_crc32c.extend(c, p)  # numpy views: no copy (bytes/memoryview slices would)
    return int(c)


def _read_local(store: Any, groups: list[tuple[int, int, int, list[int]]], paths: list[str], start: np.ndarray,
                off: np.ndarray, length: np.ndarray, mean_data: np.ndarray, layout: np.ndarray,
                slots: np.ndarray, bufs: dict[int, np.ndarray], nbytes: dict[int, int], headers: list[bytes],
                crcs: np.ndarray) -> None:
    """One ``preadv`` per coalesced range: latent bytes land in the batch tensor directly, the
    rest (tar and ``.npy`` headers, std, gaps) in one scratch buffer per range."""
    for s, a, b, members in groups:
        path = paths[s]
        store._pread(path, 0, 0)  # opens (and keeps) the descriptor, as the per-sample path does
        fd = store._fds[path]
        scratch = np.empty(b - a, np.uint8)
        segs: list[tuple[int, np.ndarray]] = []  # (file offset, destination), contiguous in the file
        pos = a
        for k in members:
            o, lay = int(off[k]), int(layout[k])
            if o - TAR_HEADER < pos:  # overlapping rows: not what compaction writes
                raise _Mismatch()
            d0 = o + int(mean_data[k])
            segs.append((pos, scratch[pos - a: d0 - a]))
            segs.append((d0, bufs[lay][int(slots[k])]))
            pos = d0 + nbytes[lay]
        segs.append((pos, scratch[pos - a:]))
        segs = [sg for sg in segs if len(sg[1])]
        for c in range(0, len(segs), _IOV_MAX):
            chunk = segs[c: c + _IOV_MAX]
            want = sum(len(v) for _, v in chunk)
            if os.preadv(fd, [memoryview(v) for _, v in chunk], chunk[0][0]) != want:
                raise _Mismatch()  # truncated shard: the per-sample path raises its ShardError
        store.reads += 1
        for k in members:
            o, n, lay = int(off[k]), int(length[k]), int(layout[k])
            d0 = o + int(mean_data[k])
            d1 = d0 + nbytes[lay]
            headers[k] = scratch[o - TAR_HEADER - a: o - a].tobytes()
            crcs[k] = _crc_of([scratch[o - a: d0 - a], bufs[lay][int(slots[k])], scratch[d1 - a: o + n - a]])


def _read_remote(store: Any, groups: list[tuple[int, int, int, list[int]]], paths: list[str], start: np.ndarray,
                 off: np.ndarray, length: np.ndarray, mean_data: np.ndarray, layout: np.ndarray,
                 slots: np.ndarray, bufs: dict[int, np.ndarray], nbytes: dict[int, int], headers: list[bytes],
                 crcs: np.ndarray) -> None:
    """Every coalesced range of the batch in one concurrent ``cat_ranges``."""
    fs = store.location.fs
    gp = [paths[s] for s, *_ in groups]
    ga = [a for _, a, _, _ in groups]
    gb = [b for _, _, b, _ in groups]
    what = gp[0] if len(set(gp)) == 1 else f"{store.location.url}/shards ({len(set(gp))} shards)"
    try:
        datas = call(lambda: fs.cat_ranges(gp, ga, gb, on_error="raise"), what,
                     storage_options=store.location.storage_options)
    except FileNotFoundError:
        raise _Mismatch() from None
    store.reads += len(groups)
    for (s, a, b, members), data in zip(groups, datas):
        if len(data) != b - a:
            raise _Mismatch()
        raw = np.frombuffer(data, np.uint8)
        for k in members:
            o, n, md = int(off[k]), int(length[k]), int(mean_data[k])
            lay = int(layout[k])
            member = raw[o - a: o - a + n]
            headers[k] = data[o - TAR_HEADER - a: o - a]
            crcs[k] = _crc_of([member])
            bufs[lay][int(slots[k])] = member[md: md + nbytes[lay]]
