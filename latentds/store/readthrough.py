"""Bounded local copies of sample bytes read from a remote store (``local_cache=`` of a store).

Not a cache tier of the store: it only ever holds copies (the store keeps the original), so
evicting never loses data; content addressing (sha256 and key in the name) means a copy can
never be stale.
"""

from __future__ import annotations

import os
import threading

from fsspec.implementations.local import LocalFileSystem

from .fsio import write_atomic

__all__ = ["ReadThroughCache", "evict_oldest"]


class ReadThroughCache:
    """Bounded local copies of sample bytes read from a remote store, keyed by their sha256.

    It only ever holds copies (the store keeps the original), so evicting never loses data;
    content addressing means a copy can never be stale. Eviction drops least recently
    written files once ``max_bytes`` is exceeded."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.max_bytes = int(max_bytes)
        self._approx: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # a lock cannot cross a process boundary (spawned DataLoader workers): each makes its own
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _path(self, sha: str) -> str:
        return os.path.join(self.directory, sha[:2], sha)

    def get(self, sha: str) -> bytes | None:
        try:
            with open(self._path(sha), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def put(self, sha: str, data: bytes) -> None:
        write_atomic(LocalFileSystem(), self._path(sha), data)
        with self._lock:
            if self._approx is None:
                self._approx = sum(e[1] for e in self._files())
            self._approx += len(data)
            if self._approx > self.max_bytes:
                self._evict()

    def _files(self) -> list[tuple[str, int, float]]:
        out = []
        for dirpath, _, names in os.walk(self.directory):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    continue
                out.append((p, st.st_size, st.st_mtime))
        return out

    def _evict(self) -> None:
        self._approx = evict_oldest([(mtime, size, p) for p, size, mtime in self._files()], int(self.max_bytes * 0.9))


def evict_oldest(files: list[tuple[float, int, str]], target: int) -> int:
    """Delete ``(time, size, path)`` files oldest first until their total is at most ``target``
    bytes; return the total left. The one eviction loop of the local copies (sample bytes here,
    whole shards in :class:`latentds.shard_cache.ShardCache`)."""
    total = sum(f[1] for f in files)
    for _, size, p in sorted(files):
        if total <= target:
            break
        try:
            os.unlink(p)
            total -= size
        except FileNotFoundError:
            pass
    return total
