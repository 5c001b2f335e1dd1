"""``LatentIterableDataset``: sequential epochs over committed shards, for multi-node training.

Each shard is read in one GET (through its last sample's bytes) and its samples yielded in
order, which is what object stores do best; the next shards are fetched meanwhile on a small
thread pool (``prefetch``, default 2), so a worker rarely waits on a GET. Shards are split first across ranks (``rank::world_size``), then across the
DataLoader workers of each rank, so every committed sample is read exactly once per epoch
across the whole job. With ``shuffle=True`` the shard order is permuted per epoch from
``seed + epoch`` (the same on every rank, so the split stays a partition) and samples are
shuffled within each shard.

The newest committed generation is pinned, and the epoch's rows planned, when the dataset is
made (and again by each ``set_epoch``), in the calling process: DataLoader workers forked from
it inherit that plan and go straight to their first shard GET.

:meth:`LatentIterableDataset.from_dataset` streams exactly that dataset's samples (their keys,
resolved when it is called) with the dataset's targets: a namespace shared with other trees
(train and val in one cache), rows superseded by a changed source, and targets stored at encode
time under an older ``class_to_idx`` are never yielded (issue 11, item 2). A sample of the
dataset that is not committed yet is an error, not a silently shorter epoch.

With ``batch_size=B`` whole batches are yielded (``DataLoader(ds, batch_size=None)``), exactly
those ``DataLoader(ds, batch_size=B)`` would collate, built in the worker without a per-sample
trip through the DataLoader (latentds/stream_batch.py).
"""

from __future__ import annotations

import os
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, Union

import numpy as np
import torch
from google_crc32c import value as _crc32c_value  # takes numpy views without a copy
from torch.utils.data import IterableDataset, get_worker_info

from .epoch_box import EpochBox
from .errors import CacheError, ConfigError, LatentdsError, ShardError
from .sample.views import choose_view, view_key
from .store import open_store
from .store import layout
from .store.epochplan import MAX_SHIPPED_ROWS, EpochPlan
from .shardwalk import ShardWalk
from .stream_batch import ShardItems, check_batch_size, stream_batches
from .stream_errors import nothing_committed
from .store.sidefile import SideFile, ship, spawning
from .store.signed import SignedRanges
from .store.prefetch import DEFAULT_DEPTH, fetch_ahead
from .store.shards import TAR_HEADER, check_member, decode_sample, parse_npy


if TYPE_CHECKING:  # not imported at run time: a spawned worker given an EpochPlan needs no pyarrow from here
    from .store.manifest import Manifest

#: what an epoch reads its rows from: the loaded generation, or the plan shipped to a spawned worker
Rows = Union["Manifest", EpochPlan]


#: a spawned worker's pickle is written into a pipe of this many bytes (Linux's default)
_PIPE_BYTES = 64 << 10
#: what may travel beside a spawned worker's pickle (store/sidefile.py): the attributes that grow
#: with the dataset (``samples``: ~50 bytes a key; the epoch plan: 88 bytes a row; signed URLs)
_SIDE = ("samples", "_served", "_pinned", "_signed")
#: ... when their pickle is at least this big (below it, a file costs more than it saves)
_SIDE_MIN_BYTES = 16 << 10
#: side files kept per dataset: those of the last epochs' worker starts (older ones are removed)
_SIDE_KEEP = 2


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class LatentIterableDataset(IterableDataset):
    """Stream ``(latent tensor, target)`` from the committed shards of one cache namespace.

    Args:
        cache: the cache URL (as given to ``LatentDataset``).
        namespace: the namespace (``LatentDataset.namespace``); or use :meth:`from_dataset`.
        rank, world_size: default from ``torch.distributed`` or the ``RANK``/``WORLD_SIZE`` env.
        shuffle, seed: per-epoch shard order and within-shard order; call :meth:`set_epoch`.
        transform: applied to the latent tensor.
        samples: optional ``{key: target}``: stream only these samples, with these targets
            (what :meth:`from_dataset` passes). Without it every committed sample of the
            namespace is streamed with the target stored when it was encoded.
        target_transform: applied to the target.
        views: with ``samples`` keyed by the samples' own keys (view 0), stream each sample's
            view of the current epoch (``LatentDataset(views=K)``'s choice for the same index and
            epoch: ``samples`` in dataset order); :meth:`from_dataset` passes it.
        prefetch: shards fetched ahead (on as many threads, per process) while one is decoded;
            0 reads one shard at a time.
        batch_size: yield whole batches ``(latents[B, ...], targets[B])`` instead of samples;
            load with ``DataLoader(ds, batch_size=None, num_workers=...)``. Exactly what
            ``DataLoader(ds, batch_size=B)`` gives per sample (each worker batches its own
            stream), without the per-sample trip through the DataLoader (latentds/stream_batch.py).
        drop_last: with ``batch_size``, drop each worker's last, partial batch.
    """

    def __init__(self, cache: str, namespace: str, *, storage_options: dict[str, Any] | None = None,
                 rank: int | None = None, world_size: int | None = None, shuffle: bool = False, seed: int = 0,
                 transform: Callable[[torch.Tensor], Any] | None = None,
                 samples: dict[str, int] | None = None,
                 target_transform: Callable[[int], Any] | None = None, views: int = 1,
                 prefetch: int = DEFAULT_DEPTH, batch_size: int | None = None, drop_last: bool = False) -> None:
        super().__init__()
        self.batch_size, self.drop_last = check_batch_size(batch_size, drop_last)
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"views must be a positive int (1: no augmented views), not {views!r}")
        if views > 1 and samples is None:
            # every committed row (all views of every sample) has no "view of this epoch"
            raise ConfigError(f"{cache}: views={views} needs samples= (the samples' own keys, in dataset order); "
                              f"use LatentIterableDataset.from_dataset(dataset)")
        self.views = views
        self.prefetch = int(prefetch)
        #: (epoch, {view key: target}): the samples this epoch streams (views > 1)
        self._served: tuple[int, dict[str, int]] | None = None
        self.store = open_store(cache, namespace, storage_options)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        #: (epoch, pointer): the generation this epoch reads, pinned on first use and shipped to
        #: DataLoader workers, so every worker of a rank splits the same shard list
        self._pin: tuple[int, dict[str, Any]] | None = None
        #: (epoch, loaded generation, rows per shard): what the pin resolves to in this process
        self._pinned: tuple[int, Rows, dict[str, list[int]]] | None = None
        self.transform = transform
        self.target_transform = target_transform
        self.samples = dict(samples) if samples is not None else None
        self._signed: SignedRanges | None = None  # the pinned epoch's signed shard URLs (S3)
        #: side files written for spawned workers (not pickled), removed when superseded or
        #: when this dataset is collected; the directory itself goes at exit
        self._shipped: list[SideFile] = []
        weakref.finalize(self, _remove_all, self._shipped)
        self._box = EpochBox()  # this epoch and its pin, for persistent workers (latentds/epoch_box.py)
        self._pin_early()

    def _pin_early(self) -> None:
        """Pin epoch 0's generation and plan now, in the process that makes the dataset (as
        LitData reads its index when its dataset is made): DataLoader workers forked from here
        inherit the plan instead of each opening an S3 client to read the pointer and the
        manifest before its first GET (0.5-0.7 s per worker on the loopback server, most of a
        small epoch's start). A cache that cannot be planned yet (nothing committed, samples
        missing, the store unreachable) is left unpinned: iteration then raises exactly what it
        raised before, where it raised it."""
        try:
            self._plan()
        except (LatentdsError, OSError):
            self._pin = self._pinned = self._signed = None
        self._share_epoch()

    def _share_epoch(self) -> None:
        if get_worker_info() is None:  # the main process writes it; workers read it
            self._box.put(self.epoch, self._pin[1] if self._pin is not None and self._pin[0] == self.epoch else None,
                          name=_Lazy(lambda: str(self.store.manifests.pointer_path)))
        else:  # an epoch set in the worker itself (a wrapper, worker_init_fn): not undone by the box
            self._box.seen()

    @classmethod
    def from_dataset(cls, ds: Any, **kwargs: Any) -> "LatentIterableDataset":
        """Stream exactly ``ds``'s samples with ``ds``'s current targets (keys resolved now, as
        ``ImageFolder`` scans at construction; call again after the files change)."""
        loc = ds.cache.root
        samples = {ds.key(i): int(t) for i, t in enumerate(ds.targets)}
        kwargs.setdefault("transform", ds.transform)
        kwargs.setdefault("target_transform", ds.target_transform)
        kwargs.setdefault("views", getattr(ds, "views", 1))  # call set_epoch(e) on both, as on ds
        return cls(loc.url, ds.namespace, storage_options=loc.storage_options, samples=samples, **kwargs)

    #: ship the epoch's rows (not only the pointer) to spawned workers; False: as before
    #: 2026-11-28, each spawned worker loads the pinned generation itself (benchmarks compare)
    ship_plan = True
    #: on S3, read shards through signed URLs (False: through the backend's client, as before
    #: 2026-11-28 in forked workers); set before the dataset plans (class attribute) to compare
    sign_urls = True
    #: send what grows with the dataset to a spawned worker beside its pickle (False: inside it,
    #: as before 2026-11-28 04:30; benchmarks compare)
    ship_beside = True
    #: shard GETs started at once, then ramped up to ``prefetch`` as shards are taken (None: all
    #: ``prefetch`` at once, the default). Measured with prefetch 4, starting from 2 was not
    #: better (RESULTS.md, issue 15 item 1, fifth pass): benchmarks only
    prefetch_start: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Only spawned/forkserver workers (and explicit pickles) get here: a forked worker
        # inherits ``_pinned`` as it is. The pointer always travels (``_pin``); the loaded
        # generation never does, but the epoch's rows do (an EpochPlan: per row its byte layout,
        # target, CRC32C and key, for this epoch's rows only), so a spawned worker's first
        # request is its first shard GET instead of a pointer and a whole-manifest GET.
        self._unship()  # a worker pickling on: its state is whole first
        if spawning() and get_worker_info() is None:
            self._box.own()  # workers spawned from here share the box this process writes
        state = self.__dict__.copy()
        state.pop("_shipped", None)
        state.pop("_reuse", None)
        state["_pinned"] = state["_signed"] = None
        pinned, pin = self._pinned, self._pin
        if (self.ship_plan and pinned is not None and pin is not None and pinned[0] == pin[0]
                and pinned[1].generation == pin[1].get("generation")
                and self._plan_pays(sum(map(len, pinned[2].values())))):
            plan = pinned[1] if isinstance(pinned[1], EpochPlan) else EpochPlan.from_manifest(pinned[1], pinned[2])
            state["_pinned"] = (pinned[0], plan, None)  # by_shard is rebuilt from the plan
            # and signed GET URLs of its shards (S3): the worker reads them without importing
            # s3fs or building a client; any failure falls back to the backend (store/signed.py).
            # Only to a process being spawned: a URL is a bearer token for 6 h, and an explicit
            # pickle (a file, a queue, a log) may go where the credentials do not (the copy then
            # reads through its own client)
            state["_signed"] = self._signed if spawning() else None
        if self.ship_beside and spawning():
            # a worker being spawned: what grows with the dataset goes beside the pickle, which
            # then stays under the 64 KiB pipe at any size, so every worker starts at once
            big = {k: state.pop(k) for k in _SIDE if state.get(k) is not None}
            side = ship(big, f"ds{id(self):x}", _SIDE_MIN_BYTES) if big else None
            if side is None:
                state.update(big)
            else:
                state["_side"] = side
                self._keep(side)
        return state

    def __copy__(self) -> "LatentIterableDataset":  # copy.copy: as before, but a box of its own (review R4)
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__, _box=self._box.clone())
        return new

    def _keep(self, side: SideFile) -> None:
        shipped = self.__dict__.setdefault("_shipped", [])
        if side in shipped:
            shipped.remove(side)
        shipped.append(side)
        while len(shipped) > _SIDE_KEEP:  # a newer epoch's workers started: the old ones have read theirs
            shipped.pop(0).remove()

    def _unship(self) -> None:
        """Load what a spawned worker received beside its pickle (on first use, in the worker:
        an error is then raised by iteration, where DataLoader reports it, not at unpickling)."""
        d = self.__dict__
        side = d.get("_side")
        if side is None:
            return
        loaded = side.load()  # CacheError naming the file if it is gone or corrupt
        for k in _SIDE:
            if k not in d:
                d[k] = loaded.get(k)
        del d["_side"]
        self._rebuild_plan()

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes not set: those left beside a spawned worker's pickle
        if name in _SIDE and "_side" in self.__dict__:
            self._unship()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _plan_pays(self, rows: int) -> bool:
        """Whether shipping ``rows`` plan rows speeds a spawned worker up. multiprocessing writes
        a spawned worker's pickle into a pipe (64 KiB on Linux) that the child drains only after
        it imported torch (the worker function comes first): a pickle over the pipe blocks the
        parent, so the next worker starts only when this one finished importing torch (measured:
        the second of 2 workers 2.1-2.5 s late with a 2,000-row plan, 0.1-0.9 s with the pointer).
        So a plain pickle carries the plan when the whole pickle stays under the pipe, or when
        the rest of it (``samples``: ~50 bytes a key) is over the pipe anyway; a spawned worker's
        always gets it, beside the pickle (``__getstate__``, store/sidefile.py)."""
        if rows > MAX_SHIPPED_ROWS:
            return False
        if self.ship_beside and spawning():  # the plan goes beside the pickle (__getstate__): it never stalls a start
            return True
        rest = 50 * len(self.samples) if self.samples is not None else 0
        return rest > _PIPE_BYTES or rest + EpochPlan.BYTES_PER_ROW * rows + 8192 <= _PIPE_BYTES

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_side" not in state:
            self._rebuild_plan()

    def _rebuild_plan(self) -> None:
        pinned = self.__dict__.get("_pinned")
        if pinned is not None and pinned[2] is None:  # by_shard is not shipped: rebuilt from the plan
            self._pinned = (pinned[0], pinned[1], pinned[1].by_shard())

    def _epoch_samples(self) -> dict[str, int] | None:
        """``{key: target}`` streamed this epoch: ``samples``, or with ``views > 1`` each sample's
        view of this epoch (the i-th sample is index i of the dataset, as ``choose_view`` wants)."""
        if self.samples is None or self.views <= 1:
            return self.samples
        served = self._served
        if served is None or served[0] != self.epoch:
            served = self._served = (self.epoch, {view_key(k, choose_view(i, self.epoch, self.views)): t
                                                  for i, (k, t) in enumerate(self.samples.items())})
        return served[1]

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: the newest committed generation is pinned for it now, in the
        calling process, so DataLoader workers started afterwards all read that one (persistent
        workers too: they take epoch and generation from shared memory when the epoch starts)."""
        self.epoch = int(epoch)
        self._pin = self._pinned = None  # "now": not a pin taken earlier (at construction) for this epoch
        try:
            self._plan()
        finally:
            self._share_epoch()

    def _plan(self) -> tuple[Rows, dict[str, list[int]]]:
        """The manifest generation this epoch reads and, per shard, the rows it yields there.

        Pinned once per epoch: the pointer is followed first (``refresh``), THEN the generation
        is taken, and the shard list, the split and every row of the epoch come from that one
        generation, however many generations land meanwhile (``shards()``/``my_shards()`` and
        iteration agree). The next epoch (``set_epoch``) pins the newest one."""
        pinned = self._pinned
        if pinned is not None and pinned[0] == self.epoch:
            return pinned[1], pinned[2]
        if self._pin is not None and self._pin[0] == self.epoch:
            # the parent's pin (a DataLoader worker); a persistent worker's loaded generation when
            # it is the same one (a whole manifest, not a spawned worker's plan of other rows)
            reuse = self.__dict__.pop("_reuse", None)
            m = (reuse if reuse is not None and not isinstance(reuse, EpochPlan)
                 and reuse.generation == self._pin[1].get("generation") else self.store.manifests.load(self._pin[1]))
        else:
            ptr = self.store.manifests.read_pointer()  # refresh first, then take that generation
            m = self.store.manifests.load(ptr) if ptr is not None else None
            self._pin = (self.epoch, ptr) if ptr is not None else None
        if m is None:
            raise nothing_committed(self.store, from_dataset=self.samples is not None)
        samples = self._epoch_samples()
        if samples is None:
            rows = np.arange(len(m), dtype=np.int64)
        else:
            keys = list(samples)
            found = m.find_many(keys)  # one vectorised search (a Python find per key: ~10 us each)
            missing = np.flatnonzero(found < 0)
            if len(missing):
                raise CacheError(
                    f"{self.store.manifests.pointer_path}: {len(missing)} of {len(keys)} samples of the dataset "
                    f"are not in committed shards (e.g. key {keys[int(missing[0])]}); run dataset.fill() and "
                    f"dataset.compact() (or `latentds encode` / `latentds compact`) first")
            rows = np.sort(found)
        shard_ids = m.shard_ids()  # not the read plan: at 10M rows that would be +1.6 GB per worker
        names = m.shards
        # rows grouped by shard, ascending within each (a stable sort of sorted rows by shard id)
        sid = shard_ids[rows]
        order = np.argsort(sid, kind="stable")
        rows, sid = rows[order], sid[order]
        cuts = np.flatnonzero(np.diff(sid)) + 1
        by_shard: dict[str, list[int]] = {
            names[int(g[0])]: r.tolist() for g, r in zip(np.split(sid, cuts), np.split(rows, cuts)) if len(r)}
        self._pinned = (self.epoch, m, by_shard)
        # signed GET URLs of the epoch's shards (S3; ~0.3 ms each, no request): every reader of
        # the epoch - forked or spawned workers, or this process - reads its shards through them
        # (store/signed.py: faster than s3fs, GIL-free body reads), the backend on any failure
        self._signed = (SignedRanges.sign(self.store.backend, [layout.shard(s) for s in by_shard])
                        if self.sign_urls else None)
        return m, by_shard

    def shards(self) -> list[str]:
        return self._order(sorted(self._plan()[1]))

    def _order(self, names: list[str]) -> list[str]:
        if self.shuffle:
            names = [names[i] for i in np.random.default_rng(self.seed + self.epoch).permutation(len(names))]
        return names

    def _split(self, names: list[str]) -> list[str]:
        rank, world = _dist_rank_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        mine = names[rank::world]
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id::info.num_workers]
        return mine

    def my_shards(self) -> list[str]:
        return self._split(self.shards())

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        # a persistent DataLoader worker: the epoch (and its generation) the main process set since
        news = self._box.news() if get_worker_info() is not None else None
        if news is not None:
            self.epoch, self._pin = news[0], (news[0], news[1]) if news[1] is not None else None
            # the generation this worker loaded is kept for _plan: most epochs pin the same one
            self._reuse, self._pinned, self._signed = self._pinned[1] if self._pinned else None, None, None
        count, shards = self._walks()
        if self.batch_size is not None:  # whole batches (latentds/stream_batch.py)
            yield from stream_batches(shards, count, self.batch_size, self.drop_last, self.transform,
                                      self.target_transform)
            return
        ttf, tf = self.target_transform, self.transform
        for walk, order, targets in shards:
            mean_of = walk.mean
            for i in order:
                mean = mean_of(i)
                target: Any = targets[i] if ttf is None else ttf(targets[i])
                z = torch.from_numpy(mean.copy())  # a writable tensor of its own (one copy)
                yield (tf(z) if tf else z), target

    def _walks(self) -> tuple[int, Iterator[ShardItems]]:
        """This process's samples of the epoch: how many, and per shard (in this worker's order,
        fetched ahead) its checked walk, the order its rows are served in and their targets."""
        # one generation for the whole epoch: the shard list and the rows come from the same one
        m, by_shard = self._plan()
        samples = self._epoch_samples()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank or 0])
        backend = self.store.backend
        signed = getattr(self, "_signed", None)  # the epoch's signed shard URLs (S3), if any
        # with signed URLs the worker never builds an S3 client unless one fails (then as before)
        local = backend.caps.local if signed is None else False

        def fetch(shard: str) -> bytes:
            if local:
                return backend.get(layout.shard(shard))
            # object stores: one ranged GET through the end of the last sample read (a whole-object
            # GET costs s3fs a HEAD first, a second request per shard); the members after it
            # (labels, metadata, tar padding) are not read here. A short object reads short, and
            # the truncation check below names it as before.
            end = max(1, max(o + n for o, n, *_ in (m.row_layout(r) for r in by_shard[shard])))
            data = signed.get_range(layout.shard(shard), 0, end) if signed is not None else None
            return data if data is not None else backend.get_range(layout.shard(shard), 0, end)

        mine = self._split(self._order(sorted(by_shard)))

        def walks() -> Iterator[ShardItems]:
            for shard, data in fetch_ahead(fetch, mine, self.prefetch, self.prefetch_start):
                # named in errors only: made on first use, so a worker reading through signed URLs
                # never builds the S3 filesystem just to spell a path
                path = _Lazy(lambda shard=shard: self.store.shard_path(shard))
                # walk the manifest's rows of this shard (not the tar's members): the shard may also
                # hold samples that are not this dataset's, or that the manifest no longer names
                rows = by_shard[shard]
                # the whole shard's rows checked at once on arrival (names, bounds, .npy headers,
                # CRC32Cs); a row failing any check is decoded by _decode_row at its own turn, which
                # raises its typed error there, after the samples before it, as a per-row walk did
                walk = ShardWalk(m, rows, data, lambda row, path=path, data=data: _decode_row(m, row, data, path))
                order = rng.permutation(len(rows)).tolist() if self.shuffle else range(len(rows))
                targets = ([samples[k.decode()] for k in walk.keys] if samples is not None
                           else walk.cols[:, 4].tolist())
                yield walk, order, targets

        return sum(len(by_shard[s]) for s in mine), walks()


def _remove_all(shipped: list[SideFile]) -> None:
    for side in shipped:
        side.remove()


class _Lazy:
    """Text made only when formatted (an error message), e.g. a shard's store path: spelling it
    builds the store's filesystem, which a worker reading through signed URLs otherwise skips."""

    __slots__ = ("_make",)

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make

    def __str__(self) -> str:
        return str(self._make())


def _decode_row(m: Rows, row: int, data: bytes, path: Any) -> np.ndarray:
    """The mean of ``row`` as a read-only view into ``data`` (its whole shard), checked: the tar
    member before it must be the row's own, and its bytes must match the row's CRC32C (legacy
    rows without one: sha256). The CRC runs over a numpy view of the shard's bytes and the
    ``.npy`` header is parsed from a memoryview (headers are cached per layout), so a sample
    costs no copy before the caller's own."""
    off, length, mlen, soff, _ = m.row_layout(row)
    key = m.key_bytes(row)
    if off < TAR_HEADER or length < 0 or off + length > len(data):
        raise ShardError(f"{path} (sample {key.decode()}): shard is truncated (bytes {off}..{off + length} of "
                         f"{len(data)}); run `latentds verify`")
    if data[off - TAR_HEADER:off - TAR_HEADER + len(key) + 5] != key + b".npy\0":  # the common case, cheaply
        check_member(data[off - TAR_HEADER:off], key, ".npy", f"{path} (sample {key.decode()})")  # raises
    crc = m.crc32c_at(row)
    if crc < 0:  # a generation written before the CRC column: sha256, as before
        name = f"{path} (sample {key.decode()})"
        return decode_sample(data[off:off + length], mean_length=mlen, std_offset=soff,
                             sha256=m.locate(row)[5], name=name)[0]
    # the per-read check of the random-access path (sha256: ~5x the CPU)
    if _crc32c_value(np.frombuffer(data, np.uint8, length, off)) != crc:
        raise ShardError(f"{path} (sample {key.decode()}): checksum mismatch (crc32c), the shard is corrupt; "
                         f"`latentds verify` lists every bad sample")
    return parse_npy(memoryview(data)[off:off + mlen], _Lazy(lambda: f"{path} (sample {key.decode()})"))  # type: ignore[arg-type]


__all__ = ["LatentIterableDataset"]
