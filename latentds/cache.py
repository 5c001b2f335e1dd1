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
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CacheError, StoreAccessError
from .storage import Location, call, write_atomic

__all__ = ["FORMAT_VERSION", "Entry", "LatentCache", "canonical_json", "decode_entry", "encode_entry",
    "list_namespaces", "namespace_id", "sample_key", "sha256_hex"]

FORMAT_VERSION = 1


def sha256_hex(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


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


def _array_digest(mean: np.ndarray, std: np.ndarray | None) -> str:
    parts = [str(mean.dtype).encode(), repr(mean.shape).encode(), np.ascontiguousarray(mean).tobytes()]
    if std is not None:
        parts.append(np.ascontiguousarray(std).tobytes())
    return sha256_hex(*parts)


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


def decode_entry(data: bytes, name: str) -> Entry:
    """Parse and verify one cached object; ``name`` is used in error messages."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            mean = z["mean"]
            std = z["std"] if "std" in z.files else None
            meta = json.loads(z["meta"].tobytes().decode())
    except Exception as exc:  # zipfile, ValueError, KeyError, JSON errors: all mean "corrupt"
        raise CacheError(f"{name}: corrupt cache object ({type(exc).__name__}: {exc})") from exc
    if meta.get("sha256") != _array_digest(mean, std):
        raise CacheError(f"{name}: checksum mismatch, the cached latent is corrupt")
    return Entry(mean, std, meta)


class LatentCache:
    """Per-sample latent objects under one namespace of a cache location."""

    def __init__(self, url: str, namespace: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.root = Location(url, dict(storage_options or {}))
        self.namespace = namespace
        self.location = self.root.child(namespace)

    def object_path(self, key: str) -> str:
        return self.location.join("staging", key[:2], f"{key}.npz")

    def write_info(self, info: dict[str, Any]) -> None:
        """Describe the namespace once; harmless to repeat (same content, atomic)."""
        fs = self.location.fs
        path = self.location.join("info.json")
        so = self.location.storage_options
        if not call(lambda: fs.exists(path), path, storage_options=so):
            body = dict(info, namespace=self.namespace, format=FORMAT_VERSION)
            self._write(path, json.dumps(body, indent=2, sort_keys=True).encode())

    def _write(self, path: str, data: bytes) -> None:
        fs = self.location.fs
        try:
            call(lambda: write_atomic(fs, path, data), path, storage_options=self.location.storage_options)
        except FileNotFoundError as exc:  # on object stores: the bucket itself does not exist
            raise StoreAccessError(f"{path}: cannot write, the bucket or directory does not exist "
                                   f"({type(exc).__name__}); create it or fix the cache URL") from None

    def read_info(self) -> dict[str, Any]:
        path = self.location.join("info.json")
        try:
            return json.loads(self.location.fs.cat_file(path))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise CacheError(f"{path}: corrupt namespace description: {exc}") from exc

    def get(self, key: str) -> Entry | None:
        """The cached entry, ``None`` on a miss; raises :class:`CacheError` if it is corrupt."""
        path = self.object_path(key)
        fs = self.location.fs
        try:
            data = call(lambda: fs.cat_file(path), path, storage_options=self.location.storage_options)
        except FileNotFoundError:
            return None
        return decode_entry(data, path)

    def put(self, key: str, mean: np.ndarray, std: np.ndarray | None, meta: dict[str, Any]) -> None:
        self._write(self.object_path(key), encode_entry(mean, std, meta))

    def keys(self) -> list[str]:
        """Committed staging objects (temp files of interrupted writers are never listed)."""
        fs = self.location.fs
        base = self.location.join("staging")
        fs.invalidate_cache()  # other processes write here: never trust a cached listing
        try:
            found = call(lambda: fs.find(base), base, storage_options=self.location.storage_options)
        except FileNotFoundError:
            return []
        return sorted(p.rsplit("/", 1)[-1][: -len(".npz")] for p in found if p.endswith(".npz")
                      and not p.rsplit("/", 1)[-1].startswith(".tmp-"))

    def stats(self) -> dict[str, Any]:
        """Counts and bytes for ``latentds inspect``."""
        fs = self.location.fs
        base = self.location.join("staging")
        files = fs.find(base, detail=True) if fs.exists(base) else {}
        objs = {p: i for p, i in files.items() if p.endswith(".npz") and "/.tmp-" not in p}
        temps = [p for p in files if "/.tmp-" in p]
        return {
            "namespace": self.namespace,
            "samples": len(objs),
            "bytes": int(sum(int(i.get("size", 0)) for i in objs.values())),
            "temp_leftovers": len(temps),
        }


def list_namespaces(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    root = Location(url, dict(storage_options or {}))
    fs, so = root.fs, root.storage_options
    if not call(lambda: fs.exists(root.path), root.path, storage_options=so):
        raise CacheError(f"{root.path}: no such cache location")
    out = []
    for p in call(lambda: fs.ls(root.path, detail=False), root.path, storage_options=so):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        info = f"{p.rstrip('/')}/info.json"
        if call(lambda: fs.exists(info), info, storage_options=so):
            out.append(name)
    return sorted(out)
