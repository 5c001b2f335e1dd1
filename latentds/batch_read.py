"""Batched warm reads: ``LatentDataset.__getitems__`` (``DataLoader`` calls it for a whole batch).

The per-sample warm path (:meth:`latentds.store.ShardedStore.read_planned`) costs one ranged
read and one Python round trip per sample. A batch instead:

1. resolves every index to its committed manifest row (once per process and generation, as
   the per-sample path does), and takes the plan rows with one fancy index;
2. groups the rows by shard, sorts them by offset and coalesces neighbouring byte ranges
   (each range includes the 512-byte tar header in front of the member, whose name is checked)
   whose gap is at most ``gap`` bytes into one read;
3. reads: local disk -> through per-process read-only maps of the immutable shards
   (:mod:`latentds.mapped`; one ``fstat`` per shard touched guards against a truncated file),
   one ``memcpy`` per sample straight into its slot of one preallocated batch tensor
   (``MMAP = False``: one ``os.preadv`` per coalesced range instead); object stores -> every
   coalesced range of the batch in ONE concurrent ``fs.cat_ranges`` call (s3fs issues the GETs
   on its event loop at once), so requests per batch <= ranges <= samples, and <= shards
   touched when ``gap`` spans a shard; with a local read-through cache
   (``LatentDataset(local_cache=...)``) each shard touched is instead fetched whole once into
   ``<local_cache>/shards`` (:mod:`latentds.shard_cache`) and read there through a map;
4. checks every sample's tar member name and CRC32C (as the per-sample path does), in batch
   order;
5. returns ``[(latent, target), ...]`` whose latents are views of one contiguous tensor per
   layout, so ``default_collate``'s stack is a plain memcpy.

Exactness contract: the batch equals ``[dataset[i] for i in indices]`` bit for bit. Whatever
the batched path does not reproduce exactly takes the per-sample path: a ``transform``
(its per-sample contract stays), ``sample_posterior`` (same random stream), a read-through
local cache over a local store, samples not committed yet (staging, misses: they are encoded or read per
sample), and rows without a CRC32C (legacy generations). Any failure the batched read sees
(a CRC or member-name mismatch, a short read, a missing shard, a storage error) re-runs the
batch per sample, so the caller gets exactly the typed error that ``dataset[i]`` raises for
the first bad sample in batch order, never a different one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from .errors import LatentdsError
from .mapped import MAPS
from .shard_cache import ShardCache, shard_cache_of
from .store.shards import TAR_HEADER, check_member
from .store.fsio import call

if TYPE_CHECKING:
    from .dataset import LatentDataset
    from .store.manifest import Manifest

__all__ = ["LOCAL_GAP_BYTES", "MMAP", "REMOTE_GAP_BYTES", "VERIFY", "getitems", "coalesce", "collate",
           "shard_cache_of"]

#: Local disk: a syscall costs about as much as copying a few KiB from the page cache, so only
#: true neighbours merge (consecutive members are ~1 KiB apart: the ``.json`` member between).
LOCAL_GAP_BYTES = 8 << 10
#: Object stores: a request costs 10-30 ms on S3 while one connection moves ~50-100 MB/s, so
#: reading up to ~2 MiB of unwanted bytes is cheaper than another round trip.
REMOTE_GAP_BYTES = 2 << 20
#: Local disk: read through per-process maps of the immutable shards (``latentds.mapped``);
#: False (or ``dataset.batch_mmap = False``) keeps one ``os.preadv`` per coalesced range.
MMAP = True
#: ``"always"``: every read of a sample checks its CRC32C (as ``dataset[i]`` does). ``"once"``
#: (or ``dataset.batch_verify = "once"``): a member read through a map is checked the first time
#: this process reads it from that file (device, inode), then trusted while the map lives;
#: shards are immutable, so only an in-place rewrite or bit rot after that first read escapes.
VERIFY = "always"
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


def _rows(ds: Any, m: "Manifest", idx: np.ndarray) -> np.ndarray:
    """Manifest rows of ``idx`` (-1: not committed), resolved once per process and generation
    in the dataset's own read plan (``ds.plan``, what ``ds[i]`` reads through), keys looked up
    all at once; a dataset without a plan keeps its rows in ``ds._rows`` / ``ds._rows_of``."""
    plan = getattr(ds, "plan", None)
    if plan is not None:
        if plan.manifest is not m:
            plan.bind(m)
        return plan.rows(idx)
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
    if not indices or ds.transform is not None or ds.sample_posterior:
        return _per_sample(ds, indices)
    m = store.manifest()
    if m is None or (store.readthrough is not None and store.location.is_local):
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
    rest = np.arange(len(rows))
    once = getattr(ds, "batch_verify", VERIFY) == "once"
    if local and getattr(ds, "batch_mmap", MMAP):
        store.reads += _read_mapped(lambda s: _store_fd(store, plan_paths[s]), rest, shard, off, length, mean_data,
                                    layout, slots, bufs, nbytes, heads, crcs, crc, once)
        rest = rest[:0]
    elif not local:
        sc = shard_cache_of(ds)
        if sc is not None:
            copied = _copies(store, sc, m, plan_paths, shard)
            mine = np.isin(shard, np.fromiter(copied, np.int64, len(copied)))
            if mine.any():
                _read_mapped(lambda s: _copy_fd(sc, paths[s]), np.flatnonzero(mine), shard, off, length, mean_data,
                             layout, slots, bufs, nbytes, heads, crcs, crc, once, lambda s: sc.drop(paths[s]))
            rest = np.flatnonzero(~mine)
    if len(rest):
        gs, ge, members = _groups(shard[rest], start[rest], end[rest], gap)
        members = [rest[m_] for m_ in members]
        gsh = shard[[m_[0] for m_ in members]].tolist()
        groups = list(zip(gsh, gs.tolist(), ge.tolist(), [m_.tolist() for m_ in members]))
        reader = _read_local if local else _read_remote
        reader(store, groups, plan_paths, off.tolist(), length.tolist(), mean_data.tolist(), layout.tolist(),
               slots.tolist(), bufs, nbytes, heads, crcs)
    # every check before anything is returned; on a failure the per-sample loop re-reads the
    # batch and raises for the first bad sample in batch order, as it would have alone
    if not _names_match(m, rows, heads):
        raise _Mismatch()
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


def _names_match(m: "Manifest", rows: np.ndarray, heads: np.ndarray) -> bool:
    """Does every tar header name its row's ``<key>.npy`` member (what ``check_member`` checks
    per sample), compared as one byte matrix."""
    km = m.key_matrix(rows) if len(rows) else None
    if km is not None and km.shape[1] + 5 < TAR_HEADER and km.all():
        w = km.shape[1]
        return bool((heads[:, :w] == km).all() and (heads[:, w:w + 4] == _NPY).all() and not heads[:, w + 4].any())
    keys = [m.key_bytes(r) for r in rows.tolist()]
    for k, key in enumerate(keys):
        try:
            check_member(heads[k].tobytes(), key, ".npy", "batch")
        except LatentdsError:
            return False
    return True


_NPY = np.frombuffer(b".npy", np.uint8)


def _store_fd(store: Any, path: str) -> int:
    """The store's own per-process descriptor of a local shard (opened as the per-sample path does)."""
    fd = store._fds.get(path) if store._fd_pid == os.getpid() else None
    if fd is None:
        store._pread(path, 0, 0)  # opens (and keeps) the descriptor
        fd = store._fds[path]
    return fd


def _copy_fd(sc: ShardCache, name: str) -> int:
    fd = sc.fd(name)
    if fd is None:  # evicted since: the per-sample path reads it by range
        raise _Mismatch()
    return fd


def _copies(store: Any, sc: ShardCache, m: "Manifest", plan_paths: list[str], shard: np.ndarray) -> set[int]:
    """The shards of this batch that have a local copy, fetching the missing ones whole (one
    concurrent request set; a shard another worker is fetching is read by range meanwhile)."""
    names = m.shards
    have, want = set(), []
    for s in np.unique(shard).tolist():
        (have.add(s) if sc.fd(names[s]) is not None else want.append(s))
    if want:
        fs = store.location.fs
        rp = [plan_paths[s] for s in want]
        what = rp[0] if len(rp) == 1 else f"{store.location.url}/shards ({len(rp)} shards)"

        def cat(paths: list[str]) -> list[bytes]:
            store.reads += len(paths)
            return call(lambda: fs.cat_ranges(paths, [None] * len(paths), [None] * len(paths), on_error="raise"),
                        what, storage_options=store.location.storage_options)

        try:
            got = set(sc.fetch([names[s] for s in want], rp, cat))
        except FileNotFoundError:
            raise _Mismatch() from None
        have.update(s for s in want if names[s] in got and sc.fd(names[s]) is not None)
    return have


def _read_mapped(fd_of: Callable[[int], int], ks: np.ndarray, shard: np.ndarray, off: np.ndarray,
                 length: np.ndarray, mean_data: np.ndarray, layout: np.ndarray, slots: np.ndarray,
                 bufs: dict[int, np.ndarray], nbytes: dict[int, int], heads: np.ndarray, crcs: np.ndarray,
                 want: np.ndarray, once: bool, on_bad: Callable[[int], None] | None = None) -> int:
    """Samples ``ks`` of the batch from local files (the store's shards on local disk, or whole
    local copies of remote ones) through per-process read-only maps (:mod:`latentds.mapped`):
    per shard one ``fstat`` (the truncation guard); per sample a copy of its tar header, one CRC32C over the mapped member (``once``: only the first time this process
    reads that member from that file) and one ``memcpy`` of its latent bytes into the batch
    tensor: no syscall, no temporary, no numpy call per sample. A CRC that differs from
    ``want`` calls ``on_bad(shard)`` and raises :class:`_Mismatch`. Returns the shards read."""
    import google_crc32c

    value = google_crc32c.value  # takes numpy views of the map without a copy (not memoryviews)
    nb_of = np.zeros(int(layout.max()) + 1, np.int64)
    for lay, n_ in nbytes.items():
        nb_of[lay] = n_
    sh, o_, ln, md, lay_ = shard[ks], off[ks], length[ks], mean_data[ks], layout[ks]
    nb = nb_of[lay_]
    if (ln < md + nb).any():
        raise _Mismatch()  # a row whose latent overruns its member: the per-sample path names it
    end = o_ + ln
    views: dict[int, memoryview] = {}
    arrs: dict[int, np.ndarray] = {}
    oks: dict[int, set[int]] = {}
    for s in np.unique(sh).tolist():
        hit = MAPS.get(fd_of(s), int(end[sh == s].max()))
        if hit is None:
            raise _Mismatch()  # truncated or empty shard: the per-sample path raises its ShardError
        views[s], arrs[s], oks[s] = hit
    dv = {la: memoryview(b.reshape(-1)) for la, b in bufs.items()}
    hv = memoryview(heads.reshape(-1))  # (a numpy fancy-index gather of the headers costs 5x more)
    got: list[int] = []
    for k, s, o, e, a, n, la, t, w in zip((ks * TAR_HEADER).tolist(), sh.tolist(), o_.tolist(), end.tolist(),
                                          (o_ + md).tolist(), nb.tolist(), lay_.tolist(), (slots[ks] * nb).tolist(),
                                          want[ks].tolist()):
        v = views[s]
        hv[k:k + TAR_HEADER] = v[o - TAR_HEADER:o]
        if once and (o, w) in oks[s]:
            got.append(w)  # these very bytes of this immutable file passed this check before
        else:
            c = value(arrs[s][o:e])
            if c != w:
                if on_bad is not None:
                    on_bad(s)
                raise _Mismatch()
            if once:
                oks[s].add((o, w))
            got.append(c)
        dv[la][t:t + n] = v[a:a + n]
    crcs[ks] = got
    return len(views)


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

