"""Store operations behind the CLI: verify, gc, inspect statistics, for one namespace.

Every problem is reported by the name of the object at fault (shard, manifest, staging object);
nothing here prints credentials, signed URLs or source paths.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from .cache import LatentCache
from .errors import CacheError, LatentdsError, ManifestError
from .manifest import POINTER
from .shards import INDEX_SUFFIX, SHARD_PREFIX, SHARD_SUFFIX, decode_sample
from .storage import RETRY_STATS, call
from .store import ShardedStore


@dataclass
class VerifyReport:
    samples: int = 0          # manifest rows whose bytes were checked
    shards: int = 0
    staging: int = 0          # staging objects checked
    bad: list[tuple[str, str]] = field(default_factory=list)  # (object name, what is wrong)

    @property
    def ok(self) -> bool:
        return not self.bad


def verify(store: ShardedStore, *, staging: bool = True) -> VerifyReport:
    """Recompute every checksum: each committed shard (whole-shard sha256 from its index, and each
    sample's range), the manifest itself, and every staging object."""
    rep = VerifyReport()
    loc = store.location
    fs, so = loc.fs, loc.storage_options
    fs.invalidate_cache()
    m = None
    try:
        m = store.manifests.load()
    except ManifestError as exc:
        rep.bad.append((_name_of(str(exc), store.manifests.pointer_path), str(exc)))
    if m is not None:
        by_shard: dict[str, list[int]] = {}
        shard_col = m.table.column("shard").to_pylist()
        for i, s in enumerate(shard_col):
            by_shard.setdefault(s, []).append(i)
        keys = m.table.column("key").to_pylist()
        for shard, rows in sorted(by_shard.items()):
            rep.shards += 1
            path = store.shard_path(shard)
            try:
                data = call(lambda: fs.cat_file(path), path, storage_options=so)
            except FileNotFoundError:
                rep.bad.append((path, f"{path}: shard named by manifest {m.generation} is missing"))
                continue
            idx_path = store.shard_path(shard[: -len(SHARD_SUFFIX)] + INDEX_SUFFIX)
            try:
                idx = json.loads(call(lambda: fs.cat_file(idx_path), idx_path, storage_options=so))
                if idx.get("sha256") != hashlib.sha256(data).hexdigest() or idx.get("bytes") != len(data):
                    rep.bad.append((path, f"{path}: shard bytes differ from its index ({len(data)} bytes, "
                                          f"index says {idx.get('bytes')}); truncated or corrupt"))
            except FileNotFoundError:
                rep.bad.append((idx_path, f"{idx_path}: shard index is missing"))
            except ValueError as exc:
                rep.bad.append((idx_path, f"{idx_path}: corrupt shard index ({exc})"))
            for r in rows:
                rep.samples += 1
                _, off, length, mlen, soff, sha, _ = m.locate(r)
                name = f"{path} (sample {keys[r]})"
                buf = data[off:off + length]
                if len(buf) != length:
                    rep.bad.append((path, f"{name}: shard is truncated"))
                    continue
                try:
                    decode_sample(buf, mean_length=mlen, std_offset=soff, sha256=sha, name=name)
                except LatentdsError as exc:
                    rep.bad.append((path, str(exc)))
    if staging:
        for key in store.cache.keys():
            rep.staging += 1
            try:
                store.cache.get(key)
            except CacheError as exc:
                rep.bad.append((store.cache.object_path(key), str(exc)))
    return rep


def _name_of(message: str, default: str) -> str:
    head = message.split(": ", 1)[0]
    return head if "/" in head else default


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    kept_young: int = 0
    bytes_freed: int = 0


def _age_s(info: dict[str, Any], now: float) -> float:
    for k in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, _dt.datetime):
            return now - v.timestamp()
        try:
            return now - float(v)
        except (TypeError, ValueError):
            continue
    return 0.0  # unknown age counts as young: never delete what we cannot date


def gc(store: ShardedStore, *, grace_s: float = 3600.0, dry_run: bool = False) -> GcReport:
    """Remove, once older than ``grace_s``: temp files of interrupted writers, shards (and their
    indexes) no committed manifest names, superseded manifest generations, and staging objects
    whose sample is committed in a shard. The grace period protects writers and readers still
    working from an older view. Refuses to run on a corrupt manifest (it could not tell what is
    referenced)."""
    rep = GcReport()
    loc = store.location
    fs, so = loc.fs, loc.storage_options
    fs.invalidate_cache()
    ptr = store.manifests.read_pointer()
    m = store.manifests.load(ptr)  # raises ManifestError naming the file: nothing is deleted then
    shards = set(m.shards) if m is not None else set()
    committed = m.keys() if m is not None else set()
    current = f"{ptr['generation']}.parquet" if ptr else None
    now = time.time()
    try:
        files = call(lambda: fs.find(loc.path, detail=True), loc.path, storage_options=so)
    except FileNotFoundError:
        return rep
    for path, info in sorted(files.items()):
        rel = path[len(loc.path.rstrip("/")) + 1:]
        base = rel.rsplit("/", 1)[-1]
        top = rel.split("/", 1)[0]
        doomed = False
        if base.startswith(".tmp-"):
            doomed = True
        elif top == "shards" and base.startswith(SHARD_PREFIX):
            shard = base[: -len(INDEX_SUFFIX)] + SHARD_SUFFIX if base.endswith(INDEX_SUFFIX) else base
            doomed = shard not in shards
        elif top == "manifest" and base.endswith(".parquet"):
            doomed = base != current
        elif top == "staging" and base.endswith(".npz"):
            doomed = base[: -len(".npz")] in committed
        if not doomed:
            continue
        if _age_s(info, now) < grace_s:
            rep.kept_young += 1
            continue
        if not dry_run:
            try:
                call(lambda: fs.rm_file(path), path, storage_options=so)
            except FileNotFoundError:
                continue
        rep.removed.append(path)
        rep.bytes_freed += int(info.get("size") or 0)
    return rep


def describe(store: ShardedStore) -> dict[str, Any]:
    """Counts, bytes, failures and latent statistics for ``latentds inspect``."""
    loc = store.location
    fs, so = loc.fs, loc.storage_options
    cache: LatentCache = store.cache
    out: dict[str, Any] = {"staging": cache.stats()}
    try:
        files = call(lambda: fs.find(loc.join("shards"), detail=True), loc.path, storage_options=so)
    except FileNotFoundError:
        files = {}
    tars = {p: i for p, i in files.items() if p.endswith(SHARD_SUFFIX) and "/.tmp-" not in p}
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
    try:
        fails = call(lambda: fs.find(loc.join("failures")), loc.path, storage_options=so)
    except FileNotFoundError:
        fails = []
    out["failures"] = len([f for f in fails if f.endswith(".json") and "/.tmp-" not in f])
    out["retries"] = dict(RETRY_STATS)
    out["pointer"] = f"manifest/{POINTER}"
    return out
