"""Store checks behind the CLI: verify, verify_sources, inspect statistics, for one namespace.

Every problem is reported by the name of the object at fault (shard, manifest, staging object);
nothing here prints credentials, signed URLs or source paths. ``gc`` and ``repair`` live in
:mod:`latentds.store.collect` and :mod:`latentds.store.repairs` (both from ``latentds.store``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CacheError, LatentdsError, ManifestError
from ..identity import content_matches
from . import layout
from .entries import LatentCache
from .fsio import RETRY_STATS
from .layout import INDEX_SUFFIX, POINTER, SHARD_SUFFIX
from .records import partition_problem, records
from .sharded import ShardedStore
from .shards import TAR_HEADER, check_member, crc32c, decode_sample

__all__ = ["SourceReport", "VerifyReport", "describe", "verify", "verify_sources"]


@dataclass
class VerifyReport:
    samples: int = 0          # manifest rows whose bytes were checked
    shards: int = 0
    staging: int = 0          # staging objects checked
    partitions: int = 0       # bulk partition records (bulk/<id>.json) checked
    bad: list[tuple[str, str]] = field(default_factory=list)  # (object name, what is wrong)
    # failure records (failures/<hash>.json) of bulk jobs: (object name, error type, reason); not damage
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    #: committed rows whose bytes fail a check, by sample key: (shard, what is wrong). What
    #: :func:`repair` drops; a shard-level problem that every row survives (an index that no
    #: longer matches, a missing index) puts no row here, since reads never use the index.
    bad_rows: dict[str, tuple[str, str]] = field(default_factory=dict)
    generation: str | None = None  # the manifest generation checked
    #: committed shards whose whole bytes fail a check that no single row shows (bytes differ
    #: from the index, index missing or corrupt): what :func:`repair` re-packs. {shard: why}
    bad_shards: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(store: ShardedStore, *, staging: bool = True) -> VerifyReport:
    """Recompute every checksum: each committed shard (whole-shard sha256 from its index, and each
    sample's range), the manifest itself, and every staging object."""
    rep = VerifyReport()
    be = store.backend
    m = None
    manifest_ok = True
    try:
        m = store.manifests.load()
    except ManifestError as exc:
        manifest_ok = False
        rep.bad.append((_name_of(str(exc), store.manifests.pointer_path), str(exc)))
    if m is not None:
        rep.generation = m.generation
        by_shard: dict[str, list[int]] = {}
        shard_col = m.table.column("shard").to_pylist()
        for i, s in enumerate(shard_col):
            by_shard.setdefault(s, []).append(i)
        keys = m.table.column("key").to_pylist()
        for shard, rows in sorted(by_shard.items()):
            rep.shards += 1
            path = store.shard_path(shard)
            try:
                data = be.get(layout.shard(shard))
            except FileNotFoundError:
                rep.bad.append((path, f"{path}: shard named by manifest {m.generation} is missing"))
                for r in rows:
                    rep.samples += 1
                    rep.bad_rows[keys[r]] = (shard, f"{path}: shard is missing")
                continue
            idx_path = store.shard_path(shard[: -len(SHARD_SUFFIX)] + INDEX_SUFFIX)
            try:
                idx = json.loads(be.get(layout.shard(layout.index_of(shard))))
                if idx.get("sha256") != hashlib.sha256(data).hexdigest() or idx.get("bytes") != len(data):
                    rep.bad.append((path, f"{path}: shard bytes differ from its index ({len(data)} bytes, "
                                          f"index says {idx.get('bytes')}); truncated or corrupt"))
            except FileNotFoundError:
                rep.bad.append((idx_path, f"{idx_path}: shard index is missing"))
            except (ValueError, AttributeError) as exc:
                rep.bad.append((idx_path, f"{idx_path}: corrupt shard index ({exc})"))
            if rep.bad and rep.bad[-1][0] in (path, idx_path):
                rep.bad_shards[shard] = rep.bad[-1][1]
            for r in rows:
                rep.samples += 1
                why = _row_problem(m, r, keys[r], path, data)
                if why is not None:
                    rep.bad.append((path, why))
                    rep.bad_rows[keys[r]] = (shard, why)
    committed = (m.keys() if m is not None else set()) if manifest_ok else None
    _checkrecords(rep, store, m, committed)
    if staging:
        for key in store.cache.keys():
            rep.staging += 1
            try:
                store.cache.get(key)
            except CacheError as exc:
                rep.bad.append((store.cache.object_path(key), str(exc)))
    return rep


def _row_problem(m: Any, r: int, key: str, path: str, data: bytes) -> str | None:
    """What is wrong with manifest row ``r`` (sample ``key``) in its shard's bytes ``data``, or None."""
    _, off, length, mlen, soff, sha, _ = m.locate(r)
    name = f"{path} (sample {key})"
    if off < TAR_HEADER or length < 0:  # a slice would silently count from the end
        return f"{name}: manifest row has offset {off}, length {length}; corrupt"
    try:  # the bytes at the offset are this row's own member (rows swapped: checksums agree)
        check_member(data[off - TAR_HEADER:off], key, ".npy", name)
    except LatentdsError as exc:
        return str(exc)
    buf = data[off:off + length]
    if len(buf) != length:
        return f"{name}: shard is truncated"
    try:
        decode_sample(buf, mean_length=mlen, std_offset=soff, sha256=sha, name=name)
    except LatentdsError as exc:
        return str(exc)
    crc = m.crc32c_at(r)  # what reads check; -1 in generations written before it
    if crc >= 0 and crc32c(buf) != crc:
        return (f"{name}: crc32c in manifest {m.generation} does not match the bytes "
                f"(sha256 does); reads of this sample fail")
    return None


def _checkrecords(rep: VerifyReport, store: ShardedStore, m: Any, committed: set[str] | None) -> None:
    """Bulk partition records and failure records (see :func:`_partition_problem`)."""
    shards = set(m.shards) if m is not None else set()
    for path, rec in records(store, "bulk"):
        rep.partitions += 1
        why = partition_problem(store, path, rec, committed, shards)
        if why is not None:
            rep.bad.append((path, f"{path}: {why}"))
    for path, rec in records(store, "failures"):
        stem = path.rsplit("/", 1)[-1][: -len(".json")]
        if not isinstance(rec, dict) or rec.get("relpath_hash") != stem or "error_type" not in rec:
            rep.bad.append((path, f"{path}: corrupt failure record (unreadable, or not this file's record); "
                                  "a bulk job cannot see it, `latentds gc` removes it"))
            continue
        rep.failures.append((path, str(rec.get("error_type")), str(rec.get("reason"))))


@dataclass
class SourceReport:
    """:func:`verify_sources`: cached samples whose source changed while keeping size and mtime."""

    checked: int = 0
    stale: list[tuple[str, str]] = field(default_factory=list)  # (source path, what is wrong)
    not_cached: int = 0

    @property
    def ok(self) -> bool:
        return not self.stale


def verify_sources(ds: Any) -> SourceReport:
    """Compare the content sha256 stored at encode time with each source file's bytes now.

    The key is (tree, relative path, size, mtime or ETag): a file rewritten with the same size and
    an mtime restored (``rsync -t``, ``tar x``, ``touch -r``) keeps its key, and its old latent is
    served. This reads every source once and lists such samples by path (for the user: nothing is
    stored). Fix: ``touch`` the file (a new mtime makes it a miss) or delete and re-fill the cache."""
    rep = SourceReport()
    store = ds.store
    m = store.refresh()
    content = m.column("content_sha256") if m is not None else None
    for i in range(len(ds)):
        path = ds.samples[i][0]
        key = ds.key(i)
        row = m.find(key) if m is not None else -1
        if row >= 0:
            stored = str(content[row].as_py())
        else:
            e = store.cache.get(key)
            stored = str(e.meta.get("content_sha256") or "") if e is not None else None
        if stored is None:
            rep.not_cached += 1
            continue
        rep.checked += 1
        _, digest = ds._read_source(i)
        if not stored:
            rep.stale.append((path, f"{path}: no content hash was stored for sample {key}; cannot verify"))
        else:
            same = content_matches(stored, digest, getattr(ds, "identity_key", None))
            if same is None:  # a keyed content id written under another identity key (or none now)
                rep.stale.append((path, f"{path}: sample {key} was written with another identity key (or one is "
                                        f"needed now: LATENTDS_IDENTITY_KEY); cannot verify its content"))
            elif not same:
                rep.stale.append((path, f"{path}: content differs from what sample {key} was encoded from (same "
                                        f"size and mtime): its cached latent is stale; `touch` the file or re-encode it"))
    return rep


def _name_of(message: str, default: str) -> str:
    head = message.split(": ", 1)[0]
    return head if "/" in head else default


def describe(store: ShardedStore) -> dict[str, Any]:
    """Counts, bytes, failures and latent statistics for ``latentds inspect``."""
    be = store.backend
    cache: LatentCache = store.cache
    out: dict[str, Any] = {"staging": cache.stats()}
    files = be.list(layout.SHARDS)
    tars = {p: i for p, i in files.items() if p.endswith(SHARD_SUFFIX) and not layout.is_temp(p)}
    out["shard_files"] = len(tars)
    out["shard_bytes"] = int(sum(int(i.get("size") or 0) for i in tars.values()))
    try:
        ptr = store.manifests.read_pointer()
        m = store.manifests.load(ptr)
        out["manifest"] = None if m is None else {
            "generation": m.generation, "rows": len(m), "shards": len(m.shards), "bytes": ptr["bytes"] if ptr else 0,
            "stats": m.stats}
    except ManifestError as exc:
        out["manifest"] = {"error": str(exc)}
    fails = be.list(layout.FAILURES, recursive=True)
    out["failures"] = len([f for f in fails if f.endswith(".json") and not layout.is_temp(f)])
    parts = be.list(layout.BULK)
    out["bulk_partitions"] = len([p for p in parts if p.endswith(".json") and not layout.is_temp(p)])
    out["retries"] = dict(RETRY_STATS)
    out["pointer"] = f"manifest/{POINTER}"
    return out
