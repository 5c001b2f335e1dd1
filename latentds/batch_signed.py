"""A shuffled batch's S3 ranges through presigned URLs (``LatentDataset.__getitems__``).

:mod:`latentds.batch_read` reads a batch's coalesced byte ranges from an object store at once.
Through s3fs (one concurrent ``cat_ranges``) the client itself costs: one batch of 64 random
samples (23 coalesced ranges, 35 MB) took a forked worker 135 ms of CPU through s3fs against
39 ms through :class:`~latentds.store.signed.SignedRanges` on 4 threads (kept-alive
``http.client`` connections, the body in one GIL-free ``recv``), and 14 whole 8 MiB shards
(a shard-copy fetch) 480 against 280 ms wall (``benchmarks/batch_get.py``, loopback moto, load
2.8). On 2 cores shared by two workers and the server, that CPU is the next batch's.

The URLs are those of every shard of the manifest generation being read (the pinned one: a
new generation gets new URLs), signed once per process - or inherited from the process that
forked it, which signs the same way if it read a batch first - and signed again when they
expire. It is only a fast path: a range a URL does not return (no URL, S3 refused or cut it
short, expired, not S3) is read by the caller's ``cat_ranges`` exactly as before, so the same
checks (tar member names, CRC32C) and typed errors follow either way; a failure turns the
signed path off for the process (``SignedRanges``).
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .store.signed import SignedRanges

if TYPE_CHECKING:
    from .store.manifest import Manifest

__all__ = ["THREADS", "fetch_ranges", "signed_ranges"]

#: GETs in flight per reader: 4 and 8 threads measured alike (``benchmarks/batch_get.py``),
#: and each thread keeps one connection open
THREADS = 4
_END = 1 << 62  # a Range past the object's end is cut at its end (RFC 9110): the whole object

_lock = threading.Lock()
_signed: "weakref.WeakKeyDictionary[Manifest, SignedRanges | None]" = weakref.WeakKeyDictionary()
_pool: tuple[int, ThreadPoolExecutor | None] = (-1, None)


def signed_ranges(store: Any, m: "Manifest") -> SignedRanges | None:
    """The signed URLs of every shard of generation ``m`` of ``store`` (``None``: not S3, too
    many shards, or signing failed), signed on first use and again once expired."""
    sr = _signed.get(m, False)
    if sr is False or (sr is not None and sr.expired()):
        backend = store.backend
        root = len(backend.path()) + 1
        rels = [store.shard_path(name)[root:] for name in m.shards]
        sr = SignedRanges.sign(backend, rels)
        with _lock:
            _signed[m] = sr
    return sr  # type: ignore[return-value]


def _threads() -> ThreadPoolExecutor:
    """This process's pool (a forked child starts its own: the parent's threads are not in it)."""
    global _pool
    pid, pool = _pool
    if pool is None or pid != os.getpid():
        with _lock:
            pid, pool = _pool
            if pool is None or pid != os.getpid():
                pool = ThreadPoolExecutor(THREADS, thread_name_prefix="latentds-batch-get")
                _pool = (os.getpid(), pool)
    return pool


def fetch_ranges(store: Any, m: "Manifest | None", paths: Sequence[str], starts: Sequence[int | None],
                 ends: Sequence[int | None], fallback: Callable[[list[str], list[Any], list[Any]], list[bytes]]
                 ) -> list[Any]:
    """Bytes ``starts[k]:ends[k]`` of ``paths[k]`` (``None``: from the start / to the end), through
    ``m``'s signed shard URLs where they answer, the rest in one ``fallback(paths, starts, ends)``
    (the backend's ``cat_ranges``). ``m=None``: all through ``fallback``."""
    n = len(paths)
    got: list[Any] = [None] * n
    sr = signed_ranges(store, m) if m is not None and n else None
    if sr is not None:
        root = len(store.backend.path()) + 1
        jobs = [(p[root:], a or 0, _END if b is None else b) for p, a, b in zip(paths, starts, ends)]
        if n == 1:
            got = [sr.get_range(*jobs[0])]
        else:
            got = list(_threads().map(lambda j: sr.get_range(*j), jobs))
    miss = [k for k in range(n) if got[k] is None]
    if miss:
        rest = fallback([paths[k] for k in miss], [starts[k] for k in miss], [ends[k] for k in miss])
        for k, data in zip(miss, rest):
            got[k] = data
    return got
