"""The sharded latent store: committed shards first, staging objects second, a miss last.

Layout under ``<cache>/<namespace>/`` (see docs/store.md)::

    info.json                       what produced the namespace
    staging/<kk>/<key>.npz          lazy-fill tier: one object per sample (latentds.cache)
    shards/shard-<sha>.tar          immutable webdataset-layout tars (latentds.shards)
    shards/shard-<sha>.index.json   per-shard byte offsets + checksums, written after the shard
    manifest/g-<time>-<id>.parquet  committed generations (latentds.manifest)
    manifest/CURRENT.json           pointer to the committed generation, written LAST
    failures/<hash>.json            sources that could not be encoded (no paths: PHI)

Reads: manifest hit -> ONE ranged read of the sample's bytes (``pread`` on local disk,
``cat_file(path, start, end)`` elsewhere), checksum verified; else the staging object; else
``None`` (the caller encodes). ``compact()`` packs staging objects that no committed manifest
names into new shards and commits a new generation; it never deletes anything, so it is safe
to run while others read or write, to repeat, and to kill (``gc`` collects what a killed run
left behind).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import closing
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..errors import CacheError, ManifestError, ShardError
from . import layout
from .backend import Backend
from .entries import Entry, LatentCache, Staged
from .fsio import Location
from .manifest import CommitConflict, Manifest, ManifestStore, combine_stats, rows_table, shard_table, upgrade
from .plan import ReadPlan
from .prefetch import fetch_ahead
from .readthrough import ReadThroughCache
from .shardpipe import ShardPipeline
from .shards import TAR_HEADER, Row, channel_sums, check_member, crc32c, decode_sample

__all__ = ["DEFAULT_SHARD_BYTES", "DEFAULT_SHARD_SAMPLES", "MAX_SAMPLE_BYTES", "CompactReport",
    "ReadThroughCache", "ShardedStore", "channel_sums", "combine_stats"]

DEFAULT_SHARD_BYTES = 64 << 20
DEFAULT_SHARD_SAMPLES = 4096
#: staging objects fetched ahead by compaction on object stores (concurrent GETs of small objects)
STAGING_READ_AHEAD = 16
#: No sample's ranged read is larger (a 2 GiB latent is far beyond any codec here): a manifest row
#: asking for more is corrupt, and is refused by name instead of ending in a MemoryError.
MAX_SAMPLE_BYTES = 1 << 31


@dataclass
class CompactReport:
    packed: int = 0
    already_committed: int = 0
    shards: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    generation: str | None = None
    merges: int = 0


class ShardedStore:
    """Shards + manifest over a :class:`LatentCache` (the staging tier) of one namespace."""

    def __init__(self, cache: LatentCache, *, local_cache: str | os.PathLike[str] | None = None,
                 local_cache_bytes: int = 4 << 30, refresh_interval: float = 5.0) -> None:
        self.cache = cache
        self.location: Location = cache.location
        #: the namespace root under the store contract: every byte goes through it
        self.backend: Backend = cache.backend
        self.manifests = ManifestStore(self.backend)
        self.refresh_interval = refresh_interval
        self.readthrough = ReadThroughCache(os.fspath(local_cache), local_cache_bytes) if local_cache else None
        self._manifest: Manifest | None = None
        self._checked_at = -1e18
        self._fds: dict[str, int] = {}
        self._fd_pid = -1
        self._paths: dict[str, str] = {}
        self._plan_paths: tuple[Manifest | None, list[str]] = (None, [])
        self._local: bool | None = None  # is the store on local disk (pread) or remote (ranged GET)
        self.reads = 0  # ranged reads issued against the store (not the read-through cache)

    def __getstate__(self) -> dict[str, Any]:
        # Open descriptors and the loaded manifest stay in their process; workers reload lazily.
        state = self.__dict__.copy()
        state.update(_manifest=None, _checked_at=-1e18, _fds={}, _fd_pid=-1, _plan_paths=(None, []))
        return state

    # -- manifest ----------------------------------------------------------------------------
    def shard_path(self, name: str) -> str:
        p = self._paths.get(name)
        if p is None:  # joining re-strips the protocol each time: measurable on the warm path
            # every reader (reads, verify, gc, export, compact, bulk records) turns a name into a
            # path here: a name that is not one latentds writes never becomes a path
            p = self._paths[name] = self.backend.path(layout.shard(name))
        return p

    def manifest(self) -> Manifest | None:
        if self._checked_at < -1e17:
            self.refresh()
        return self._manifest

    def refresh(self) -> Manifest | None:
        """Follow the pointer again (cheap: one small read) and load a newer generation."""
        ptr = self.manifests.read_pointer()
        if ptr is None:
            self._manifest = None
        elif self._manifest is None or self._manifest.generation != ptr["generation"]:
            self._manifest = self.manifests.load(ptr)
        # only once the pointer and generation were read: after a ManifestError the next access
        # raises it again instead of finding "no manifest" and silently re-encoding (issue 11, item 10)
        self._checked_at = time.monotonic()
        return self._manifest

    # -- reads -------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        m = self.manifest()
        if m is not None and m.find(key) >= 0:
            return True
        return self.backend.exists(layout.staging(key))

    def get(self, key: str) -> Entry | None:
        """The entry for ``key`` from a committed shard, else staging, else ``None``."""
        m = self.manifest()
        if m is not None:
            row = m.find(key)
            if row >= 0:
                return self.read_row(m, row, key)
        e = self.cache.get(key)
        if e is not None:
            return e
        # A full miss may mean a compaction committed and gc collected the staging object since
        # we loaded the manifest: look at the pointer again before the caller re-encodes.
        if time.monotonic() - self._checked_at > self.refresh_interval:
            m2 = self.refresh()
            if m2 is not None and m2 is not m:
                row = m2.find(key)
                if row >= 0:
                    return self.read_row(m2, row, key)
        return None

    def read_row(self, m: Manifest, row: int, key: str) -> Entry:
        shard, off, length, mlen, soff, sha, target = m.locate(row)
        path = self.shard_path(shard)
        name = f"{path} (sample {key})"
        buf, checked = self._read_range(path, off, length, sha, m.generation, key)
        mean, std = decode_sample(buf, mean_length=mlen, std_offset=soff, sha256=sha, name=name, verify=not checked)
        return Entry(mean, std, {"key": key, "target": target, "shard": shard})

    def plan(self, keys: Sequence[str]) -> ReadPlan:
        """A read plan over ``keys`` (see :mod:`latentds.store.plan`); pass it to :meth:`read`."""
        return ReadPlan(keys)

    def read(self, plan: ReadPlan, i: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Mean (and std) of sample ``i`` of ``plan`` from the committed manifest; ``None`` when it
        is not committed (the caller then asks :meth:`get` or encodes). The plan follows the
        store's manifest generation (loaded on first use, reloaded by :meth:`refresh`)."""
        m = self.manifest()
        if plan.manifest is not m:
            plan.bind(m)
        row = plan.row(i)
        if row < 0:
            return None
        return self.read_planned(m, row)  # type: ignore[arg-type]

    def read_planned(self, m: Manifest, row: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean (and std) of manifest row ``row``: the warm path of ``LatentDataset[i]``.

        One ranged read (``os.pread`` on a descriptor kept open per process, or one ranged GET),
        a CRC32C of the bytes read against the manifest's, and ``np.frombuffer`` at offsets
        precomputed by :meth:`Manifest.read_plan`. The arrays are read-only views of the bytes
        read. Rows without a CRC32C (legacy generations) and reads through the local
        read-through cache take :meth:`read_row` (sha256, parsed headers)."""
        plan, layouts = m.read_plan()
        shard, off, length, mean_data, std_data, crc, layout = plan[row].tolist()
        if crc < 0 or self.readthrough is not None:
            e = self.read_row(m, row, m.key_bytes(row).decode())  # the key index, not an Arrow lookup
            return e.mean, e.std
        owner, paths = self._plan_paths
        if owner is not m:
            paths = [self.shard_path(name) for name in m.shards]
            self._plan_paths = (m, paths)
        header, buf = self._fetch(paths[shard], off, length, m.generation, True)
        kb = m.key_bytes(row)  # 40 hex digits (checked when the generation was loaded)
        if header[:40] != kb or header[40:45] != b".npy\0":  # inline: this runs on every warm read
            check_member(header, kb, ".npy", f"{paths[shard]} (sample {kb.decode()})")
        if crc32c(buf) != crc:
            raise ShardError(f"{paths[shard]} (sample {m.key_at(row)}): checksum mismatch (crc32c), the shard is "
                             f"corrupt; `latentds verify` lists every bad sample")
        dtype, shape, count = layouts[layout]
        mean = np.frombuffer(buf, dtype, count, mean_data).reshape(shape)
        std = np.frombuffer(buf, dtype, count, std_data).reshape(shape) if std_data >= 0 else None
        return mean, std

    def read_meta(self, key: str) -> dict[str, Any]:
        """The sample's full metadata (the shard's ``.json`` member, or the staging object's)."""
        m = self.manifest()
        row = m.find(key) if m is not None else -1
        if m is None or row < 0:
            e = self.cache.get(key)
            if e is None:
                raise CacheError(f"{self.cache.object_path(key)}: sample {key} is not in the store")
            return e.meta
        shard = m.locate(row)[0]
        off = int(m.column("meta_offset")[row].as_py())
        n = int(m.column("meta_length")[row].as_py())
        path = self.shard_path(shard)
        raw = self._fetch_member(path, off, n, m.generation, key, ".json")
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ShardError(f"{path} (sample {key}): corrupt metadata member ({exc})") from exc

    def _read_range(self, path: str, off: int, length: int, sha: str, generation: str, key: str
                    ) -> tuple[bytes, bool]:
        """The row's bytes and whether their sha256 was checked against ``sha`` here already
        (the read-through cache hashes what it serves and stores; the caller then does not hash
        them a second time)."""
        if self.readthrough is None:
            return self._fetch_member(path, off, length, generation, key), False
        # local copies are named by content AND key: a hit is these bytes of this very sample
        name = f"{sha}-{key}"
        hit = self.readthrough.get(name)
        if hit is not None and hashlib.sha256(hit).hexdigest() == sha:
            return hit, True
        buf = self._fetch_member(path, off, length, generation, key)
        if hashlib.sha256(buf).hexdigest() != sha:
            return buf, False  # not kept; the caller's own check raises the checksum error
        self.readthrough.put(name, buf)
        return buf, True

    def _fetch_member(self, path: str, off: int, length: int, generation: str, key: str | bytes,
                      suffix: str = ".npy") -> bytes:
        """The row's bytes, after checking that the tar header right before them names the row's
        key. Local disk: a second 512-byte ``pread`` (page cache, ~1 us; slicing one larger read
        would copy the latent again for its CRC). Object stores: the header comes in the same
        ranged GET (one round trip; the copy is nothing next to it)."""
        header, buf = self._fetch(path, off, length, generation, True)
        check_member(header, key, suffix, f"{path} (sample {key.decode() if isinstance(key, bytes) else key})")
        return buf

    def _fetch(self, path: str, off: int, length: int, generation: str, header: bool = False) -> Any:
        """Exactly one ranged read; a short read is a truncated shard, never zeros.

        ``header=True``: returns ``(tar header before the bytes, bytes)``, for the caller to check
        the member is the row's own. Local disk: a second 512-byte ``pread`` on the same descriptor
        (page cache; slicing one larger read would copy the latent again for its CRC). Object
        stores: the header comes in the same ranged GET (one round trip; the copy is nothing next
        to it)."""
        if off < TAR_HEADER * header or length < 0 or length > MAX_SAMPLE_BYTES:
            raise ShardError(f"{path}: manifest generation {generation} asks for bytes {off}..{off + length} "
                             f"(offset {off}, length {length}); not a sample's range, the manifest row is corrupt; "
                             f"run `latentds verify`")
        self.reads += 1
        if self._local is None:  # decided once: the property re-checks the process id every time
            self._local = self.backend.caps.local
        hdr = b""
        try:
            if self._local:
                buf = self._pread(path, off, length)
                if header:
                    hdr = os.pread(self._fds[path], TAR_HEADER, off - TAR_HEADER)
            else:
                start = off - TAR_HEADER if header else off
                buf = self.backend.get_range(path[len(self.backend.path()) + 1:], start, off + length)
                if header:
                    hdr, buf = buf[:TAR_HEADER], buf[TAR_HEADER:]
        except FileNotFoundError:
            raise ShardError(f"{path}: shard named by manifest generation {generation} is missing; run "
                             f"`latentds verify` and re-run `latentds compact` after restoring staging") from None
        except OSError as exc:
            # HTTP 416: the range starts past the end of the object, i.e. the shard is shorter
            # than the manifest says. Anything else is not ours to reinterpret.
            if "range is not satisfiable" in str(exc) or "InvalidRange" in str(exc):
                raise ShardError(f"{path}: shard is truncated (bytes {off}..{off + length} are past its end)"
                                 ) from None
            raise
        if len(buf) != length:
            raise ShardError(f"{path}: shard is truncated (wanted bytes {off}..{off + length}, got {len(buf)})")
        return (hdr, buf) if header else buf

    def _pread(self, path: str, off: int, length: int) -> bytes:
        # Local disk: keep descriptors open per process and pread (no seek state, no SIGBUS on
        # a truncated file as with mmap); shards are immutable so a descriptor never goes stale.
        if self._fd_pid != os.getpid():
            self._fds, self._fd_pid = {}, os.getpid()
        fd = self._fds.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            if len(self._fds) >= 256:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[path] = fd
        # bytes, not a bytearray: google-crc32c's C extension takes only immutable buffers, and
        # a copy into a fresh tensor is needed anyway for a writable latent
        return os.pread(fd, length, off)

    def close(self) -> None:
        if self._fd_pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def record_failure(self, relpath_hash: str, error_type: str, reason: str, **extra: Any) -> None:
        """Keep a failure record (no source path: the caller passes a record name and a redacted
        reason; ``extra``: more JSON fields, e.g. the identity scheme the name was made with)."""
        body = json.dumps({**extra, "relpath_hash": relpath_hash, "error_type": error_type, "reason": reason,
                           "time_unix": time.time()}, sort_keys=True).encode()
        self.backend.put(layout.failure_record(relpath_hash), body)

    # -- compaction --------------------------------------------------------------------------
    def compact(self, *, shard_bytes: int = DEFAULT_SHARD_BYTES, shard_samples: int = DEFAULT_SHARD_SAMPLES,
                attempts: int = 8) -> CompactReport:
        """Pack staging objects that no committed manifest names into new shards; commit a new
        generation (pointer last). Concurrent compactors: before committing, the pointer is
        re-read and, if another generation was committed meanwhile, merged in."""
        report = CompactReport()
        recovered = False
        try:
            ptr = self.manifests.read_pointer()
        except ManifestError:
            # an empty or garbage CURRENT.json (issue 11, item 6): generations are written before
            # the pointer, so the newest readable one holds every committed row; commit over it
            found = self.manifests.newest_readable()
            if found is None:
                raise
            ptr, recovered = found[0], True
        base = self.manifests.load(ptr)
        staged = self.cache.keys()
        # committed already: one vectorised search of the key index, no set of every key
        todo = ([k for k, r in zip(staged, base.find_many(staged).tolist()) if r < 0] if base is not None and staged
                else staged)
        report.already_committed = len(staged) - len(todo)
        tables: list[pa.Table] = []  # the new rows, one table per shard (columns, no Row objects)
        shard_stats: dict[str, dict[str, list[float]]] = {}

        count = size = 0

        def load(key: str) -> Staged | CacheError | None:
            try:
                return self.cache.get_staged(key)  # checked as cache.get; stored bytes kept
            except CacheError as exc:
                return exc

        # object stores: the next staging objects are fetched while this one is packed (one GET
        # per sample is the whole cost there); local reads gain nothing from threads, and are
        # read by the cache's own loop (no per-object path checks: the keys come from its listing)
        staged = (self.cache.staged_local(todo) if self.backend.caps.local
                  else fetch_ahead(load, todo, STAGING_READ_AHEAD))
        # shards are packed here a chunk at a time and hashed, named, indexed and written on a
        # background thread meanwhile (store/shardpipe.py: the same bytes as write_shard)
        # closing(): on an error the read-ahead stops now, not when a traceback holding this
        # frame is collected
        with closing(staged), ShardPipeline(self.backend) as pipe:
            for key, e in staged:
                if isinstance(e, CacheError):  # corrupt staging object: never packed, reported by name
                    report.bad.append((self.cache.object_path(key), str(e)))
                    continue
                if e is None:  # collected by gc between listing and reading
                    continue
                pipe.add(key, e)
                count += 1
                size += e.mean.nbytes + (e.std.nbytes if e.std is not None else 0) + 3072
                if size >= shard_bytes or count >= shard_samples:
                    pipe.flush()
                    count = size = 0
            written = pipe.results()
        for w in written:
            tables.append(shard_table(w.name, w.rows))
            shard_stats[w.name] = w.stats
            report.shards.append(w.name)
            report.packed += len(w.rows)
        added = pa.concat_tables(tables) if tables else None

        if recovered:  # no compare-and-swap over a pointer nobody can read: this commit replaces it
            assert base is not None
            table, meta = self._merge(base, added if added is not None else base.table.slice(0, 0), shard_stats)
            report.generation = str(self.manifests.commit(table, meta)["generation"])
            self.refresh()
            return report
        if added is None:
            report.generation = base.generation if base is not None else None
            return report
        generation, report.merges = self._commit_merged(added, shard_stats, ptr, base, attempts,
                                                        "other compactors kept committing; nothing is lost, run compact again")
        report.generation = generation
        return report

    def commit_rows(self, new_rows: list[tuple[str, Row]], shard_stats: dict[str, dict[str, list[float]]], *,
                    attempts: int = 8) -> str | None:
        """Commit rows of shards already written (and indexed) as a new manifest generation,
        merged over the committed one (rows it already has win), pointer last. Used by bulk
        encoding, whose Dask tasks write whole shards; same protocol as :meth:`compact`."""
        if not new_rows:
            m = self.refresh()
            return m.generation if m is not None else None
        ptr = self.manifests.read_pointer()
        generation, _ = self._commit_merged(rows_table(new_rows), shard_stats, ptr, self.manifests.load(ptr), attempts,
                                            "others kept committing; nothing is lost, run the job again")
        return generation

    def commit_without(self, drop: dict[str, str], added: list[tuple[str, Row]] | None = None,
                       shard_stats: dict[str, dict[str, list[float]]] | None = None, *, attempts: int = 8
                       ) -> tuple[str | None, list[str]]:
        """Commit a new generation without the rows ``drop`` names ({key: shard}) and with the
        rows ``added`` (of shards already written and indexed), in one step, pointer last; used by
        :func:`latentds.ops.repair`. A row goes only while it still names that shard: if a
        concurrent commit replaced it meanwhile, its new row is kept. Same protocol as
        :meth:`compact` (conditional commit; on a conflict re-read the pointer, filter again,
        retry). Returns (new generation or the unchanged one, keys dropped). The per-shard
        channel sums of a shard that lost rows are kept as they were: the normalisation stats
        then still count the dropped samples (a bias of a few samples in the whole cache)."""
        for _ in range(attempts):
            ptr = self.manifests.read_pointer()
            base = self.manifests.load(ptr)
            if base is None:
                return None, []
            keys = base.table.column("key").to_pylist()
            shards = base.table.column("shard").to_pylist()
            gone = [drop.get(k) == s for k, s in zip(keys, shards)]
            dropped = [k for k, g in zip(keys, gone) if g]
            if not dropped:
                return base.generation, []
            table = base.table.filter(pa.array([not g for g in gone], type=pa.bool_()))
            stats = dict(base.meta.get("shards") or {})
            if added:
                kept = set(table.column("key").to_pylist())  # a row committed meanwhile wins
                extra = rows_table(added)
                extra = extra.filter(pa.array([k not in kept for k in extra.column("key").to_pylist()], type=pa.bool_()))
                table = pa.concat_tables([upgrade(table), upgrade(extra)])
                stats.update(shard_stats or {})
            _, meta = self._merge(None, table, stats)
            meta["parent"] = base.generation
            try:
                new_ptr = self.manifests.commit(table, meta, expected=ptr)
            except CommitConflict:
                continue
            self.refresh()
            return str(new_ptr["generation"]), dropped
        raise CacheError(f"{self.manifests.pointer_path}: could not commit the repair after {attempts} attempts "
                         f"(others kept committing; nothing is lost, run `latentds repair` again)")

    def _commit_merged(self, added: pa.Table, shard_stats: dict[str, dict[str, list[float]]],
                       ptr: dict[str, Any] | None, base: Manifest | None, attempts: int, hint: str) -> tuple[str, int]:
        """Merge ``added`` over the generation ``ptr`` names and commit it, pointer last; when
        someone else commits first (seen on re-read, or a lost conditional write on S3), merge
        theirs and retry. Returns (new generation, number of merges)."""
        merges = 0
        for _ in range(attempts):
            table, meta = self._merge(base, added, shard_stats)
            cur = self.manifests.read_pointer()
            if (cur or {}).get("generation") != (ptr or {}).get("generation"):
                ptr, base = cur, self.manifests.load(cur)
                merges += 1
                continue
            try:
                new_ptr = self.manifests.commit(table, meta, expected=ptr)
            except CommitConflict:
                ptr = self.manifests.read_pointer()
                base = self.manifests.load(ptr)
                merges += 1
                continue
            self.refresh()
            return str(new_ptr["generation"]), merges
        raise CacheError(f"{self.manifests.pointer_path}: could not commit after {attempts} attempts ({hint})")

    def _merge(self, base: Manifest | None, added: pa.Table, shard_stats: dict[str, dict[str, list[float]]]
               ) -> tuple[pa.Table, dict[str, Any]]:
        if base is None:
            table = added
            shards_meta: dict[str, Any] = {}
        else:
            # rows the base already has win (same key -> same latent; keeps one copy referenced)
            mask = pa.array(base.find_many(added.column("key").to_pylist()) < 0, type=pa.bool_())
            table = pa.concat_tables([base.table, added.filter(mask)])
            shards_meta = dict(base.meta.get("shards") or {})
        shards_meta.update(shard_stats)
        referenced = set(table.column("shard").unique().to_pylist())
        shards_meta = {k: v for k, v in shards_meta.items() if k in referenced}
        meta = {"namespace": self.cache.namespace, "parent": base.generation if base is not None else None,
                "shards": shards_meta, "stats": combine_stats(shards_meta.values()),
                "created_unix": time.time()}
        return table, meta
