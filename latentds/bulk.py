"""Bulk encoding on Dask: ``latentds.encode(source, codec, cache, client=...)``.

* The sorted source list is cut into shard-sized **partitions** (``shard_samples`` files each);
  a partition's id is a hash of the namespace and its sample keys, so it is decided by the
  input alone.
* One Dask task per partition reads + preprocesses its files on prefetch threads (I/O overlaps
  the encoder), encodes in batches bucketed by image shape on the worker's device, writes ONE
  content-addressed shard (``latentds.store.shards.build_shard``, temp + rename / single PUT) plus its
  index, and returns the index rows. The task writes nothing a reader trusts: a killed or
  repeated task has no visible effect (the same partition always gives the same bytes).
* The **client** commits manifest generations incrementally (``ShardedStore.commit_rows``), then
  writes ``bulk/<partition>.json`` recording that the partition is done; a kill loses at most the
  partitions in flight. A re-run skips partitions with a record and ends with the same shards
  and the same manifest rows as an uninterrupted run.
* Files that fail are recorded as ``failures/<relpath hash>.json`` (error type, reason with the
  path blanked: no PHI in the cache), listed with their real paths in the returned
  :class:`BulkReport`, and retried alone with ``retry_failed=True``.
* The codec is created once per worker process (module-level cache keyed by name, device and
  kwargs); weights travel as a path in ``codec_kwargs``, never as pickled tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._ctrl_c import workers_ignore_ctrl_c
from .preprocess import Preprocess
from .sample.encode import Failure, ShapeBatches, adopted_entry, make_entry
from .sample.image import Pipeline
from .sample.reuse import cached_copies, take_copy
from .sample.source import read_bytes
from .sample.views import apply_view, view_key, view_of
from .sample.worker import CODEC_LOCK, get_codec, restore_malloc_thresholds
from .failures import FailureBook
from .identity import Identities, IdentityKey, stored_reason
from .identity import resolve as resolve_identity
from .isolate import WORKER_DIED, WORKER_DIED_TYPE, Splits, is_worker_death
from .sources import SourceItem, SourceList, list_sources
from .store.entries import Entry, LatentCache, canonical_json, namespace_id
from .store.fsio import Location, call, write_atomic

__all__ = ["BulkReport", "DEFAULT_PARTITION", "Spec", "encode", "encode_partition", "format_report", "get_codec",
           "list_temps", "partition_id", "preprocessing_spec", "read_failures", "remove_temp_leftovers",
           "restore_malloc_thresholds"]

DEFAULT_PARTITION = 1024

@dataclass(frozen=True)
class Spec:
    """Everything a task needs, small and picklable (no tensors, no filesystems)."""

    codec: str
    codec_kwargs: dict[str, Any]
    device: str
    cache_url: str
    cache_options: dict[str, Any]
    source_options: dict[str, Any]
    namespace: str
    crop_roi: bool
    size: int | None
    image_size: tuple[int, int] | None
    fit: str
    batch_size: int
    prefetch: int
    torch_threads: int | None
    identity_key: IdentityKey | None = None  # keyed identities in entries (never stored; repr hides it)
    views: int = 1  # augmented views per image (latentds.sample.views); 1: none

    def cache(self) -> LatentCache:
        return LatentCache(self.cache_url, self.namespace, storage_options=self.cache_options)

    @property
    def pipeline(self) -> Pipeline:
        """The per-sample pipeline, as ``LatentDataset`` builds it from the same arguments."""
        return Pipeline(Preprocess(crop_roi=self.crop_roi, size=self.size), self.image_size, self.fit)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        # the spec travels to Dask (dashboard, logs, tracebacks): never show the credentials
        from dataclasses import fields

        from .store.fsio import redact_options

        parts = ", ".join(f"{f.name}={redact_options(getattr(self, f.name))!r}" if f.name.endswith("_options")
                          else f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"Spec({parts})"


@dataclass
class BulkReport:
    total: int = 0
    partitions: int = 0
    skipped_partitions: int = 0
    encoded: int = 0
    committed_partitions: int = 0
    failures: list[Failure] = field(default_factory=list)  # outstanding failures for this source
    namespace: str = ""
    generation: str | None = None
    seconds: float = 0.0
    dashboard: str | None = None
    task_seconds: float = 0.0     # summed over the tasks that ran now (worker time per partition)
    encode_seconds: float = 0.0   # of which the encoder forward (incl. host<->device copies)

    @property
    def ok(self) -> bool:
        return not self.failures


def preprocessing_spec(crop_roi: bool, size: int | None, image_size: tuple[int, int] | None,
                       fit: str) -> dict[str, Any]:
    """The namespace's preprocessing part (:meth:`latentds.sample.Pipeline.spec`, no custom loader)."""
    return Pipeline(Preprocess(crop_roi=crop_roi, size=size), image_size, fit).spec()  # type: ignore[arg-type]


def partition_id(namespace: str, keys: Sequence[str]) -> str:
    return hashlib.sha256(canonical_json({"ns": namespace, "keys": list(keys)}).encode()).hexdigest()[:32]


# -- the task ---------------------------------------------------------------------------------

def _load(spec: Spec, item: SourceItem, data: bytes, digest: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Preprocess one file's bytes (:meth:`latentds.sample.Pipeline.prepare`, as LatentDataset)."""
    root_id = str(dict(item.identity).get("root", ""))
    return spec.pipeline.prepare(data, digest, item.url, item.rel, Identities(spec.identity_key), root_id)


def encode_partition(spec: Spec, pid: str, items: list[SourceItem], adopt: dict[int, tuple] | None = None
                     ) -> dict[str, Any]:
    """One Dask task: read, encode, write one shard + index; return its rows (nothing committed).

    ``adopt``: item index -> where a copy of its latent already is (see :func:`_adopt`): taken
    instead of encoding (:func:`latentds.sample.reuse.take_copy`), so the shard holds the same
    bytes as if it had been encoded now."""
    import torch

    from .store import open_store
    from .store.shards import write_shard

    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    with CODEC_LOCK:
        restore_malloc_thresholds()
    codec = get_codec(spec.codec, spec.device, spec.codec_kwargs)
    t0 = time.perf_counter()
    failures: list[tuple[int, str, str, str]] = []
    entries: list[tuple[str, Entry]] = []
    batches: ShapeBatches[tuple[int, int]] = ShapeBatches(codec, spec.batch_size)
    metas: dict[tuple[int, int], dict[str, Any]] = {}

    def add(done: Any) -> None:
        for (i, v), m, s in done:
            it = items[i]
            k = view_key(it.key, v)
            entries.append((k, make_entry(k, it.target, m, s, metas.pop((i, v)))))

    def load(i: int) -> tuple[int, Any, Any, Any]:
        # -> (i, a copy of view 0 already in the cache, (image, meta) to encode, error)
        try:
            where = adopt.get(i) if adopt else None
            old = None
            if where is not None and (len(where) == 1 or where[6] is None):  # under its own key: no read
                old = take_copy(spec.cache(), items[i].key, where, None)
            if old is not None and spec.views == 1:
                return i, old, None, None
            data, digest = read_bytes(items[i].url, spec.source_options)
            if where is not None and old is None:
                old = take_copy(spec.cache(), items[i].key, where, digest, spec.identity_key)
            if old is not None and spec.views == 1:
                return i, old, None, None
            return i, old, _load(spec, items[i], data, digest), None
        except Exception as exc:  # any error of one file is that file's failure
            return i, None, None, exc

    with ThreadPoolExecutor(max(1, spec.prefetch)) as ex:
        for i, old, res, exc in ex.map(load, range(len(items))):
            it = items[i]
            if exc is not None:
                # what the user sees (real path) and what the cache stores (redacted from the exception)
                failures.append((i, type(exc).__name__, str(exc), stored_reason(exc, it.url, it.rel)))
                continue
            if old is not None:  # view 0 already in the cache: no encoding
                entries.append((it.key, adopted_entry(it.key, it.target, *old)))
            if res is None:
                continue
            img, meta = res
            for v in range(1 if old is not None else 0, spec.views):
                view = view_of(it.key, v, int(codec.f), img.shape[0] == img.shape[1])
                metas[(i, v)] = {**meta, **view.as_meta()} if v else meta
                add(batches.add(apply_view(img, view), (i, v)))
    add(batches.drain())

    out: dict[str, Any] = {"pid": pid, "shard": None, "rows": [], "stats": None, "failures": failures,
                           "n": len(items), "encode_s": batches.encode_seconds, "task_s": 0.0,
                           "pid_os": os.getpid()}
    if entries:
        entries.sort(key=lambda e: e[0])  # as compaction: samples in key order
        w = write_shard(open_store(spec.cache_url, spec.namespace, spec.cache_options), entries)
        out.update(shard=w.name, rows=w.rows, stats=w.stats)
    out["task_s"] = time.perf_counter() - t0
    return out


# -- the client -------------------------------------------------------------------------------

def _write_record(loc: Location, pid: str, fields: dict[str, Any]) -> None:
    """``bulk/<pid>.json``: the partition is committed (a re-run skips it)."""
    body = canonical_json(fields).encode()
    p = loc.join("bulk", f"{pid}.json")
    call(lambda: write_atomic(loc.fs, p, body), p, storage_options=loc.storage_options)


def _list_json_names(loc: Location, sub: str) -> set[str]:
    fs = loc.fs
    base = loc.join(sub)
    fs.invalidate_cache()
    try:
        found = call(lambda: fs.ls(base, detail=False), base, storage_options=loc.storage_options)
    except FileNotFoundError:
        return set()
    return {p.rsplit("/", 1)[-1][:-5] for p in found
            if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".tmp-")}


def read_failures(loc: Location, sub: str = "failures") -> dict[str, dict[str, Any]]:
    """The failure records (or, ``sub="bulk"``, the partition records) by name."""
    out = {}
    fs = loc.fs
    for h in sorted(_list_json_names(loc, sub)):
        p = loc.join(sub, f"{h}.json")
        try:
            out[h] = json.loads(fs.cat_file(p))
        except (FileNotFoundError, ValueError):
            continue
    return out


def list_temps(loc: Location) -> dict[str, tuple[int, int]]:
    """Temp files (``.tmp-*``) under the shard, record and manifest folders: path -> (size, mtime_ns).
    Local disk only; on object stores a PUT leaves no temp."""
    out: dict[str, tuple[int, int]] = {}
    if not loc.is_local:
        return out
    for sub in ("shards", "bulk", "failures", "manifest"):
        d = loc.join(sub)
        if not os.path.isdir(d):
            continue
        for n in os.listdir(d):
            if n.startswith(".tmp-"):
                p = os.path.join(d, n)
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    continue
                out[p] = (st.st_size, st.st_mtime_ns)
    return out


def remove_temp_leftovers(loc: Location, older_than_s: float, seen_at_start: dict[str, tuple[int, int]] | None = None
                          ) -> list[str]:
    """Remove temp files of writers killed mid-write: those older than ``older_than_s``, and those
    that were already there when this job started and are unchanged now, a whole job later (a live
    writer renames its temp within one write; only a dead one leaves it)."""
    removed = []
    now = time.time_ns()
    for p, (size, mtime) in list_temps(loc).items():
        stale = (now - mtime) / 1e9 >= older_than_s
        if seen_at_start is not None and seen_at_start.get(p) == (size, mtime):
            stale = True
        if stale:
            try:
                os.unlink(p)
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def encode(source: str | os.PathLike[str], codec: str, cache: str | os.PathLike[str], *, client: Any = None,
           scheduler: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1,
           device: str = "cpu", codec_kwargs: dict[str, Any] | None = None, batch_size: int = 8,
           shard_samples: int = DEFAULT_PARTITION, prefetch: int = 4, torch_threads: int | None = None,
           storage_options: dict[str, Any] | None = None, cache_storage_options: dict[str, Any] | None = None,
           crop_roi: bool = True, size: int | None = None, image_size: tuple[int, int] | None = None,
           fit: str = "pad", extensions: Sequence[str] | None = None, split: str | None = None,
           retry_failed: bool = False, progress: bool = True, max_in_flight: int | None = None,
           temp_grace_s: float = 3600.0, source_id: str | None = None, views: int = 1) -> BulkReport:
    """Encode every sample of ``source`` into ``cache`` on Dask; resumable, idempotent.

    ``client``: a ``distributed.Client``; else ``scheduler`` (an address) is connected to; else a
    ``LocalCluster(n_workers, threads_per_worker, processes=True)`` is started and closed.
    ``shard_samples`` files make one partition = one task = one shard. ``retry_failed`` encodes
    only the files recorded as failed (and any not committed yet). ``source_id``: the tree's identity in every sample key, as
    ``LatentDataset(source_id=...)`` (default: the resolved root path or URL). ``views``: cache
    that many augmented views of each image (:mod:`latentds.sample.views`), as ``LatentDataset(views=K)``. Returns a :class:`BulkReport`; ``report.failures`` lists
    every failure still outstanding for this source (real paths; the cache holds only hashes).
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    from .codecs import create_codec
    from .store import ShardedStore

    t_start = time.perf_counter()
    so = dict(storage_options or {})
    cso = dict(cache_storage_options) if cache_storage_options is not None else so
    # the identity key (latentds.identity) is never stored, nor handed to fsspec with the options
    src_key, so = resolve_identity(so)
    cache_key, cso = resolve_identity(cso)
    ids = Identities(cache_key or src_key)
    ckw = dict(codec_kwargs or {})
    # the namespace needs the codec fingerprint (weights hash): made once here, on the client
    c = create_codec(codec, device="cpu", **ckw)
    pre = preprocessing_spec(crop_roi, size, image_size, fit)
    ns = namespace_id(c.fingerprint, pre)
    lcache = LatentCache(os.fspath(cache), ns, storage_options=cso)
    info = {"codec": codec, "codec_fingerprint": c.fingerprint, "f": c.f, "latent_channels": c.latent_channels,
            "preprocessing": pre}
    del c
    store = ShardedStore(lcache)
    loc = lcache.location
    temps_at_start = list_temps(loc)
    spec = Spec(codec, ckw, device, os.fspath(cache), cso, so, ns, crop_roi, size,
                tuple(image_size) if image_size is not None else None, fit, batch_size, prefetch, torch_threads,
                ids.key, views)

    srcs: SourceList = list_sources(source, storage_options=so, extensions=extensions, split=split,
                                    source_id=source_id)
    items = srcs.items
    # Accept and refuse exactly what the in-process path (ImageFolder) does: no sample at all, or
    # an ImageFolder tree with an empty class folder, is the user's mistake, not "0 files done".
    from .discovery import DEFAULT_EXTENSIONS, check_nonempty

    check_nonempty(os.fspath(source), list(srcs.classes) if srcs.kind == "imagefolder" else [],
                   [it.target for it in items], extensions=tuple(extensions or DEFAULT_EXTENSIONS),
                   allow_empty=retry_failed)
    # written after listing so the class names (the meaning of each target) go with it
    lcache.write_info(dict(info, classes=list(srcs.classes)))
    report = BulkReport(total=len(items), namespace=ns)
    book = FailureBook(store, ids, items, read_failures(loc))  # keyed names: no path hash in the cache
    done_parts = _list_json_names(loc, "bulk")

    if retry_failed:
        # the files recorded as failed, and any not committed: without an identity key a record is
        # named by the file's key, so a file fixed since (new size/mtime) is found this way
        m = store.refresh()
        todo_items = [it for it in items if book.failed(it) or m is None or m.find(it.key) < 0]
    else:
        todo_items = items
    parts: list[tuple[str, list[SourceItem]]] = []
    for s in range(0, len(todo_items), max(1, shard_samples)):
        chunk = todo_items[s:s + shard_samples]
        keys = [view_key(it.key, v) for it in chunk for v in range(views)]  # views=1: the items' keys
        pid = partition_id(ns, keys) if not retry_failed else partition_id(ns + "/retry", keys)
        parts.append((pid, chunk))
    report.partitions = len(parts)
    todo = [(pid, chunk) for pid, chunk in parts if retry_failed or pid not in done_parts]
    adopt = cached_copies(store, todo)
    report.skipped_partitions = len(parts) - len(todo)

    own_cluster = own_client = None
    if client is None and todo:
        if scheduler:
            client = own_client = Client(scheduler)
        else:
            with workers_ignore_ctrl_c():
                own_cluster = LocalCluster(n_workers=n_workers or 1, threads_per_worker=threads_per_worker,
                                           processes=True, dashboard_address=":0")
            client = own_client = Client(own_cluster)
    try:
        if client is not None and todo:
            report.dashboard = getattr(client, "dashboard_link", None)
            if progress and report.dashboard:
                print(f"latentds: Dask dashboard at {report.dashboard}", file=sys.stderr)
        nfiles = sum(len(ch) for _, ch in todo)
        bar = tqdm(total=nfiles, desc="encoding", unit="img", disable=not progress, smoothing=0.1)
        new_failures = 0
        part_items = dict(todo)
        splits = Splits(ns)  # partitions whose worker died, run again in pieces (latentds.isolate)
        if todo:
            limit = max_in_flight or max(4, 2 * sum(
                w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()))
            queue = list(todo)
            futures = []
            for pid, chunk in queue[:limit]:
                futures.append(client.submit(encode_partition, spec, pid, chunk, adopt.get(pid), key=f"lds-{pid}",
                                             pure=False, retries=2))
            queue = queue[limit:]
            ac = as_completed(futures)
            for batch in ac.batches():
                results, errors = [], []
                for fut in batch:
                    try:
                        results.append(fut.result())
                    except Exception as exc:  # the whole task failed (e.g. the codec): not committed
                        errors.append((fut.key, exc))
                    fut.release()
                # commit the shards of everything finished, THEN record the partitions as done
                rows = [(r["shard"], row) for r in results if r["shard"] for row in r["rows"]]
                stats = {r["shard"]: r["stats"] for r in results if r["shard"]}
                report.generation = store.commit_rows(rows, stats)
                for r in results:
                    chunk = part_items[r["pid"]]
                    failed = {f[0]: (f[1], f[2], f[3])
                              for f in r["failures"]}
                    for i, (etype, msg, stored) in sorted(failed.items()):
                        book.record(chunk[i], etype, stored, msg)
                        new_failures += 1
                    for i, it in enumerate(chunk):  # encoded now: a stale failure record goes
                        if i not in failed:
                            book.clear(it)
                    # the keys it committed: `latentds gc` / `verify` can tell a sound record
                    # (needed to skip the partition on a re-run) from one that stands for nothing.
                    # A piece of a split partition adds to its partition's record, written when all are in.
                    done = splits.finished(r["pid"], shard=r["shard"], samples=r["n"],
                                           failed=[book.name(chunk[i]) for i in failed],
                                           keys=[it.key for i, it in enumerate(chunk) if i not in failed])
                    if done is not None and not retry_failed:
                        _write_record(loc, *done)
                    report.encoded += r["n"] - len(failed)
                    report.task_seconds += float(r.get("task_s") or 0.0)
                    report.encode_seconds += float(r.get("encode_s") or 0.0)
                    report.committed_partitions += done is not None
                    bar.update(r["n"])
                for key, exc in errors:
                    pid = str(key)[len("lds-"):]
                    chunk = part_items.get(pid, [])
                    death = is_worker_death(exc)
                    if death and len(chunk) > 1:  # one of its files kills the worker: find it, keep the rest
                        pieces = splits.split(pid, chunk, [it.key for it in chunk])
                        queue[:0] = pieces
                        part_items.update(pieces)
                        continue
                    again = splits.again(pid, chunk, [it.key for it in chunk]) if death else None
                    if again is not None:  # died alone once: run it alone again before naming it
                        queue.insert(0, again)
                        part_items[again[0]] = again[1]
                        continue
                    for it in chunk:
                        etype, msg = (WORKER_DIED_TYPE, WORKER_DIED) if death else (type(exc).__name__, str(exc))
                        book.record(it, etype, WORKER_DIED if death else stored_reason(exc, it.url, it.rel), msg)
                        new_failures += 1
                    # the culprit alone: a finished piece (its partition's record names it as failed)
                    done = splits.finished(pid, shard=None, samples=len(chunk), keys=[], broken=not death,
                                           failed=[book.name(it) for it in chunk])
                    if done is not None and not retry_failed:
                        _write_record(loc, *done)
                    report.committed_partitions += done is not None and death
                    bar.update(len(chunk))
                bar.set_postfix(failures=new_failures, refresh=False)
                while queue and ac.count() < limit:
                    pid, chunk = queue.pop(0)
                    ac.add(client.submit(encode_partition, spec, pid, chunk, adopt.get(pid), key=f"lds-{pid}",
                                         pure=False, retries=2))
        bar.close()
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
    remove_temp_leftovers(loc, temp_grace_s, temps_at_start)
    if book.unmatched:  # records of this tree's files that changed since they failed (FailureBook.sweep)
        book.sweep(read_failures(loc, "bulk").values(), {it.key for it in items})
    if report.generation is None:  # nothing committed now: name the committed generation
        # from the pointer alone. Loading the manifest here, right before a CLI client exits, was
        # the widest window for pyarrow's shutdown race (benchmarks/RESULTS.md, bulk: SIGABRT).
        ptr = store.manifests.read_pointer()
        report.generation = str(ptr["generation"]) if ptr else None
    for it, rec in book.outstanding():
        report.failures.append(Failure(it.url, str(rec.get("error_type")), str(rec.get("reason"))))
    report.seconds = time.perf_counter() - t_start
    return report


def format_report(report: BulkReport) -> str:
    lines = [f"{report.total} files in {report.partitions} partitions: {report.committed_partitions} committed now, "
             f"{report.skipped_partitions} already committed; {report.encoded} encoded; "
             f"{len(report.failures)} failed; {report.seconds:.1f} s; namespace {report.namespace}, "
             f"generation {report.generation}"]
    for f in report.failures:
        lines.append(f"  FAILED {f.path}: {f.error_type}: {f.message}")
    return "\n".join(lines)
