"""Batched warm reads: ``LatentDataset.__getitems__`` (``DataLoader`` calls it for a whole batch).

The per-sample warm path (:meth:`latentds.store.ShardedStore.read_planned`) costs one ranged
read and one Python round trip per sample. A batch instead:

1. resolves every index to its committed manifest row (once per process and generation, as
   the per-sample path does), and takes the plan rows with one fancy index;
2. groups the rows by shard, sorts them by offset and coalesces neighbouring byte ranges
   (each range includes the 512-byte tar header in front of the member, whose name is checked)
   whose gap is at most ``gap`` bytes into one read;
3. reads: local disk -> through per-process read-only maps of the immutable shards
   (:mod:`latentds.mapped`, :mod:`latentds.batch_mapped`; one ``fstat`` per shard touched
   guards against a truncated file), one ``memcpy`` per sample straight into its slot of one
   preallocated batch tensor (``MMAP = False``: one ``os.preadv`` per coalesced range
   instead); object stores -> every
   coalesced range of the batch in ONE concurrent ``fs.cat_ranges`` call (s3fs issues the GETs
   on its event loop at once), so requests per batch <= ranges <= samples, and <= shards
   touched when ``gap`` spans a shard; with a local read-through cache
   (``LatentDataset(local_cache=...)``) each shard touched is instead fetched whole once into
   ``<local_cache>/shards`` (:mod:`latentds.shard_cache`) and read there through a map;
4. checks every sample's tar member name and CRC32C (as the per-sample path does), in batch
   order (``batch_verify = "once"``: a mapped member only the first time this process reads
   it from that map);
5. returns ``[(latent, target), ...]``: for one layout a :class:`~latentds.batch_samples.Samples`
   list of per-sample views that remembers the batch tensor, so :func:`collate` returns that
   tensor itself; for several layouts views of one
   contiguous tensor per layout, so ``default_collate``'s stack is a plain memcpy.

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
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch

from .errors import LatentdsError
from .batch_mapped import Checked, Mismatch, names_match, read_mapped
from .batch_samples import Samples
from .shard_cache import ShardCache, shard_cache_of
from .store.shards import TAR_HEADER
from .store.fsio import call
from .batch_signed import fetch_ranges

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
#: ``"always"``: every read of a sample checks its member name and CRC32C (as ``dataset[i]``
#: does). ``"once"`` (or ``dataset.batch_verify = "once"``): a manifest row read through a map
#: is checked (name and CRC32C) the first time this process reads it from that map, then
#: trusted while the map lives (:class:`latentds.batch_mapped.Checked`); shards are immutable,
#: so only an in-place rewrite or bit rot after that first read escapes.
VERIFY = "always"
_IOV_MAX = 1000  # os.preadv takes at most IOV_MAX (1024 on Linux) buffers per call


_Mismatch = Mismatch  # the per-sample path re-reads the batch and raises what it sees


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

    if type(batch) is Samples and batch.pristine:
        ts = batch.targets
        if ts and set(map(type, ts)) == {int}:  # what default_collate makes of ints, 5x faster
            try:
                return [batch.latents, torch.from_numpy(np.array(ts, np.int64))]
            except OverflowError:
                pass  # default_collate raises its own error
        return [batch.latents, default_collate(tuple(ts))]  # a tuple, as default_collate transposes
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
                return [base, default_collate(tuple(b[1] for b in batch))]
    return default_collate(batch)


def _per_sample(ds: "LatentDataset", indices: Sequence[int]) -> list[tuple[Any, Any]]:
    return [ds[int(i)] for i in indices]


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
    :data:`LOCAL_GAP_BYTES` / :data:`REMOTE_GAP_BYTES`. A batch read whole as one tensor comes
    back as a :class:`~latentds.batch_samples.Samples` list (views of it that remember it)."""
    store = ds.store
    if not len(indices) or ds.transform is not None or ds.sample_posterior:
        return _per_sample(ds, indices)
    m = store.manifest()
    if m is None or (store.readthrough is not None and store.location.is_local):
        return _per_sample(ds, indices)
    n = len(ds.samples)
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu" or idx.ndim != 1:
        idx = np.asarray([int(i) for i in indices], np.int64)
    if (idx.astype(np.uint64) >= n).any():  # one test for both ends: a negative one wraps around
        if int(idx.min()) < -n or int(idx.max()) >= n:
            return _per_sample(ds, indices)  # the IndexError ds[i] raises
        idx = np.where(idx < 0, idx + n, idx)
    rows = _rows(ds, m, idx)
    plan, layouts = m.read_plan()
    if not len(plan):
        return _per_sample(ds, indices)
    # rows the batched path reads: committed, with a CRC32C and sane offsets (legacy rows take
    # the sha256-checked path, a corrupt row the per-sample path that names it)
    st = Checked.of(m)
    fast = st.fast[rows]  # row -1 indexes its last entry: False
    whole = bool(fast.all())
    sel = None if whole else np.flatnonzero(fast)
    latents: Any = None
    if whole or len(sel):  # type: ignore[arg-type]
        try:
            latents = _read(ds, m, rows if whole else rows[sel], plan[rows] if whole else plan[rows[sel]], layouts,
                            gap, st.one_layout)
        except (_Mismatch, LatentdsError, OSError, ValueError):
            return _per_sample(ds, indices)  # exactly the error (or data) ds[i] gives
    il = idx.tolist()
    ts = list(itemgetter(*il)(ds.targets)) if len(il) > 1 else [ds.targets[il[0]]]
    tt = ds.target_transform
    if tt is not None:
        ts = [tt(t) for t in ts]
    if whole and isinstance(latents, torch.Tensor):
        return Samples(latents, ts)  # the batch tensor itself; collate() takes it as it is
    out: list[Any] = [None] * len(ts)
    for j in np.flatnonzero(~fast).tolist():
        out[j] = ds[il[j]]
    if latents is not None:
        if isinstance(latents, torch.Tensor):
            latents = latents.unbind(0)
        for k, j in enumerate(range(len(ts)) if sel is None else sel.tolist()):
            out[j] = (latents[k], ts[j])
    return out


def _read(ds: "LatentDataset", m: "Manifest", rows: np.ndarray, plan: np.ndarray, layouts: list[Any],
          gap: int | None, one_layout: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """The latents of ``rows``: one batch tensor (one layout) or per-sample views (several)."""
    store = ds.store
    if store._local is None:
        store._local = store.location.is_local
    local = bool(store._local)
    sign = getattr(ds, "batch_sign_urls", True)
    if gap is None:
        gap = getattr(ds, "batch_gap_bytes", None)
        if gap is None:
            gap = LOCAL_GAP_BYTES if local else REMOTE_GAP_BYTES
    shard, off, length, mean_data, std_data, crc, layout = plan.T  # rows Checked.fast lets through
    # one contiguous batch tensor per layout (dtype, shape); each sample gets a slot in it
    n = len(rows)
    bufs: dict[int, np.ndarray] = {}
    tensors: dict[int, torch.Tensor] = {}
    lay0 = int(layout[0])
    one = one_layout or bool((layout == lay0).all())
    slots = np.arange(n) if one else np.empty(n, np.int64)
    for lay in [lay0] if one else np.unique(layout).tolist():
        where = slots if one else np.flatnonzero(layout == lay)
        if not one:
            slots[where] = np.arange(len(where))
        dtype, shape, _ = layouts[lay]
        a = np.empty((len(where), *shape), dtype)
        tensors[lay] = torch.from_numpy(a)
        bufs[lay] = a.reshape(len(where), -1).view(np.uint8)
    nbytes = {lay: layouts[lay][0].itemsize * layouts[lay][2] for lay in bufs}
    paths = m.shards
    owner, plan_paths = store._plan_paths
    if owner is not m:
        plan_paths = [store.shard_path(name) for name in paths]
        store._plan_paths = (m, plan_paths)
    rest = np.arange(n)
    once = getattr(ds, "batch_verify", VERIFY) == "once"
    mapped = None
    if local and getattr(ds, "batch_mmap", MMAP):
        mapped, rest = rest, rest[:0]
        fds_of, on_bad = (lambda ss: _store_fds(store, [plan_paths[s] for s in ss])), None
    elif not local:
        sc = shard_cache_of(ds)
        if sc is not None:
            copied = _copies(store, sc, m, plan_paths, shard, sign)
            mine = np.isin(shard, np.fromiter(copied, np.int64, len(copied)))
            if mine.any():
                mapped = np.flatnonzero(mine)
                # a generator, for the reason in _store_fds (the shard cache keeps 64 descriptors)
                fds_of, on_bad = (lambda ss: (_copy_fd(sc, paths[s]) for s in ss)), (lambda s: sc.drop(paths[s]))
            rest = np.flatnonzero(~mine)
    if mapped is not None:
        # names and CRCs are checked in there (only the first time, with ``once``)
        nb = np.zeros(len(layouts), np.int64)
        nb[list(nbytes)] = list(nbytes.values())
        flat: list[memoryview | None] = [None] * len(layouts)
        for lay, b in bufs.items():
            flat[lay] = memoryview(b.reshape(-1))
        k = mapped if len(mapped) < n else slice(None)
        dest = np.arange(0, n * int(nb[lay0]), int(nb[lay0])) if one else slots * nb[layout]
        got = read_mapped(m, fds_of, rows[k], shard[k], off[k], length[k], mean_data[k], layout[k], dest[k], flat,
                          nb, crc[k], once, one, on_bad)
        if local:
            store.reads += got
    if len(rest):
        start = off - TAR_HEADER
        end = off + length
        # heads[k]: the 512-byte tar header in front of sample k's member (its name is checked)
        heads = np.empty((n, TAR_HEADER), np.uint8)
        crcs = np.zeros(n, np.int64)
        gs, ge, members = _groups(shard[rest], start[rest], end[rest], gap)
        members = [rest[m_] for m_ in members]
        gsh = shard[[m_[0] for m_ in members]].tolist()
        groups = list(zip(gsh, gs.tolist(), ge.tolist(), [m_.tolist() for m_ in members]))
        args = (store, groups, plan_paths, off.tolist(), length.tolist(), mean_data.tolist(), layout.tolist(),
                slots.tolist(), bufs, nbytes, heads, crcs)
        _read_local(*args) if local else _read_remote(*args, signed_of=m if sign else None)
        # every check before anything is returned; on a failure the per-sample loop re-reads the
        # batch and raises for the first bad sample in batch order, as it would have alone
        if not names_match(m, rows[rest], heads[rest]):
            raise _Mismatch()
        if not np.array_equal(crcs[rest], crc[rest]):
            raise _Mismatch()
    if ds.normalize:
        mean, std = ds._normalizer()
        # the same elementwise ops as the per-sample path, on the whole batch at once
        for lay, t in tensors.items():
            shape = (1, -1) + (1,) * (t.ndim - 2)
            tensors[lay] = (t - mean.view(shape)) / std.view(shape)
    if len(tensors) == 1:  # one layout: the slots are the batch order
        return next(iter(tensors.values()))
    views = {lay: t.unbind(0) for lay, t in tensors.items()}
    return [views[lay][sl] for lay, sl in zip(layout.tolist(), slots.tolist())]


def _store_fds(store: Any, paths: list[str]) -> Iterable[int]:
    """:func:`_store_fd` of several paths. When some are not open yet, a generator: opening one
    may close the store's oldest descriptor (its LRU keeps 256), so each must be mapped before
    the next is opened (``ShardMaps.many`` does; the map keeps its own duplicate descriptor),
    or a descriptor already handed out would be closed and its number reused for another file."""
    fds = store._fds if store._fd_pid == os.getpid() else {}
    got = [fds.get(p) for p in paths]
    return got if None not in got else (_store_fd(store, p) for p in paths)  # type: ignore[return-value]


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


def _copies(store: Any, sc: ShardCache, m: "Manifest", plan_paths: list[str], shard: np.ndarray,
            sign: bool = True) -> set[int]:
    """The shards of this batch that have a local copy, fetching the missing ones whole (one
    concurrent request set, through signed URLs when ``sign``; a shard another worker is
    fetching is read by range meanwhile)."""
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
            return fetch_ranges(store, m if sign else None, paths, [None] * len(paths), [None] * len(paths),
                                lambda p, a, b: call(lambda: fs.cat_ranges(p, a, b, on_error="raise"), what,
                                                     storage_options=store.location.storage_options))

        try:
            got = set(sc.fetch([names[s] for s in want], rp, cat))
        except FileNotFoundError:
            raise _Mismatch() from None
        have.update(s for s in want if names[s] in got and sc.fd(names[s]) is not None)
    return have


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
                 bufs: dict[int, np.ndarray], nbytes: dict[int, int], heads: np.ndarray, crcs: np.ndarray, *,
                 signed_of: "Manifest | None" = None) -> None:
    """Every coalesced range of the batch at once: through the signed URLs of ``signed_of``'s
    shards on a few threads (:mod:`latentds.batch_signed`), whatever they do not return in
    one concurrent ``cat_ranges``."""
    import google_crc32c

    fs = store.location.fs
    gp = [paths[s] for s, *_ in groups]
    ga = [a for _, a, _, _ in groups]
    gb = [b for _, _, b, _ in groups]
    what = gp[0] if len(set(gp)) == 1 else f"{store.location.url}/shards ({len(set(gp))} shards)"
    try:
        datas = fetch_ranges(store, signed_of, gp, ga, gb,
                             lambda p, a, b: call(lambda: fs.cat_ranges(p, a, b, on_error="raise"), what,
                                                  storage_options=store.location.storage_options))
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

