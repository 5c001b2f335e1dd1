"""A bulk job's failure records: ``failures/<name>.json``, one per source file that failed.

The name comes from :class:`latentds.identity.Identities` (keyed, or the sample key without a
key): never a bare hash of the path, and never shared by two source trees writing to one cache.
Records written before (named by an unsalted sha256 prefix of the relative path) are still
found, so ``--retry-failed`` goes on working on an existing cache, and each is replaced by a
record under the new name the next time its file's outcome is written.
"""

from __future__ import annotations

from typing import Any, Iterable

from .identity import Identities

__all__ = ["FailureBook"]


class FailureBook:
    """The failure records of the files of one job (``items``) in one cache namespace."""

    def __init__(self, store: Any, ids: Identities, items: Iterable[Any], records: dict[str, dict[str, Any]]) -> None:
        self._store = store
        self._ids = ids
        self._names: dict[Any, str] = {}
        self._legacy: dict[str, str] = {}   # name -> old name of the same file's record
        self.known: dict[str, dict[str, Any]] = {}
        self._items: dict[str, Any] = {}
        matched: set[str] = set()
        for it in items:
            n = self.name(it)
            self._items[n] = it
            if n in records:
                self.known[n] = records[n]
                matched.add(n)
            elif it.relpath_hash in records:  # written before names were keyed (issue 11, item 7)
                self.known[n] = records[it.relpath_hash]
                self._legacy[n] = it.relpath_hash
                matched.add(it.relpath_hash)
        # records no file of this job has now: another tree's, or (without a key, where a name
        # follows the file's size and mtime) a file of this tree that has changed since it failed
        self._unmatched = set(records) - matched

    def name(self, it: Any) -> str:
        n = self._names.get(it)
        if n is None:
            n = self._names[it] = self._ids.failure_name(str(dict(it.identity).get("root", "")), it.rel, it.key)
        return n

    def failed(self, it: Any) -> bool:
        return self.name(it) in self.known

    def record(self, it: Any, error_type: str, stored: str, shown: str) -> None:
        """Record that ``it`` failed: ``stored`` (no path) goes to the cache, ``shown`` to the report."""
        n = self.name(it)
        self._store.record_failure(n, error_type, stored, identity=self._ids.tag)  # how the name was made
        self._drop_legacy(n)
        self.known[n] = {"error_type": error_type, "reason": shown}

    def clear(self, it: Any) -> None:
        """``it`` was encoded: its failure record, if any, goes."""
        n = self.name(it)
        if self.known.pop(n, None) is None:
            return
        self._remove(n)
        self._drop_legacy(n)

    @property
    def unmatched(self) -> bool:
        return bool(self._unmatched)

    def sweep(self, partition_records: Iterable[dict[str, Any]], job_keys: set[str]) -> list[str]:
        """Remove the records of files of this job's tree that changed since they failed.

        A partition record lists the keys it committed and the names of its failures. When its
        keys are all keys of this job, the partition is of this tree, so a failure it names that
        no file of this job has now is of a file since fixed, renamed or removed: its record is
        stale. (Another tree's partitions hold none of this job's keys and are left alone.)"""
        gone = []
        for rec in partition_records:
            keys = rec.get("keys") if isinstance(rec, dict) else None
            if not isinstance(keys, list) or not keys or not set(keys) <= job_keys:
                continue
            for name in rec.get("failed") or []:
                if name in self._unmatched:
                    self._unmatched.discard(name)
                    self._remove(str(name))
                    gone.append(str(name))
        return gone

    def outstanding(self) -> list[tuple[Any, dict[str, Any]]]:
        """``(item, record)`` of every file of this job still failed, by relative path."""
        return sorted(((self._items[n], rec) for n, rec in self.known.items() if n in self._items),
                      key=lambda p: p[0].rel)

    def _drop_legacy(self, n: str) -> None:
        old = self._legacy.pop(n, None)
        if old is not None:
            self._remove(old)

    def _remove(self, name: str) -> None:
        loc = self._store.location
        try:
            loc.fs.rm(loc.join("failures", f"{name}.json"))
        except FileNotFoundError:
            pass
