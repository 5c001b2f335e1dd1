"""Find the one file that kills its worker, and encode the rest of its partition without it.

A bulk task encodes a whole partition (up to 1024 files) in one worker process. A file that
takes the process down (the kernel's OOM killer on a decoder that allocates first, a segfault in
native code, a SIGKILL) used to fail the whole partition: Dask retries the task on other workers
until ``distributed.scheduler.allowed-failures`` deaths, raises ``KilledWorker``, and every file
of the partition was recorded as failed, the culprit unnamed, and ``--retry-failed`` killed the
workers again for all of them (issue 11, item 3).

Here a partition whose worker died is split into :data:`PIECES` balanced sub-partitions that run
as tasks of their own; the pieces without the culprit finish (their shards are committed as
usual), the piece with it dies again and is split again, down to the single file, which is run once
more alone and, if its worker dies again, recorded as a :class:`~latentds.errors.WorkerDiedError`
failure naming that file (one death alone is not proof: Dask counts a death against every task
the dying worker held). The partition's
record (``bulk/<partition>.json``, what lets a re-run skip it) is written once every piece is
done. A split costs ``allowed-failures + 1`` worker deaths per level, about
``log_4(partition size)`` levels (5 for 1024 files) plus one to confirm, and leaves one shard per finished piece
instead of one per partition: both only when a worker died.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

from .errors import WorkerDiedError

__all__ = ["PIECES", "WORKER_DIED", "Splits", "is_worker_death", "split_evenly"]

T = TypeVar("T")

PIECES = 4  # fewer levels (each costs worker deaths) against more, smaller shards

# What the cache stores and the user reads for the culprit: no path (the report names the file).
WORKER_DIED = ("the worker process died while encoding this file alone (killed by the operating system, "
               "e.g. out of memory, or a crash in native code); the other files of its partition were encoded. "
               "Check the file (its declared image size, its codestream) or remove it from the source; "
               "--retry-failed tries it again, alone")


def is_worker_death(exc: BaseException) -> bool:
    """Whether a task's error says its worker process died (or ran out of memory) inside it,
    rather than that the task's code raised."""
    # by name: distributed.scheduler.KilledWorker, without importing distributed here
    return isinstance(exc, MemoryError) or type(exc).__name__ == "KilledWorker"


def split_evenly(items: Sequence[T], pieces: int = PIECES) -> list[list[T]]:
    """``items`` in at most ``pieces`` contiguous, balanced, non-empty runs (order kept)."""
    n = len(items)
    k = max(1, min(pieces, n))
    bounds = [round(j * n / k) for j in range(k + 1)]
    return [list(items[bounds[j]:bounds[j + 1]]) for j in range(k)]


@dataclass
class _Pending:
    left: int = 1               # pieces still running (the unsplit partition counts as one)
    keys: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    samples: int = 0
    broken: bool = False        # a piece failed as a whole for another reason: no record


class Splits:
    """Which sub-partition belongs to which partition, and what the pieces of each have done."""

    def __init__(self, namespace: str) -> None:
        self._ns = namespace
        self._root: dict[str, str] = {}
        self._pending: dict[str, _Pending] = {}
        self._split: set[str] = set()
        self._again: set[str] = set()

    def split(self, pid: str, chunk: Sequence[Any], keys: Sequence[str]) -> list[tuple[str, list[Any]]]:
        """The pieces of partition (or piece) ``pid`` whose worker died: ``[(piece id, items)]``."""
        root = self._root.get(pid, pid)
        self._split.add(root)
        pend = self._pending.setdefault(root, _Pending())
        idx = split_evenly(range(len(chunk)))
        pend.left += len(idx) - 1
        out = []
        for run in idx:
            sub_keys = [keys[i] for i in run]
            sub = hashlib.sha256(("\0".join([self._ns, "split", *sub_keys])).encode()).hexdigest()[:32]
            self._root[sub] = root
            out.append((sub, [chunk[i] for i in run]))
        return out

    def again(self, pid: str, chunk: Sequence[Any], keys: Sequence[str]) -> tuple[str, list[Any]] | None:
        """A one-file piece whose worker died: the first time, the same file as a new piece to
        run again (returned); the second time None, and the file is the culprit. A file that was
        only on the dying worker beside the culprit's task (Dask counts a death against every
        task the worker held) is not accused on one death."""
        if pid in self._again:
            return None
        root = self._root.get(pid, pid)
        self._split.add(root)
        self._pending.setdefault(root, _Pending())
        sub = hashlib.sha256(("\0".join([self._ns, "again", *keys])).encode()).hexdigest()[:32]
        self._root[sub] = root
        self._again.add(sub)
        return sub, list(chunk)

    def is_piece(self, pid: str) -> bool:
        return pid in self._root

    def finished(self, pid: str, *, shard: str | None, keys: Sequence[str], failed: Sequence[str], samples: int,
                 broken: bool = False) -> tuple[str, dict[str, Any]] | None:
        """Note that ``pid`` is done; return ``(partition id, record fields)`` once the partition
        it belongs to is complete and sound (every piece finished), else None."""
        root = self._root.get(pid, pid)
        pend = self._pending.setdefault(root, _Pending())
        pend.left -= 1
        pend.keys += keys
        pend.failed += failed
        pend.samples += samples
        pend.broken |= broken
        if shard:
            pend.shards.append(shard)
        if pend.left > 0:
            return None
        del self._pending[root]
        if pend.broken:
            return None
        rec: dict[str, Any] = {"partition": root, "shard": pend.shards[0] if len(pend.shards) == 1 else None,
                               "samples": pend.samples, "failed": sorted(pend.failed), "keys": sorted(pend.keys)}
        if root in self._split:  # a partition that never split keeps the record it always had
            rec["shards"] = sorted(pend.shards)
        return root, rec


# the error type recorded for a culprit
WORKER_DIED_TYPE = WorkerDiedError.__name__
