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

from .cache import Entry, LatentCache
from .errors import CacheError, LatentdsError, ManifestError
from .manifest import POINTER
from .shards import (INDEX_SUFFIX, SHARD_NAME, SHARD_PREFIX, SHARD_SUFFIX, TAR_HEADER, build_shard, check_member,
                     crc32c, decode_sample, index_document, shard_name)
from .storage import RETRY_STATS, call, write_atomic
from .store import ShardedStore, channel_sums

__all__ = ["MIN_GRACE_S", "GcReport", "RepairReport", "SourceReport", "VerifyReport", "describe", "gc",
    "min_grace_s", "repair", "verify", "verify_sources"]


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
    loc = store.location
    fs, so = loc.fs, loc.storage_options
    fs.invalidate_cache()
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
                data = call(lambda: fs.cat_file(path), path, storage_options=so)
            except FileNotFoundError:
                rep.bad.append((path, f"{path}: shard named by manifest {m.generation} is missing"))
                for r in rows:
                    rep.samples += 1
                    rep.bad_rows[keys[r]] = (shard, f"{path}: shard is missing")
                continue
            idx_path = store.shard_path(shard[: -len(SHARD_SUFFIX)] + INDEX_SUFFIX)
            try:
                idx = json.loads(call(lambda: fs.cat_file(idx_path), idx_path, storage_options=so))
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
    _check_records(rep, store, m, committed)
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


def _check_records(rep: VerifyReport, store: ShardedStore, m: Any, committed: set[str] | None) -> None:
    """Bulk partition records and failure records (see :func:`_partition_problem`)."""
    shards = set(m.shards) if m is not None else set()
    for path, rec in _records(store, "bulk"):
        rep.partitions += 1
        why = _partition_problem(store, path, rec, committed, shards)
        if why is not None:
            rep.bad.append((path, f"{path}: {why}"))
    for path, rec in _records(store, "failures"):
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
        elif digest != stored:
            rep.stale.append((path, f"{path}: content differs from what sample {key} was encoded from (same size "
                                    f"and mtime): its cached latent is stale; `touch` the file or re-encode it"))
    return rep


_CORRUPT = object()


def _records(store: ShardedStore, sub: str) -> list[tuple[str, Any]]:
    """``(path, parsed JSON or _CORRUPT)`` of each record under ``<ns>/<sub>/`` (bulk partition
    records, failure records), temp files of interrupted writers left out."""
    loc = store.location
    fs, so = loc.fs, loc.storage_options
    base = loc.join(sub)
    try:
        found = call(lambda: fs.ls(base, detail=False), base, storage_options=so)
    except FileNotFoundError:
        return []
    out: list[tuple[str, Any]] = []
    for p in sorted(found):
        name = p.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name.startswith(".tmp-"):
            continue
        try:
            out.append((p, json.loads(call(lambda: fs.cat_file(p), p, storage_options=so))))
        except FileNotFoundError:
            continue  # removed meanwhile (a retry that succeeded, gc)
        except ValueError:
            out.append((p, _CORRUPT))
    return out


def _partition_problem(store: ShardedStore, path: str, rec: Any, committed: set[str] | None, shards: set[str]
                       ) -> str | None:
    """Why the bulk partition record at ``path`` does not stand for committed work, or None.

    A record tells a bulk job that its partition is done, so a re-run skips it. It is sound while
    every sample it encoded is in the committed manifest: records written by this version list those
    keys. Older records (no ``keys``) are judged by their shard: named by the manifest, or its index
    lists only committed keys (the manifest kept earlier rows of the same samples).
    ``committed=None`` (the manifest itself is unreadable): only the record's own form is checked."""
    stem = path.rsplit("/", 1)[-1][: -len(".json")]
    if rec is _CORRUPT or not isinstance(rec, dict) or rec.get("partition") != stem:
        return ("corrupt partition record (unreadable, or not this partition's record); a re-run would skip "
                "the partition; `latentds gc` removes it")
    if committed is None:
        return None
    keys = rec.get("keys")
    if isinstance(keys, list):
        missing = [k for k in keys if k not in committed]
        if missing:
            return (f"partition record lists {len(missing)} of {len(keys)} samples that the committed manifest "
                    f"does not hold (e.g. {missing[0]}); a re-run would skip them; `latentds gc` removes the "
                    f"record, then re-run the job")
        return None
    shard = rec.get("shard")
    if not shard or shard in shards:
        return None
    if not isinstance(shard, str) or not SHARD_NAME.fullmatch(shard):  # never made into a path
        return (f"partition record names {str(shard)[:80]!r}, which is not a shard name (corrupt or crafted); "
                f"a re-run would skip the partition; `latentds gc` removes the record, then re-run the job")
    loc = store.location
    idx_path = store.shard_path(str(shard)[: -len(SHARD_SUFFIX)] + INDEX_SUFFIX)
    try:
        idx = json.loads(call(lambda: loc.fs.cat_file(idx_path), idx_path, storage_options=loc.storage_options))
        keys = [r["key"] for r in idx.get("samples", [])]
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        keys = None
    if keys and all(k in committed for k in keys):
        return None
    return (f"partition record names shard {shard}, which the committed manifest does not name; a re-run "
            f"would skip the partition; `latentds gc` removes the record, then re-run the job")


def _name_of(message: str, default: str) -> str:
    head = message.split(": ", 1)[0]
    return head if "/" in head else default


#: The least grace gc gives what may be work in flight: temp files of live writers, shards not
#: named by the manifest yet (a compaction or bulk job commits them after writing them all),
#: superseded manifest generations (a reader may be loading one). With grace 0, gc running beside
#: a compaction deleted the generation the pointer had just moved to and the shards it named
#: (issue 11, item 5). Raise the grace above the longest compaction / bulk partition you run.
#: ``LATENTDS_GC_MIN_GRACE_S`` lowers it (tests on a quiet store only; at your own risk).
MIN_GRACE_S = 300.0


def min_grace_s() -> float:
    import os

    env = os.environ.get("LATENTDS_GC_MIN_GRACE_S")
    return float(env) if env else MIN_GRACE_S


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    kept_young: int = 0
    bytes_freed: int = 0
    #: the grace applied to temp files, uncommitted shards and superseded generations
    #: (``max(grace_s, MIN_GRACE_S)``): say so when it is more than was asked for
    in_flight_grace_s: float = 0.0
    #: objects that became referenced (or younger) between the listing and their deletion
    rescued: int = 0
    #: staging objects kept because the committed copy of their sample fails its checks: they
    #: are the last good copy (`latentds repair` drops the bad row; the next compaction packs them)
    kept_last_copy: list[str] = field(default_factory=list)


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


class _View:
    """What is committed, re-read whenever the pointer moves (see :func:`gc`)."""

    def __init__(self, store: ShardedStore) -> None:
        self.store = store
        self.generation: str | None = None
        self.shards: set[str] = set()
        self.committed: set[str] = set()
        self.ptr: dict[str, Any] | None = None
        self.manifest: Any = None
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        ptr = self.store.manifests.read_pointer()
        gen = ptr["generation"] if ptr else None
        if force or gen != self.generation:
            m = self.store.manifests.load(ptr)  # raises ManifestError naming the file: nothing deleted
            self.ptr, self.generation, self.manifest = ptr, gen, m
            self.shards = set(m.shards) if m is not None else set()
            self.committed = m.keys() if m is not None else set()


def gc(store: ShardedStore, *, grace_s: float = 3600.0, dry_run: bool = False) -> GcReport:
    """Remove, once older than ``grace_s``: temp files of interrupted writers, shards (and their
    indexes) no committed manifest names, superseded manifest generations, staging objects
    whose sample is committed in a shard, bulk partition records that stand for no committed
    work (their samples are not in the manifest, or the record is unreadable: a re-run would skip
    them) and unreadable failure records. Sound partition records (a bulk re-run needs them to
    skip committed partitions) and failure records (``--retry-failed``, the exit code) are kept.

    Safe beside running compactions, bulk jobs and readers: temp files, unnamed shards and
    superseded generations get at least :data:`MIN_GRACE_S` whatever ``grace_s`` says (they may
    be work in flight); a generation at or after the committed one is never removed (a commit
    may be replacing the pointer); and right before each deletion the pointer is read again (the
    manifest reloaded if it moved) and the object's membership and age are checked again, so
    what a commit made since the listing named, or a writer rewrote, is kept. Refuses to run on
    a corrupt manifest (it could not tell what is referenced)."""
    rep = GcReport()
    loc = store.location
    fs, so = loc.fs, loc.storage_options
    fs.invalidate_cache()
    view = _View(store)
    in_flight_grace = max(float(grace_s), min_grace_s())
    rep.in_flight_grace_s = in_flight_grace
    # bulk partition records that stand for no committed work (see _partition_problem) and failure
    # records nobody can read: a re-run needs the sound ones (resume, --retry-failed, exit code)
    stale: set[str] = set()
    for path, rec in _records(store, "bulk"):
        if _partition_problem(store, path, rec, view.committed, view.shards) is not None:
            stale.add(path)
    for path, rec in _records(store, "failures"):
        stem = path.rsplit("/", 1)[-1][: -len(".json")]
        if not isinstance(rec, dict) or rec.get("relpath_hash") != stem or "error_type" not in rec:
            stale.add(path)

    def doomed(rel: str, path: str) -> tuple[float, bool] | None:
        """(grace this object needs before it may go, whether it may be work in flight), or None
        if it must stay."""
        base = rel.rsplit("/", 1)[-1]
        top = rel.split("/", 1)[0]
        if base.startswith(".tmp-"):
            return in_flight_grace, True
        if top == "shards" and base.startswith(SHARD_PREFIX):
            shard = base[: -len(INDEX_SUFFIX)] + SHARD_SUFFIX if base.endswith(INDEX_SUFFIX) else base
            return None if shard in view.shards else (in_flight_grace, True)
        if top == "manifest" and base.endswith(".parquet"):
            gen = base[: -len(".parquet")]
            # the committed one, and any newer one (a commit in progress), always stay
            return None if view.generation is None or gen >= view.generation else (in_flight_grace, True)
        if top == "staging" and base.endswith(".npz"):
            return (float(grace_s), False) if base[: -len(".npz")] in view.committed else None
        if top in ("bulk", "failures"):
            return (float(grace_s), False) if path in stale else None
        return None

    now = time.time()
    try:
        files = call(lambda: fs.find(loc.path, detail=True), loc.path, storage_options=so)
    except FileNotFoundError:
        return rep
    prefix = loc.path.rstrip("/") + "/"
    for path, info in sorted(files.items()):
        rel = path[len(prefix):]
        verdict = doomed(rel, path)
        if verdict is None:
            continue
        need, in_flight = verdict
        if _age_s(info, now) < need:
            rep.kept_young += 1
            continue
        fresh = info
        if in_flight:
            # right before deleting what may be work in flight: the pointer again (a compaction
            # may have committed since the listing) and the object's own age again (a writer may
            # have rewritten it). Staging objects and records need no re-check: the committed set
            # only grows, so the listing-time view can only keep more of them, never fewer.
            view.refresh()
            if doomed(rel, path) is None:
                rep.rescued += 1
                continue
            try:
                fs.invalidate_cache(path)
                fresh = call(lambda: fs.info(path), path, storage_options=so)
            except FileNotFoundError:
                continue
            if _age_s(fresh, time.time()) < need:
                rep.rescued += 1
                continue
        # a committed staging object (not a writer's temp file, which is in flight) is kept when
        # its committed copy no longer reads back: it is then the last good data
        if not in_flight and rel.startswith("staging/") and not _committed_copy_ok(store, view, rel.rsplit("/", 1)[-1][:-len(".npz")]):
            rep.kept_last_copy.append(path)  # the committed copy is bad: this one is the last good data
            continue
        if not dry_run:
            try:
                call(lambda: fs.rm_file(path), path, storage_options=so)
            except FileNotFoundError:
                continue
        rep.removed.append(path)
        rep.bytes_freed += int(fresh.get("size") or info.get("size") or 0)
    return rep


def _committed_copy_ok(store: ShardedStore, view: _View, key: str) -> bool:
    """Whether the committed row of ``key`` reads back intact (its member header, sha256): gc
    deletes a staging object only then (issue 11, item 6: after a shard was lost or corrupted, gc
    had deleted the staging copies that were the last good data). One ranged read per object."""
    m = view.manifest
    row = m.find(key) if m is not None else -1
    if row < 0:
        return False
    try:
        store.read_row(m, row, key)
    except (LatentdsError, OSError, ValueError):
        return False
    return True


@dataclass
class RepairReport:
    """:func:`repair`: what was wrong and what was done about it, by object and sample key."""

    checked: int = 0                       # committed rows verified
    generation: str | None = None          # the generation committed without the bad rows (None: none)
    dropped: list[tuple[str, str]] = field(default_factory=list)   # (sample key, what was wrong)
    reencoded: list[str] = field(default_factory=list)   # dropped keys encoded again from the sources
    restored: list[str] = field(default_factory=list)    # dropped keys re-packed from a good staging copy
    #: good rows of a shard damaged as a whole, moved to a fresh shard (same latents, nothing re-encoded)
    repacked: list[str] = field(default_factory=list)
    staging_removed: list[tuple[str, str]] = field(default_factory=list)  # corrupt staging objects removed
    pointer_recovered: bool = False        # CURRENT.json was unreadable and was re-pointed
    #: damage repair does not fix (records: `latentds gc`; a shard index that no row depends on)
    remaining: list[tuple[str, str]] = field(default_factory=list)
    packed_generation: str | None = None   # the compaction that committed re-encoded samples


def repair(store: ShardedStore, *, reencode_from: Any = None) -> RepairReport:
    """Find exactly the committed rows whose bytes fail :func:`verify` (missing or truncated
    shard, sha256/CRC32C mismatch, another sample's tar member at the offset) and commit a new
    manifest generation without them; remove corrupt staging objects. A dropped row is a miss
    again: ``dataset[i]`` and ``fill()`` re-encode it (or read a good staging copy).

    ``reencode_from``: a :class:`~latentds.LatentDataset` over the sources of this namespace;
    the dropped samples it holds are encoded again (or taken from their staging copy) and
    committed by a compaction, so the store is whole again. Samples it does not hold stay dropped.
    An empty or garbage ``CURRENT.json`` is re-pointed first at the newest readable generation
    (generations are written before their pointer, so it holds every committed row)."""
    rep = RepairReport()
    try:
        store.manifests.read_pointer()
    except ManifestError:
        found = store.manifests.newest_readable()
        if found is None:
            raise
        ptr, m = found
        store.manifests.commit(m.table, dict(m.meta, parent=m.generation))  # nobody can read the old pointer
        store.refresh()
        rep.pointer_recovered = True
    v = verify(store, staging=True)
    rep.checked = v.samples
    staging_dir = store.location.join("staging").rstrip("/") + "/"
    row_msgs = {why for _, why in v.bad_rows.values()} | set(v.bad_shards.values())
    lost_shards = {store.shard_path(shard) for shard, why in v.bad_rows.values() if why.endswith("shard is missing")}
    for name, why in v.bad:
        if name.startswith(staging_dir) and name.endswith(".npz"):
            try:  # a corrupt staging object is never packed or served: remove it (a miss again)
                call(lambda: store.location.fs.rm_file(name), name, storage_options=store.location.storage_options)
            except FileNotFoundError:
                pass
            rep.staging_removed.append((name, why))
        elif why not in row_msgs and name not in lost_shards:
            # e.g. a shard whose bytes no longer match its index: its good rows stay (each is
            # checked on its own), so verify keeps naming the shard; records: `latentds gc`
            rep.remaining.append((name, why))
    # good rows of a shard that is damaged as a whole (bytes differ from its index: the damage may
    # sit in a metadata member or a tar header no row check covers) move to a fresh shard in the
    # same commit that drops the bad rows: nothing good is lost and verify comes back clean
    m = store.manifests.load()
    added: list[tuple[str, Any]] = []
    shard_stats: dict[str, dict[str, list[float]]] = {}
    drop = {k: shard for k, (shard, _) in v.bad_rows.items()}
    bad_rows = dict(v.bad_rows)
    if m is not None and v.bad_shards:
        keys = m.table.column("key").to_pylist()
        shards = m.table.column("shard").to_pylist()
        for shard in sorted(v.bad_shards):
            group = []
            for r, (key, s_) in enumerate(zip(keys, shards)):
                if s_ != shard or key in bad_rows:
                    continue
                try:
                    e = store.read_row(m, r, key)
                    meta = store.read_meta(key)
                except (LatentdsError, OSError, ValueError) as exc:  # e.g. its metadata member is corrupt
                    bad_rows[key] = (shard, str(exc))
                    drop[key] = shard
                    continue
                group.append((key, Entry(e.mean, e.std, meta)))
                drop[key] = shard
            if group:
                data, rows = build_shard(group)
                name = shard_name(data)
                stats = channel_sums([e.mean for _, e in group])
                path = store.shard_path(name)
                call(lambda: write_atomic(store.location.fs, path, data), path, storage_options=store.location.storage_options)
                idx = store.shard_path(name[: -len(SHARD_SUFFIX)] + INDEX_SUFFIX)
                doc = index_document(name, data, rows, stats)
                call(lambda: write_atomic(store.location.fs, idx, doc), idx, storage_options=store.location.storage_options)
                added.extend((name, row) for row in rows)
                shard_stats[name] = stats
                rep.repacked.extend(k for k, _ in group)
    if drop:
        rep.generation, dropped = store.commit_without(drop, added, shard_stats)
        moved = set(rep.repacked)
        rep.dropped = [(k, bad_rows[k][1]) for k in dropped if k not in moved]
        rep.repacked = [k for k in rep.repacked if k in set(dropped)]
    if reencode_from is not None and rep.dropped:
        ds = reencode_from
        if ds.store.cache.namespace != store.cache.namespace:
            return rep  # the sources were encoded into another namespace: nothing of theirs here
        ds.store.refresh()
        index = {ds.key(i): i for i in range(len(ds))}
        todo = [index[k] for k, _ in rep.dropped if k in index]
        had = {k for k, _ in rep.dropped if k in index and store.cache.get(k) is not None}
        if todo:
            ds.fill(indices=todo, progress=False)
            rep.packed_generation = store.compact().generation
            for k, _ in rep.dropped:
                if k in had:
                    rep.restored.append(k)
                elif k in index:
                    rep.reencoded.append(k)
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
    try:
        parts = call(lambda: fs.ls(loc.join("bulk"), detail=False), loc.path, storage_options=so)
    except FileNotFoundError:
        parts = []
    out["bulk_partitions"] = len([p for p in parts if p.endswith(".json") and "/.tmp-" not in p])
    out["retries"] = dict(RETRY_STATS)
    out["pointer"] = f"manifest/{POINTER}"
    return out
