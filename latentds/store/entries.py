"""The latent cache: one namespace per fingerprint, one immutable object per sample.

Layout under ``<cache>/<namespace>/``::

    info.json               what produced this namespace (codec, preprocessing, format version)
    staging/<kk>/<key>.npz  one object per sample, written atomically, never rewritten

The namespace is a hash of everything that changes the latents (docs/design.md invariant 2), so a
new codec, new weights or new preprocessing can never serve stale latents. A sample key is a
hash of the source identity (relative path, size, mtime or ETag): a changed source is a miss.
Objects are ``.npz`` read with ``allow_pickle=False`` (docs/design.md invariant 7) and carry the sha256 of their
arrays, checked on every read so a corrupt latent raises instead of returning garbage.

This is the per-sample (lazy-fill) tier; packing into shards with a manifest builds on it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..canonical import canonical_json
from ..errors import CacheError, StoreAccessError
from . import layout
from .backend import Backend, read_local
from .fsio import Location, call
from .prefetch import fetch_ahead
from .npy import dtype_name, parse_npy  # no pickle; headers and dtype names made once
from .savez import canonical_metas, fast_parse, fast_parse_many, stored_members

__all__ = ["FORMAT_VERSION", "Entry", "Staged", "array_digest", "LatentCache", "canonical_json", "decode_entry",
    "canonical_metas", "decode_staged", "decode_staged_many", "encode_entry",
    "list_namespaces", "namespace_id", "sample_key", "sha256_hex"]

FORMAT_VERSION = 1
#: staging objects compaction reads before checking them together (~2 MB of small latents)
STAGED_BATCH = 256
#: ... and at most this many bytes of them (one object more when a single one is larger): with
#: a batch read ahead, memory stays ~2 batches whatever the sample size (256 objects of 8 MB
#: latents were 4 GB)
STAGED_BATCH_BYTES = 8 << 20
#: read the next batch on a thread while this one is checked (compaction on local disk)
READ_AHEAD = True


def sha256_hex(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def namespace_id(codec_fingerprint: str, preprocessing: dict[str, Any]) -> str:
    """The cache namespace: changes when the codec, its weights or the preprocessing change."""
    spec = {"codec": codec_fingerprint, "preprocessing": preprocessing, "format": FORMAT_VERSION}
    return sha256_hex(canonical_json(spec).encode())[:32]


def sample_key(identity: dict[str, Any]) -> str:
    """Key of one source sample: a hash, so no path (PHI risk) appears in object names."""
    return sha256_hex(canonical_json(identity).encode())[:40]


@dataclass(frozen=True)
class Entry:
    """One cached sample: posterior mean (and std when the codec has one) plus metadata."""

    mean: np.ndarray
    std: np.ndarray | None
    meta: dict[str, Any]


def array_digest(mean: np.ndarray, std: np.ndarray | None) -> str:
    """The sha256 an entry's metadata carries for its arrays (dtype, shape, mean and std bytes)."""
    h = hashlib.sha256(dtype_name(mean.dtype).encode())
    h.update(repr(mean.shape).encode())
    h.update(np.ascontiguousarray(mean).data)  # the same bytes as tobytes(), without the copy
    if std is not None:
        h.update(np.ascontiguousarray(std).data)
    return h.hexdigest()


_array_digest = array_digest  # the name importers used before it was public


def encode_entry(mean: np.ndarray, std: np.ndarray | None, meta: dict[str, Any]) -> bytes:
    meta = dict(meta, sha256=_array_digest(mean, std), shape=list(mean.shape), dtype=str(mean.dtype))
    arrays: dict[str, np.ndarray] = {
        "mean": np.ascontiguousarray(mean),
        "meta": np.frombuffer(canonical_json(meta).encode(), dtype=np.uint8),
    }
    if std is not None:
        arrays["std"] = np.ascontiguousarray(std)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@dataclass(frozen=True)
class Staged:
    """One staging object as stored, checked exactly as :func:`decode_entry` checks it: arrays
    are read-only views into the object's bytes, and the stored members are kept where they
    are byte for byte what a shard holds, so compaction copies them instead of writing them
    again (``meta_json``: set by callers that made the canonical text already)."""

    mean: np.ndarray
    std: np.ndarray | None
    meta: dict[str, Any]
    meta_json: bytes | None
    #: the stored ``.npy`` members when they are byte for byte what ``npy_bytes`` writes for the
    #: arrays (:func:`~latentds.store.savez.fast_parse` proves it from the header): packed as they are
    mean_npy: memoryview | None = None
    std_npy: memoryview | None = None
    #: the stored metadata JSON, parsed into ``meta``, not yet proven canonical (the shard
    #: writer proves a whole shard's at once: :func:`canonical_metas`)
    meta_raw: bytes | None = None


def decode_staged(data: bytes, name: str) -> Staged:
    """Parse and verify one cached object (zip CRC-32 of every member and the sha256 of its
    arrays, as :func:`decode_entry`) without copying its arrays; ``name`` names it in errors."""
    fast = fast_parse(data)
    if fast is not None:  # the layout latentds writes, checked the same way without an array parse
        mean, std, meta, mean_b, std_b, raw = fast
        return Staged(mean, std, meta, None, mean_b, std_b, raw)
    try:
        # np.load would re-parse every .npy header with ast.literal_eval (most of a compaction's
        # CPU); the members are the same .npy bytes, read with the cached parser
        members = stored_members(data)
        if members is None:  # not the plain layout np.savez writes: the general reader
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = {n: z.read(n) for n in z.namelist()}
        mean = parse_npy(members["mean.npy"], name)
        std = parse_npy(members["std.npy"], name) if "std.npy" in members else None
        raw_meta = parse_npy(members["meta.npy"], name).tobytes()
        meta = json.loads(raw_meta.decode())
    except Exception as exc:  # zipfile, ValueError, KeyError, JSON errors: all mean "corrupt"
        raise CacheError(f"{name}: corrupt cache object ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("sha256") != _array_digest(mean, std):
        if not isinstance(meta, dict):
            raise CacheError(f"{name}: corrupt cache object (metadata is not a JSON object)")
        raise CacheError(f"{name}: checksum mismatch, the cached latent is corrupt")
    return Staged(mean, std, meta, None, meta_raw=raw_meta)


def decode_staged_many(datas: list[bytes], names: list[str]) -> list[Staged | CacheError]:
    """:func:`decode_staged` of each object, a corrupt one as its :class:`CacheError` (the same
    results and messages), with the metadata of the objects in latentds' layout parsed together
    (:func:`~latentds.store.savez.fast_parse_many`)."""
    out: list[Staged | CacheError] = []
    for data, name, fast in zip(datas, names, fast_parse_many(datas)):
        if fast is not None:
            mean, std, meta, mean_b, std_b, raw = fast
            out.append(Staged(mean, std, meta, None, mean_b, std_b, raw))
            continue
        try:
            out.append(decode_staged(data, name))
        except CacheError as exc:
            out.append(exc)
    return out


def decode_entry(data: bytes, name: str) -> Entry:
    """Parse and verify one cached object; ``name`` is used in error messages. Arrays are
    writable copies, as from ``np.load``."""
    s = decode_staged(data, name)
    return Entry(s.mean.copy(), s.std.copy() if s.std is not None else None, s.meta)


class LatentCache:
    """The staging tier: per-sample latent objects under one namespace of a cache location.
    (Named for its history; "cache" elsewhere means the ``cache=`` URL as a whole.)"""

    def __init__(self, url: str, namespace: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.root = Location(url, dict(storage_options or {}))
        local = self.root.url[len("file://"):] if self.root.url.startswith("file://") else self.root.url
        if "://" not in local and os.path.isfile(local):  # from the URL alone: no filesystem made here
            raise CacheError(f"{url}: is a file, not a folder; a cache is a folder (created if missing) or an "
                             "fsspec URL such as s3://bucket/prefix")
        self.namespace = namespace
        self.location = self.root.child(namespace)
        self.backend = Backend(self.location.url, self.location.storage_options)

    def object_path(self, key: str) -> str:
        return self.backend.path(layout.staging(key))

    def write_info(self, info: dict[str, Any]) -> None:
        """Describe the namespace once; harmless to repeat (same content, atomic)."""
        if not self.backend.exists(layout.INFO):
            body = dict(info, namespace=self.namespace, format=FORMAT_VERSION)
            self._write(layout.INFO, json.dumps(body, indent=2, sort_keys=True).encode())

    def _write(self, rel: str, data: bytes) -> None:
        try:
            self.backend.put(rel, data)
        except FileNotFoundError as exc:  # on object stores: the bucket itself does not exist
            raise StoreAccessError(f"{self.backend.path(rel)}: cannot write, the bucket or directory does not exist "
                                   f"({type(exc).__name__}); create it or fix the cache URL") from None

    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.backend.get(layout.INFO))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise CacheError(f"{self.backend.path(layout.INFO)}: corrupt namespace description: {exc}") from exc

    def get(self, key: str) -> Entry | None:
        """The cached entry, ``None`` on a miss; raises :class:`CacheError` if it is corrupt."""
        rel = layout.staging(key)
        try:
            data = self.backend.get(rel)
        except FileNotFoundError:
            return None
        return decode_entry(data, self.backend.path(rel))

    def get_staged(self, key: str) -> Staged | None:
        """Like :meth:`get`, checked the same way, with the stored bytes kept for packing
        (:func:`decode_staged`): what compaction reads."""
        rel = layout.staging(key)
        try:
            data = self.backend.get(rel)
        except FileNotFoundError:
            return None
        return decode_staged(data, self.backend.path(rel))

    def staged_local(self, keys: list[str]) -> Iterator[tuple[str, Staged | CacheError | None]]:
        """:meth:`get_staged` of each key on local disk, in order, as (key, object) with a
        corrupt object as its :class:`CacheError` and a missing one as ``None``: compaction's
        read loop, one open + read per object. ``keys`` must be keys (as :meth:`keys` lists)."""
        root = self.backend.path(layout.STAGING)

        def read(batch_keys: list[str]) -> list[tuple[str, str, bytes | None]]:
            out: list[tuple[str, str, bytes | None]] = []
            for key in batch_keys:
                path = f"{root}/{key[:2]}/{key}.npz"  # = layout.staging(key), checked by the listing
                try:
                    data: bytes | None = read_local(path)
                except FileNotFoundError:
                    data = None
                except OSError:  # anything else: the store's own read, which raises it typed
                    try:
                        data = self.backend.get(layout.staging(key))
                    except FileNotFoundError:
                        data = None
                out.append((key, path, data))
            return out

        # the next batch is read on a thread while this one is checked: the reads are system
        # calls, which release the GIL (and the checks' sha256 releases it for the reader)
        def batches() -> Iterator[list[str]]:  # lazily, as fetch_ahead asks for the next batch
            batch: list[str] = []
            size = 0
            for key in keys:
                try:
                    n = os.stat(f"{root}/{key[:2]}/{key}.npz").st_size
                except OSError:
                    n = 0  # gone or unreadable: read() reports it
                if batch and (len(batch) >= STAGED_BATCH or size + n > STAGED_BATCH_BYTES):
                    yield batch
                    batch, size = [], 0
                batch.append(key)
                size += n
            if batch:
                yield batch

        for _, batch in fetch_ahead(read, batches(), 1 if READ_AHEAD else 0):
            present = [(p, d) for _, p, d in batch if d is not None]
            checked = iter(decode_staged_many([d for _, d in present], [p for p, _ in present]))  # type: ignore[misc]
            for key, _, data in batch:
                yield key, (next(checked) if data is not None else None)

    def put(self, key: str, mean: np.ndarray, std: np.ndarray | None, meta: dict[str, Any]) -> None:
        self._write(layout.staging(key), encode_entry(mean, std, meta))

    def delete(self, key: str) -> None:
        self.backend.delete(layout.staging(key))

    def keys(self) -> list[str]:
        """Committed staging objects (temp files of interrupted writers are never listed)."""
        if self.backend.caps.local:  # os.scandir: fsspec's find stats and wraps every file (~50 us)
            names = _local_names(self.backend.path(layout.STAGING))
            return sorted(k for k in map(layout.staging_key, names) if k)
        return sorted(k for k in (layout.staging_key(rel) for rel in self.backend.list(layout.STAGING, recursive=True))
                      if k)

    def stats(self) -> dict[str, Any]:
        """Counts and bytes for ``latentds inspect``."""
        files = self.backend.list(layout.STAGING, recursive=True)
        objs = {p: i for p, i in files.items() if layout.staging_key(p)}
        temps = [p for p in files if layout.is_temp(p)]
        return {
            "namespace": self.namespace,
            "samples": len(objs),
            "bytes": int(sum(int(i.get("size", 0)) for i in objs.values())),
            "temp_leftovers": len(temps),
        }


def _local_names(root: str) -> list[str]:
    """Names of the files under a local directory, at every depth (what a recursive listing
    gives; a missing directory has none)."""
    out: list[str] = []
    todo = [root]
    while todo:
        try:
            it = os.scandir(todo.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                else:
                    out.append(e.name)
    return out


def list_namespaces(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    root = Backend(url, storage_options)
    if not root.exists(""):
        raise CacheError(f"{root.path()}: no such cache location")
    fs, base = root.fs, root.path()
    out = []
    for p in call(lambda: fs.ls(base, detail=False), base, storage_options=root.storage_options):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if root.exists(f"{name}/{layout.INFO}"):
            out.append(name)
    return sorted(out)
