"""Large pickled state handed to spawned workers beside their pickle, not inside it.

multiprocessing writes a spawned (or forkserver) worker's pickle into a pipe, 64 KiB on Linux,
that the child drains only after it has imported what the pickle's first objects need (for a
DataLoader worker: torch, 2-3 s). A bigger pickle blocks the parent in that write, so the next
worker starts only once this one has imported torch: the second of two workers started 2.1-2.5
s late with a 2,000-row epoch plan or a 2,000-key ``samples`` dict (measured, RESULTS.md issue
15 item 1). :func:`ship` writes such state once to a file in a private temporary directory of
the parent (mode 0700, one per process, removed at exit) and returns a :class:`SideFile` - the
file's name, size and SHA-256 - that pickles to ~200 bytes; the worker calls :meth:`SideFile.load`.
A file that is missing (the parent exited, a temp cleaner ran) or does not match its digest
raises :class:`~latentds.errors.CacheError` naming it.

Files rather than ``multiprocessing.shared_memory``: before Python 3.13 a process that attaches
a segment registers it with its own resource tracker, which unlinks it when that process exits
(the first worker to finish would take it from the others).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from ..errors import CacheError

__all__ = ["SideFile", "ship", "spawning"]

_dir: list[Any] = [None, None]  # (pid, path) of this process's private directory


def spawning() -> bool:
    """Whether the current pickle is going to a process being spawned (spawn or forkserver),
    i.e. is made while multiprocessing starts that process."""
    from multiprocessing import context

    return context.get_spawning_popen() is not None


def _private_dir() -> str:
    pid, path = _dir
    if pid != os.getpid() or path is None or not os.path.isdir(path):
        path = tempfile.mkdtemp(prefix="latentds-ship-")  # 0700: only this user reads it
        _dir[:] = [os.getpid(), path]
        atexit.register(_remove_dir, os.getpid(), path)
    return str(path)


def _remove_dir(pid: int, path: str) -> None:
    if os.getpid() == pid:  # never from a forked child that inherited the registration
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class SideFile:
    """A pickled object in a file: its path, byte size and SHA-256 (hex)."""

    path: str
    size: int
    sha256: str

    def load(self) -> Any:
        """The object, after checking the file's size and digest."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CacheError(f"{self.path}: the state shipped to this worker beside its pickle cannot be read "
                             f"({e.strerror or e}); the process that started the worker must still be running "
                             f"(its temporary directory is removed when it exits) - restart the DataLoader") from e
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.sha256:
            raise CacheError(f"{self.path}: the state shipped to this worker beside its pickle is corrupt "
                             f"({len(data)} bytes, {self.size} expected, or a SHA-256 mismatch); something else "
                             f"wrote to the temporary directory - restart the DataLoader")
        return pickle.loads(data)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def ship(obj: Any, tag: str, min_bytes: int = 0) -> SideFile | None:
    """Write ``obj`` (pickled) to this process's private directory as ``<tag>-<sha256>.pkl``
    (once per content; ``tag`` keeps one owner's files apart from another's); ``None`` when
    its pickle is under ``min_bytes`` (the caller keeps it inline)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) < min_bytes:
        return None
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(_private_dir(), f"{tag}-{digest}.pkl")
    if not (os.path.exists(path) and os.path.getsize(path) == len(data)):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a worker never sees a half-written file
    return SideFile(path, len(data), digest)
