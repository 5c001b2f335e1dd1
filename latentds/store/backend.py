"""The store contract: a handful of operations on objects under one root, over fsspec.

Everything in :mod:`latentds.store` that touches bytes goes through a :class:`Backend`:
``get`` / ``get_range`` / ``put`` (atomic) / ``list`` / ``delete`` / ``put_if`` (the
conditional commit of a small object), with retries, access errors and redaction handled once
(:func:`latentds.store.fsio.call`). What differs between stores is stated as
:class:`Capabilities` instead of being discovered by each caller:

* ``local``: a POSIX filesystem; reads may use ``pread`` on descriptors kept open.
* ``conditional``: ``put_if`` is a true compare-and-swap (local disk: ``flock`` around check +
  rename; S3: ``If-Match`` / ``If-None-Match`` PUTs). Elsewhere (``memory://``, other object
  stores) it checks then writes: racing committers may lose a commit, which the manifest's
  merge-and-retry narrows but cannot close.

``latentds.testing.store_conformance`` states this contract as tests, run on local disk,
``memory://`` and S3 (moto on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from fsspec.implementations.local import LocalFileSystem

from ..errors import ManifestError
from .fsio import Location, call, write_atomic

__all__ = ["Backend", "Capabilities", "CommitConflict", "capabilities", "read_local"]


class CommitConflict(ManifestError):
    """A conditional write was refused: another writer committed since the caller read the
    object. Compaction and bulk commits catch it, merge that generation and retry."""


@dataclass(frozen=True)
class Capabilities:
    local: bool          # POSIX paths: pread, rename, flock
    conditional: bool    # put_if is a true compare-and-swap
    protocol: str        # the filesystem's first protocol name (``file``, ``memory``, ``s3``)


def _protocols(fs: Any) -> tuple[str, ...]:
    p = getattr(fs, "protocol", ())
    return (p,) if isinstance(p, str) else tuple(p)


def capabilities(fs: Any) -> Capabilities:
    """The one place that decides what a filesystem can do (by its declared protocol)."""
    protos = _protocols(fs)
    local = isinstance(fs, LocalFileSystem)
    s3 = any(p in ("s3", "s3a") for p in protos)
    return Capabilities(local=local, conditional=local or s3, protocol=protos[0] if protos else "?")


class Backend:
    """Objects under one root URL. Paths given to the operations are relative to the root
    (``"shards/shard-….tar"``); :mod:`latentds.store.layout` makes them. ``FileNotFoundError``
    passes through every read untouched: the caller decides what a miss means."""

    def __init__(self, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> None:
        self.location = Location(os.fspath(url), dict(storage_options or {}))
        self._caps: Capabilities | None = None
        self._root: str | None = None
        self._unlisted: Location | None = None  # see :attr:`fs`

    def __repr__(self) -> str:
        return f"Backend({self.location!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"location": self.location, "_caps": None, "_root": None, "_unlisted": None}

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.location.url

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.location.storage_options

    @property
    def fs(self) -> Any:
        """The filesystem, made with fsspec's listings cache off on anything but local disk.

        Why: fsspec filesystems keep every listing (``ls``/``find``) in a per-instance cache, and
        one instance is shared by every location with the same options in a process. s3fs then
        answers ``info``/``exists`` -- and ``cat_file``, which asks for the size first -- from
        that listing: an object written by another process after the listing is reported
        missing. gc lists the whole store, so its next pass failed with "manifest generation
        named by CURRENT.json is missing" for every generation committed since (the S3 soak at
        the minimum grace); a reader that had listed would re-encode staged samples. Other
        processes write here all the time: a store answer never comes from an old listing."""
        fs = self.location.fs
        if isinstance(fs, LocalFileSystem):  # no listings cache: paths are asked for every time
            return fs
        if self._unlisted is None:
            self._unlisted = Location(self.location.url, {**self.location.storage_options, "use_listings_cache": False})
        return self._unlisted.fs

    @property
    def caps(self) -> Capabilities:
        if self._caps is None:
            self._caps = capabilities(self.fs)
        return self._caps

    def path(self, rel: str = "") -> str:
        """The filesystem path of ``rel`` (for error messages and for ``pread``)."""
        root = self._root
        if root is None:  # fsspec's protocol stripping costs more than the read of a small object
            root = self._root = self.location.path.rstrip("/")
        return f"{root}/{rel.strip('/')}" if rel else root

    def child(self, rel: str) -> "Backend":
        return Backend(self.location.child(rel).url, self.storage_options)

    def _call(self, op: Callable[[], Any], path: str) -> Any:
        return call(op, path, storage_options=self.storage_options)

    # -- the contract -------------------------------------------------------------------------
    def get(self, rel: str) -> bytes:
        p = self.path(rel)
        if self.caps.local:
            # a plain open + read: fsspec's local cat_file strips the protocol, stats and wraps
            # the file (~0.3 ms; a compaction reads one staging object per sample)
            try:
                return read_local(p)
            except FileNotFoundError:
                raise
            except OSError:
                pass  # any other failure: the fsspec path below raises it as the typed error
        fs = self.fs
        return self._call(lambda: fs.cat_file(p), p)

    def get_range(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (end exclusive) in one request; may be short at the object's end."""
        p, fs = self.path(rel), self.fs
        return self._call(lambda: fs.cat_file(p, start=start, end=end), p)

    def put(self, rel: str, data: bytes) -> None:
        """Readers see nothing or all of ``data`` (temp + rename on disk, one PUT elsewhere)."""
        p, fs = self.path(rel), self.fs
        try:
            self._call(lambda: write_atomic(fs, p, data), p)
        except FileNotFoundError as exc:  # a write's miss is the bucket (or root) itself: a user's mistake
            from ..errors import StoreAccessError

            raise StoreAccessError(f"{p}: cannot write, the bucket or directory does not exist ({exc}); create it "
                                   "or fix the cache URL") from None

    def exists(self, rel: str) -> bool:
        p, fs = self.path(rel), self.fs
        return bool(self._call(lambda: fs.exists(p), p))

    def info(self, rel: str) -> dict[str, Any]:
        p, fs = self.path(rel), self.fs
        fs.invalidate_cache(p)
        return dict(self._call(lambda: fs.info(p), p))

    def delete(self, rel: str) -> None:
        """Remove ``rel``; removing what is not there is no error (S3's DELETE is idempotent,
        and gc racing another gc must not fail)."""
        p, fs = self.path(rel), self.fs
        try:
            self._call(lambda: fs.rm_file(p), p)
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "", *, recursive: bool = False) -> dict[str, dict[str, Any]]:
        """``{relative path: info}`` of the objects under ``prefix`` (all depths with
        ``recursive``); empty when nothing is there. Never a cached listing: other processes
        write here."""
        base, fs = self.path(prefix), self.fs
        fs.invalidate_cache()
        try:
            if recursive:
                found = self._call(lambda: fs.find(base, detail=True), base)
            else:
                found = {i["name"]: i for i in self._call(lambda: fs.ls(base, detail=True), base)
                         if i.get("type") != "directory"}
        except FileNotFoundError:
            return {}
        root = self.path().rstrip("/") + "/"
        out = {}
        for p, i in found.items():
            p = p.rstrip("/")
            if p.startswith(root):
                out[p[len(root):]] = i
            elif "://" in p and p.split("://", 1)[1].startswith(root.split("://", 1)[-1]):
                out[p.split("://", 1)[1][len(root.split("://", 1)[-1]):]] = i
        return out

    def put_if(self, rel: str, data: bytes, matches: Callable[[bytes | None], bool]) -> None:
        """Replace the small object ``rel`` with ``data`` only if ``matches(current bytes)`` (None:
        absent) holds at the moment of the write; :class:`CommitConflict` otherwise. A true
        compare-and-swap where ``caps.conditional``; check-then-write elsewhere."""
        p, fs = self.path(rel), self.fs
        if self.caps.local:
            with _flock(self.path(rel.rsplit("/", 1)[0] + "/.commit.lock" if "/" in rel else ".commit.lock")):
                if not matches(self._current(rel)):
                    raise CommitConflict(f"{p}: changed since it was read (another writer committed first)")
                self._call(lambda: write_atomic(fs, p, data), p)
            return
        if not self.caps.conditional:
            if not matches(self._current(rel)):
                raise CommitConflict(f"{p}: changed since it was read (another writer committed first)")
            self._call(lambda: write_atomic(fs, p, data), p)
            return
        etag = self._etag(rel)  # S3: the version we check is the version the PUT is conditional on
        cur = self._current(rel) if etag is not None else None
        if not matches(cur):
            raise CommitConflict(f"{p}: changed since it was read (another writer committed first)")
        cond: dict[str, Any] = {"mode": "create"} if etag is None else {"IfMatch": etag}
        try:
            self._call(lambda: fs.pipe_file(p, data, **cond), p)
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileExistsError) or _precondition_failed(exc):
                raise CommitConflict(f"{p}: another writer committed first") from None
            raise

    def _current(self, rel: str) -> bytes | None:
        try:
            return self.get(rel)
        except FileNotFoundError:
            return None

    def _etag(self, rel: str) -> str | None:
        try:
            info = self.info(rel)
        except FileNotFoundError:
            return None
        return str(info.get("ETag") or info.get("etag"))


def read_local(path: str) -> bytes:
    """A whole local file by descriptor (open, fstat, read to the end, close): half the CPU of
    ``open().read()``, whose file objects cost ~20 us on a ~8 KB staging object."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        data = os.read(fd, os.fstat(fd).st_size + 1)
        if not data:
            return data
        parts = [data]
        while chunk := os.read(fd, 1 << 20):  # until the end, however the size changed
            parts.append(chunk)
        return data if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on a local lock file: released by the kernel if the holder dies,
    so a killed committer never leaves the store locked. Held only around check + rename."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _precondition_failed(exc: BaseException) -> bool:
    """HTTP 412 PreconditionFailed (or 409 ConditionalRequestConflict) anywhere in the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        resp = getattr(seen, "response", None)
        code = str(resp.get("Error", {}).get("Code", "")) if isinstance(resp, dict) else ""
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return True
        if "PreconditionFailed" in str(seen) or "pre-conditions you specified did not hold" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
