"""Which source a sample is, and its bytes: the tree's identity, the relative path, the identity
that keys the cache, and one read of the file.

``LatentDataset`` (per sample, lazily) and bulk listing (:mod:`latentds.sources`, all at once)
both call these functions, so a cache filled by one is read by the other without encoding.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import stat
from typing import Any

from .. import discovery
from ..identity import Identities
from ..store.entries import sample_key
from ..store.fsio import Location, call

__all__ = ["etag", "identity", "legacy_key", "read_bytes", "read_local", "relative_path", "relpath_hash",
           "root_identity", "sample_key", "stamp", "stored_identity"]

#: what an object store's ``info()`` may call its version tag, in order of preference
_TAG_FIELDS = ("ETag", "etag", "mtime", "LastModified", "created")


def root_identity(root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> str:
    """Which tree a relative path is relative to: part of every sample key.

    Without it ``train/benign/x.dcm`` and ``val/benign/x.dcm`` (relative path ``benign/x.dcm``
    in both) with equal size and mtime, as after unpacking an archive of fixed-size DICOMs, would
    share one cache entry and val would be served train's latents (issue 11, item 1). Local
    roots: the resolved absolute path (``realpath``, so a symlinked or relative spelling of the
    same folder gives the same key); object stores: ``protocol://bucket/prefix``. Moving or
    renaming the tree therefore makes every sample a miss; pass ``source_id=`` (the same string
    wherever the tree is mounted) to key a tree by a name of your choosing instead."""
    s = os.fspath(root)
    if not discovery.is_remote(s):
        return os.path.realpath(discovery._local(s))
    loc = Location(s, dict(storage_options or {}))
    return f"{s.split('://', 1)[0]}://{loc.fs._strip_protocol(s).rstrip('/')}"


def relative_path(url: str, root: str, loc: Location | None = None) -> str:
    """``url`` relative to ``root``, with ``/`` separators. ``loc``: the root's location
    (needed for remote roots, whose paths are compared without their protocol)."""
    if discovery.is_remote(root):
        if loc is None:
            loc = Location(root, {})
        rel = loc.fs._strip_protocol(url)[len(loc.path):]
    else:
        rel = os.path.relpath(os.path.abspath(discovery._local(url)), os.path.abspath(discovery._local(root)))
    return rel.replace(os.sep, "/").lstrip("/")


def etag(info: dict[str, Any]) -> str:
    """The version tag of an object from its ``fs.info()`` or a listing's entry (see :func:`stamp`)."""
    tag = next((info[k] for k in _TAG_FIELDS if info.get(k)), None)
    if isinstance(tag, _dt.datetime) and tag.tzinfo is not None:
        # a time as the tag (a store without ETags): the same instant in the same spelling
        # whichever answer it came from (s3fs gives a listing's times in local time, HEAD's in
        # UTC); on a machine set to UTC this is the string keys were made of before
        tag = tag.astimezone(_dt.timezone.utc)
    return str(tag)


def stamp(info: dict[str, Any]) -> dict[str, Any]:
    """The identity fields of an object store source (``etag``, ``size``) from either shape of
    info a filesystem gives: an entry of a listing (``find``/``ls`` with details; bulk listing)
    or the answer to a HEAD (``info``; ``LatentDataset``, one file at a time). Both give the same
    fields, so a key never depends on which one a process happened to have (with fsspec's
    listings cache off, ``info`` is always a HEAD). The values are those keys were always made
    of (the ETag as the store spells it, quotes included): caches written before keep their keys."""
    size = next((info[k] for k in ("size", "Size", "ContentLength") if info.get(k) is not None), 0)
    return {"etag": etag(info), "size": int(size)}


def identity(url: str, rel: str, root_id: str, *, loc: Location | None = None, info: dict[str, Any] | None = None,
             missing_ok: bool = False) -> dict[str, Any]:
    """What decides a hit: the tree (``root``), relative path, size, and ``mtime_ns`` (local) or
    ``etag`` (object stores, one HEAD unless ``info`` from a listing is given).

    ``missing_ok``: a local file that cannot be stat'ed (a broken symlink, removed since listing)
    gets an identity no real file has instead of raising, so a bulk job lists it and its read
    fails later as that one file's failure."""
    if not discovery.is_remote(url):
        try:
            st = os.stat(discovery._local(url))
        except OSError:
            if not missing_ok:
                raise
            return {"mtime_ns": -1, "path": rel, "root": root_id, "size": -1}
        return {"mtime_ns": st.st_mtime_ns, "path": rel, "root": root_id, "size": st.st_size}
    if info is None or all(info.get(k) is None for k in ("size", "Size", "ContentLength")):
        if loc is None:
            raise ValueError(f"{url}: a remote source's identity needs its Location or its info()")
        fs = loc.fs
        info = call(lambda: fs.info(url), url, storage_options=loc.storage_options)
    st = stamp(info)
    return {"etag": st["etag"], "path": rel, "root": root_id, "size": st["size"]}


def legacy_key(ident: dict[str, Any]) -> str:
    """The key a sample had before the source root entered the key (caches written before
    issue 11). Readers look it up only on a miss and accept it only when the stored content
    hash equals the source's, so an old cache is still read without encoding and a colliding
    old entry is never served."""
    return sample_key({k: v for k, v in ident.items() if k != "root"})


def relpath_hash(rel: str) -> str:
    """The name failure records of ``rel`` had before names were keyed (issue 11, item 7): only
    looked up, to find and replace such a record; never written any more."""
    return hashlib.sha256(rel.encode()).hexdigest()[:16]


def stored_identity(ids: Identities, root_id: str, rel: str, digest: str) -> dict[str, Any]:
    """What an entry's metadata may say about its source file (issue 11, item 7): a content
    identity keyed under the identity key, or ``""`` without one (then a reader cannot test a
    file's membership); a keyed path id only with a key. Never a bare hash of path or bytes."""
    out: dict[str, Any] = {"content_sha256": ids.content_id(digest)}
    path_id = ids.path_id(root_id, rel)
    if path_id is not None:
        out["path_id"] = path_id
    return out


def read_local(path: str) -> bytes:
    """The bytes of a local source file; anything but a regular file is that file's error.

    Opened non-blocking first and checked with ``fstat`` (no race with a swap after a ``stat``):
    a FIFO named ``x.dcm`` would otherwise block ``open`` or ``read`` forever and hang a whole
    ``fill()`` or bulk job (issue 11, item 8); a device would stream without end."""
    from ..errors import ImageReadError

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device")
            raise ImageReadError(f"{path}: not a regular file ({kind}); only regular files are read. "
                                 f"Remove it from the source tree or exclude it with is_valid_file")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        return fh.read()


def read_bytes(url: str, storage_options: dict[str, Any] | None = None, loc: Location | None = None
               ) -> tuple[bytes, str]:
    """The whole source file (one GET on object stores, with the store's retries) and its sha256."""
    if discovery.is_remote(url):
        loc = loc if loc is not None else Location(url, dict(storage_options or {}))
        fs = loc.fs
        path = fs._strip_protocol(url)
        # cat_file: one request, and none of the buffered-file quirks of some stores
        data = call(lambda: fs.cat_file(path), path, storage_options=loc.storage_options)
    else:
        data = read_local(discovery._local(url))  # a FIFO/device is this file's error, not a hang
    return data, hashlib.sha256(data).hexdigest()
