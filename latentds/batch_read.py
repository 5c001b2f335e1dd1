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

__all__ = ["LOCAL_GAP_BYTES", "REMOTE_GAP_BYTES", "ShardAwareSampler", "getitems", "coalesce", "collate"]

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
    n = len(starts)
    gs, ge, members = _groups(np.zeros(n, np.int64), np.asarray(starts, np.int64), np.asarray(ends, np.int64), gap)
    return [(int(a), int(b), m.tolist()) for a, b, m in zip(gs, ge, members)]


def _groups(shard: np.ndarray, start: np.ndarray, end: np.ndarray, gap: int
            ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Vectorised coalescing: ranges sorted by (shard, start) (compaction never overlaps them;
    an overlap is refused when read); a new read begins at a new shard
    or where the gap to the previous range exceeds ``gap``. Returns each read's start, end and
    member indices (sorted by offset)."""
    order = np.lexsort((start, shard))
    sh, st, en = shard[order], start[order], end[order]
    new = np.ones(len(order), bool)
    new[1:] = (sh[1:] != sh[:-1]) | (st[1:] - en[:-1] > gap)
    bounds = np.flatnonzero(new)
    stops = np.append(bounds[1:], len(order)).tolist()
    return st[bounds], np.maximum.reduceat(en, bounds), [order[a:b] for a, b in zip(bounds.tolist(), stops)]


def collate(batch: list[tuple[Any, Any]]) -> Any:
    """``default_collate`` for ``DataLoader(collate_fn=...)``, minus its copy when the latents
    are, in order, the rows of one tensor (what :func:`getitems` returns for one layout): that
    tensor is the batch. Anything else (ragged layouts, a transform's output, per-sample
    fallbacks) goes to ``default_collate`` unchanged, so the result is always the same."""
    from torch.utils.data import default_collate

    lat = [b[0] for b in batch]
    first = lat[0] if lat else None
    if isinstance(first, torch.Tensor) and first.ndim and all(len(b) == 2 for b in batch):
        base = first._base
        if (base is not None and base.shape[0] == len(lat) and base.shape[1:] == first.shape
                and base.is_contiguous() and first.data_ptr() == base.data_ptr()):
            step = base.stride(0) * base.element_size()
            p0 = base.data_ptr()
            if all(isinstance(x, torch.Tensor) and x._base is base and x.data_ptr() == p0 + j * step
                   for j, x in enumerate(lat)):
                return [base, default_collate([b[1] for b in batch])]
    return default_collate(batch)


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
    # heads[k]: the 512-byte tar header in front of sample k's member (its name is checked)
    heads = np.empty((len(rows), TAR_HEADER), np.uint8)
    crcs = np.zeros(len(rows), np.int64)
    gs, ge, members = _groups(shard, start, end, gap)
    gsh = shard[[m_[0] for m_ in members]].tolist()
    groups = list(zip(gsh, gs.tolist(), ge.tolist(), [m_.tolist() for m_ in members]))
    reader = _read_local if local else _read_remote
    reader(store, groups, plan_paths, off.tolist(), length.tolist(), mean_data.tolist(), layout.tolist(),
           slots.tolist(), bufs, nbytes, heads, crcs)
    # every check before anything is returned; on a failure the per-sample loop re-reads the
    # batch and raises for the first bad sample in batch order, as it would have alone
    keys = [m.key_bytes(r) + b".npy" for r in rows.tolist()]
    width = len(keys[0])
    if all(len(k) == width for k in keys) and width < TAR_HEADER:
        want = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), width)
        if not (heads[:, :width] == want).all() or heads[:, width].any():
            raise _Mismatch()
    else:
        for k, key in enumerate(keys):
            try:
                check_member(heads[k].tobytes(), key[:-4], ".npy", "batch")
            except LatentdsError:
                raise _Mismatch() from None
    if not np.array_equal(crcs, crc):
        raise _Mismatch()
    if ds.normalize:
        mean, std = ds._normalizer()
        # the same elementwise ops as the per-sample path, on the whole batch at once
        for lay, t in tensors.items():
            shape = (1, -1) + (1,) * (t.ndim - 2)
            tensors[lay] = (t - mean.view(shape)) / std.view(shape)
    if len(tensors) == 1:  # one layout: the slots are the batch order
        return list(next(iter(tensors.values())).unbind(0))
    views = {lay: t.unbind(0) for lay, t in tensors.items()}
    return [views[lay][sl] for lay, sl in zip(layout.tolist(), slots.tolist())]


def _read_local(store: Any, groups: list[tuple[int, int, int, list[int]]], paths: list[str], off: list[int],
                length: list[int], mean_data: list[int], layout: list[int], slots: list[int],
                bufs: dict[int, np.ndarray], nbytes: dict[int, int], heads: np.ndarray, crcs: np.ndarray) -> None:
    """One ``preadv`` per coalesced range: latent bytes land in the batch tensor directly, the
    rest (tar and ``.npy`` headers, std, gaps) in scratch."""
    import google_crc32c

    extend = google_crc32c.extend  # takes numpy views without a copy (bytes slices would copy)
    pre_n = max(mean_data)
    pre = np.empty((len(off), pre_n), np.uint8)
    tails = [length[k] - mean_data[k] - nbytes[layout[k]] for k in range(len(off))]
    tail = np.empty((len(off), max(tails)), np.uint8) if max(tails) > 0 else None
    if min(tails) < 0:
        raise _Mismatch()
    # flat memoryviews: slicing one is cheap (a 2-D memoryview has no row sub-views)
    hv, pv = memoryview(heads.reshape(-1)), memoryview(pre.reshape(-1))
    tv = memoryview(tail.reshape(-1)) if tail is not None else None
    tn = tail.shape[1] if tail is not None else 0
    dv = {lay: memoryview(b.reshape(-1)) for lay, b in bufs.items()}
    fds = store._fds if store._fd_pid == os.getpid() else {}
    preadv = os.preadv
    for s, a, b, members in groups:
        path = paths[s]
        fd = fds.get(path)
        if fd is None:
            store._pread(path, 0, 0)  # opens (and keeps) the descriptor, as the per-sample path does
            fds = store._fds
            fd = fds[path]
        store.reads += 1
        if len(members) == 1:  # the common case for a random batch: no Python-level copying
            k = members[0]
            md, lay, tl = mean_data[k], layout[k], tails[k]
            sl, nb = slots[k], nbytes[lay]
            iov = [hv[k * TAR_HEADER:(k + 1) * TAR_HEADER], pv[k * pre_n:k * pre_n + md], dv[lay][sl * nb:(sl + 1) * nb]]
            if tl:
                iov.append(tv[k * tn:k * tn + tl])  # type: ignore[index]
            if preadv(fd, iov, a) != b - a:
                raise _Mismatch()  # truncated shard: the per-sample path raises its ShardError
            c = extend(extend(0, pre[k, :md]), bufs[lay][slots[k]])
            crcs[k] = extend(c, tail[k, :tl]) if tl else c  # type: ignore[index]
            continue
        scratch = np.empty(b - a, np.uint8)
        segs: list[tuple[int, np.ndarray]] = []  # (file offset, destination), contiguous in the file
        pos = a
        for k in members:
            o, lay = off[k], layout[k]
            if o - TAR_HEADER < pos:  # overlapping rows: not what compaction writes
                raise _Mismatch()
            d0 = o + mean_data[k]
            segs.append((pos, scratch[pos - a: d0 - a]))
            segs.append((d0, bufs[lay][slots[k]]))
            pos = d0 + nbytes[lay]
        segs.append((pos, scratch[pos - a:]))
        segs = [sg for sg in segs if len(sg[1])]
        for c0 in range(0, len(segs), _IOV_MAX):
            chunk = segs[c0: c0 + _IOV_MAX]
            want = sum(len(v) for _, v in chunk)
            if preadv(fd, [memoryview(v) for _, v in chunk], chunk[0][0]) != want:
                raise _Mismatch()
        for k in members:
            o, n, lay = off[k], length[k], layout[k]
            d0 = o + mean_data[k]
            d1 = d0 + nbytes[lay]
            heads[k] = scratch[o - TAR_HEADER - a: o - a]
            c = extend(extend(0, scratch[o - a: d0 - a]), bufs[lay][slots[k]])
            crcs[k] = extend(c, scratch[d1 - a: o + n - a]) if o + n > d1 else c


def _read_remote(store: Any, groups: list[tuple[int, int, int, list[int]]], paths: list[str], off: list[int],
                 length: list[int], mean_data: list[int], layout: list[int], slots: list[int],
                 bufs: dict[int, np.ndarray], nbytes: dict[int, int], heads: np.ndarray, crcs: np.ndarray) -> None:
    """Every coalesced range of the batch in one concurrent ``cat_ranges``."""
    import google_crc32c

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
            o, n, md, lay = off[k], length[k], mean_data[k], layout[k]
            member = raw[o - a: o - a + n]
            heads[k] = raw[o - TAR_HEADER - a: o - a]
            crcs[k] = google_crc32c.value(member)
            bufs[lay][slots[k]] = member[md: md + nbytes[lay]]


class ShardAwareSampler(torch.utils.data.Sampler[int]):
    """A shuffling sampler that keeps each stretch of batches inside a few shards.

    Per epoch (``set_epoch``; ``seed + epoch`` seeds it, as ``DistributedSampler`` does): the
    committed shards are put in a random order, cut into windows of ``window`` shards, and the
    samples of each window are shuffled together and yielded before the next window's. Samples
    not committed yet form one more group, shuffled the same way. A batch then touches at most
    ``window`` shards (two when it straddles windows), so with ``__getitems__`` it costs at most
    that many coalesced ranges per shard instead of up to ``batch_size``.

    Shuffle quality: every sample is still seen exactly once per epoch and the window order is
    random, but two samples from different windows never meet in one batch, and a sample's
    position is tied to its shard's. Shards are packed in key order and keys are hashes of the
    source identity, so shard membership carries no class or path information; what is lost is
    only the mixing across windows. ``window = number of shards`` is a true global shuffle.
    """

    def __init__(self, dataset: "LatentDataset", *, window: int = 4, seed: int = 0) -> None:
        if int(window) < 1:
            raise ValueError(f"window must be >= 1 shard, not {window!r}")
        self.dataset, self.window, self.seed, self.epoch = dataset, int(window), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def groups(self) -> list[np.ndarray]:
        """Dataset indices per committed shard (manifest order), then the uncommitted ones."""
        ds = self.dataset
        m = ds.store.manifest()
        n = len(ds)
        if m is None:
            return [np.arange(n)]
        rows = _rows(ds, m, np.arange(n))
        plan, _ = m.read_plan()
        shard = np.where(rows >= 0, plan[np.maximum(rows, 0), 0], -1)
        order = np.argsort(shard, kind="stable")
        cuts = np.flatnonzero(np.diff(shard[order])) + 1
        parts = np.split(order, cuts)
        return sorted(parts, key=lambda p: (shard[p[0]] < 0, int(shard[p[0]])))

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(self.seed + self.epoch)
        parts = self.groups()
        committed = [p for p in parts if self._committed(p)]
        rest = [p for p in parts if not self._committed(p)]
        committed = [committed[i] for i in rng.permutation(len(committed))]
        for w in range(0, len(committed), self.window):
            pool = np.concatenate(committed[w: w + self.window])
            yield from pool[rng.permutation(len(pool))].tolist()
        for p in rest:
            yield from p[rng.permutation(len(p))].tolist()

    def _committed(self, part: np.ndarray) -> bool:
        ds = self.dataset
        return bool(ds._rows is not None and ds._rows[part[0]] >= 0)
