"""Whole-shard local copies for batched reads from an object store (issue 15).

A shuffled epoch over S3 with ranged reads moves each sample's bytes once but pays a request
(or a coalesced span) per shard per batch. Fetching each shard a batch touches whole, once,
into a local directory and reading it from there (through :mod:`latentds.mapped`) moves every
shard over the network once per epoch (none on later epochs while it fits), which is how a
streaming loader reads, while the sampler still picks any sample in any order.

Copies are named by the shard's name, which is derived from its content
(:func:`latentds.store.shards.shard_name`), so a copy is never stale and two namespaces share
it. Every sample read from a copy is still checked (tar member name and CRC32C against the
manifest row) exactly as a ranged read is. Several DataLoader workers share the directory: a
shard is downloaded under an exclusive temporary name and renamed into place, and a worker
that finds another's download in progress reads that shard's rows by ranged GET meanwhile
instead of fetching it twice.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from .store.readthrough import evict_oldest

__all__ = ["ShardCache", "shard_cache_of"]


class ShardCache:
    """``directory`` holds at most about ``max_bytes`` of whole shard copies (least recently
    used evicted first; an evicted copy still open in another process stays readable there)."""

    #: a temporary download older than this is a dead worker's: taken over
    STALE_S = 120.0

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 4 << 30) -> None:
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        self.max_bytes = int(max_bytes)
        self._pid = -1
        self._fds: dict[str, int] = {}
        self.fetched = 0  # whole shards downloaded by this process
        self.fetched_bytes = 0

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def fd(self, name: str) -> int | None:
        """An open descriptor of the local copy of shard ``name``, or ``None`` if there is none."""
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(name)
        if fd is None:
            try:
                fd = os.open(self.path(name), os.O_RDONLY)
            except FileNotFoundError:
                return None
            if len(self._fds) >= 64:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[name] = fd
            try:  # the access time is what eviction orders by (noatime mounts never set it)
                os.utime(self.path(name))
            except OSError:
                pass
        return fd

    def fetch(self, names: list[str], remote: list[str], cat: Callable[[list[str]], list[bytes]]) -> list[str]:
        """Download the shards ``names`` (at ``remote`` paths) that nobody is downloading now, all
        in one concurrent ``cat`` call (remote paths -> their bytes, in order); returns the names that have a local copy afterwards."""
        os.makedirs(self.directory, exist_ok=True)
        mine: list[tuple[str, str, str]] = []
        for name, rpath in zip(names, remote):
            if os.path.exists(self.path(name)):
                continue
            part = self.path(name) + ".part"
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    if time.time() - os.stat(part).st_mtime < self.STALE_S:
                        continue  # another worker is fetching it: read ranges meanwhile
                    os.unlink(part)
                    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except OSError:
                    continue
            os.close(fd)
            mine.append((name, rpath, part))
        if mine:
            try:
                datas = cat([r for _, r, _ in mine])
                for (name, rpath, part), data in zip(mine, datas):
                    with open(part, "wb") as fh:
                        fh.write(data)
                    os.replace(part, self.path(name))
                    self.fetched += 1
                    self.fetched_bytes += len(data)
            finally:
                for _, _, part in mine:
                    try:
                        os.unlink(part)
                    except FileNotFoundError:
                        pass
            self._evict()
        return [n for n in names if os.path.exists(self.path(n))]

    def drop(self, name: str) -> None:
        """Remove the local copy of ``name`` (a sample in it failed its check: the next batch
        fetches the shard again; the store's own copy is untouched)."""
        fd = self._fds.pop(name, None) if self._pid == os.getpid() else None
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def _evict(self) -> None:
        files: list[tuple[float, int, str]] = []
        for n in os.listdir(self.directory):
            if n.endswith(".part"):
                continue
            try:
                st = os.stat(self.path(n))
            except FileNotFoundError:
                continue
            files.append((max(st.st_atime, st.st_mtime), st.st_size, self.path(n)))
        evict_oldest(files, self.max_bytes)

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_fds={}, _pid=-1)
        return state


_SHARD_CACHES: dict[tuple[str, int], ShardCache] = {}


def shard_cache_of(ds: Any) -> ShardCache | None:
    """The whole-shard cache of ``ds``'s batched remote reads: ``ds.shard_cache`` if set, else
    ``<local_cache>/shards`` of the dataset's read-through cache (``LatentDataset(local_cache=...)``,
    same byte budget), else ``None`` (ranged reads)."""
    sc = getattr(ds, "shard_cache", None)
    if sc is not None:
        return sc
    rt = ds.store.readthrough
    if rt is None:
        return None
    key = (rt.directory, rt.max_bytes)
    sc = _SHARD_CACHES.get(key)
    if sc is None:
        sc = _SHARD_CACHES[key] = ShardCache(os.path.join(rt.directory, "shards"), rt.max_bytes)
    return sc
