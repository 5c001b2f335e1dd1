"""fsspec plumbing: every path is a URL plus ``storage_options`` (DESIGN invariant 9).

Filesystems are created lazily and per process, because some (s3fs) are not fork-safe and a
DataLoader worker must not reuse its parent's event loop or sockets.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def strip_protocol_url(url: str | os.PathLike[str]) -> str:
    """Normalise a local path or URL to a string URL (local paths become absolute)."""
    s = os.fspath(url)
    if "://" not in s:
        s = os.path.abspath(os.path.expanduser(s))
    return s.rstrip("/") or "/"


@dataclass
class Location:
    """A directory on some fsspec filesystem, opened lazily in each process."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    _fs: Any = field(default=None, init=False, repr=False, compare=False)
    _pid: int = field(default=-1, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.url = strip_protocol_url(self.url)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None or self._pid != os.getpid():
            fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
            self._fs, self._pid = fs, os.getpid()
        return self._fs

    @property
    def path(self) -> str:
        """The location as a path for :attr:`fs` (protocol stripped)."""
        return self.fs._strip_protocol(self.url)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])

    def child(self, *parts: str) -> "Location":
        return Location("/".join([self.url.rstrip("/"), *[p.strip("/") for p in parts]]), dict(self.storage_options))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def __getstate__(self) -> dict[str, Any]:
        # The filesystem object is never shipped to another process; it is re-created there.
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self._fs, self._pid = None, -1


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole object.

    Local disk: a writer-unique temp file in the same directory, then ``os.replace`` (atomic
    rename). Object stores: a single PUT is already atomic, so ``pipe`` is enough.
    """
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        fs.pipe_file(path, data)
