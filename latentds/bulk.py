"""Bulk encoding on Dask: ``latentds.encode(source, codec, cache, client=...)``.

* The sorted source list is cut into shard-sized **partitions** (``shard_samples`` files each);
  a partition's id is a hash of the namespace and its sample keys, so it is decided by the
  input alone.
* One Dask task per partition reads + preprocesses its files on prefetch threads (I/O overlaps
  the encoder), encodes in batches bucketed by image shape on the worker's device, writes ONE
  content-addressed shard (``latentds.shards.build_shard``, temp + rename / single PUT) plus its
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
import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .cache import Entry, LatentCache, _array_digest, canonical_json, namespace_id
from .dataset import Failure
from .errors import LatentdsError
from .sources import SourceItem, SourceList, list_sources, redact_reason, redact_text
from .storage import Location, call, write_atomic

DEFAULT_PARTITION = 1024

_CODECS: dict[str, Any] = {}
_CODEC_LOCK = threading.Lock()
_MALLOC_RESTORED = False

# glibc's steady state under its dynamic mmap threshold (see restore_malloc_thresholds)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * 8  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: 32 MiB


def restore_malloc_thresholds() -> bool:
    """Undo, in this worker process, the slowdown Dask's nanny gives CPU encoders.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting any malloc threshold switches off glibc's
    *dynamic* mmap threshold, so every buffer over 128 KiB (each activation of the encoder) is
    mmap'ed and unmapped again and its pages fault in afresh on every batch: the forward ran
    1.2-1.6x slower in a worker than in a plain process (benchmarks/RESULTS.md). Here the
    thresholds are set to the values glibc's dynamic rule settles at (mmap 32 MiB, trim twice
    that), once per process, only where the variable is set (glibc on Linux). Latents are
    unchanged: this moves where memory comes from, not what is computed.
    """
    global _MALLOC_RESTORED
    if _MALLOC_RESTORED or not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    _MALLOC_RESTORED = True
    if os.environ.get("LATENTDS_KEEP_MALLOC_THRESHOLDS"):  # opt out: keep the worker's settings
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX) == 1 and ok
        return ok
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to undo
        return False


def get_codec(name: str, device: str, kwargs: dict[str, Any]) -> Any:
    """The codec for this process, created once (per name, device and kwargs)."""
    from .codecs import create_codec

    k = canonical_json({"name": name, "device": device, "kwargs": kwargs})
    with _CODEC_LOCK:
        c = _CODECS.get(k)
        if c is None:
            c = _CODECS[k] = create_codec(name, device=device, **kwargs)
            _CODECS[k + "#loads"] = _CODECS.get(k + "#loads", 0) + 1
    return c


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
    crash_marker: str | None = None  # tests: os._exit() in the first task that finds no marker

    def cache(self) -> LatentCache:
        return LatentCache(self.cache_url, self.namespace, storage_options=self.cache_options)

    def __repr__(self) -> str:
        # the spec travels to Dask (dashboard, logs, tracebacks): never show the credentials
        from dataclasses import fields

        from .storage import redact_options

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
    """Exactly ``LatentDataset._preprocessing_spec`` (no custom loader): same namespace."""
    from .preprocess import Preprocess

    return {"preprocess": Preprocess(crop_roi=crop_roi, size=size).to_dict(),
            "image_size": tuple(image_size) if image_size is not None else None,
            "fit": fit if image_size else None}


def partition_id(namespace: str, keys: Sequence[str]) -> str:
    return hashlib.sha256(canonical_json({"ns": namespace, "keys": list(keys)}).encode()).hexdigest()[:32]


# -- the task ---------------------------------------------------------------------------------

def _read(spec: Spec, item: SourceItem) -> tuple[bytes, str]:
    from . import discovery

    if discovery.is_remote(item.url):
        loc = Location(item.url, spec.source_options)
        fs = loc.fs
        path = fs._strip_protocol(item.url)
        data = call(lambda: fs.cat_file(path), path, storage_options=spec.source_options)  # one GET
    else:
        from .sources import read_local

        data = read_local(discovery._local(item.url))  # a FIFO/device is this file's error, not a hang
    return data, hashlib.sha256(data).hexdigest()


def _load(spec: Spec, item: SourceItem, data: bytes | None = None, digest: str | None = None
          ) -> tuple[np.ndarray, dict[str, Any]]:
    """Read + preprocess one file (LatentDataset.load_source, minus the dataset)."""
    from .dataset import fit_image
    from .preprocess import Preprocess

    if data is None or digest is None:
        data, digest = _read(spec, item)
    img = Preprocess(crop_roi=spec.crop_roi, size=spec.size)(io.BytesIO(data), name=item.url)
    content_shape = list(img.shape)
    img = fit_image(img, spec.image_size, spec.fit)  # type: ignore[arg-type]
    return img, {"content_sha256": digest, "content_shape": content_shape, "image_shape": list(img.shape),
                 "relpath_hash": item.relpath_hash}


def _adopt(spec: Spec, where: tuple, digest: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]] | None:
    """The committed latent of a cache written before the source root entered the key, if it was
    made from these very bytes (its content sha256 is the source's); see LatentDataset._adopt_legacy."""
    from .shards import decode_sample

    shard_path, off, length, mlen, soff, sha, content_sha, meta_off, meta_len = where
    if content_sha != digest:
        return None
    loc = spec.cache().location
    fs, so = loc.fs, loc.storage_options
    try:
        buf = call(lambda: fs.cat_file(shard_path, start=off, end=off + length), shard_path, storage_options=so)
        raw = call(lambda: fs.cat_file(shard_path, start=meta_off, end=meta_off + meta_len), shard_path,
                   storage_options=so)
        mean, std = decode_sample(buf, mean_length=mlen, std_offset=soff, sha256=sha, name=shard_path)
        meta = json.loads(raw)
    except (OSError, ValueError, LatentdsError):
        return None  # an unreadable old copy is no reason not to encode afresh
    return np.array(mean), (np.array(std) if std is not None else None), meta


def encode_partition(spec: Spec, pid: str, items: list[SourceItem], adopt: dict[int, tuple] | None = None
                     ) -> dict[str, Any]:
    """One Dask task: read, encode, write one shard + index; return its rows (nothing committed).

    ``adopt``: item index -> where its pre-issue-11 (legacy key) copy is committed; taken instead of
    encoding when the stored content hash equals the file's."""
    import torch

    from .shards import build_shard, index_document, shard_name
    from .store import channel_sums

    if spec.crash_marker and not os.path.exists(spec.crash_marker):
        with open(spec.crash_marker, "w") as fh:
            fh.write(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-task (tests)
    delay = float(os.environ.get("LATENTDS_TEST_TASK_DELAY") or 0)  # tests: widen the kill window
    if delay:
        time.sleep(delay)
    if spec.torch_threads:
        torch.set_num_threads(spec.torch_threads)
    with _CODEC_LOCK:
        restore_malloc_thresholds()
    codec = get_codec(spec.codec, spec.device, spec.codec_kwargs)
    t0 = time.perf_counter()
    failures: list[tuple[int, str, str]] = []
    entries: list[tuple[str, Entry]] = []
    pending: dict[tuple[int, ...], list[tuple[int, np.ndarray, dict[str, Any]]]] = {}
    encode_s = 0.0

    def flush(shape: tuple[int, ...]) -> None:
        nonlocal encode_s
        group = pending.pop(shape, [])
        if not group:
            return
        t = time.perf_counter()
        x = torch.from_numpy(np.stack([g[1] for g in group]))[:, None].to(codec.device)
        with torch.inference_mode():
            mean, std = codec.encode_dist(x)
        mean = mean.detach().to("cpu", torch.float32).contiguous().numpy()
        std = std.detach().to("cpu", torch.float32).contiguous().numpy()
        encode_s += time.perf_counter() - t
        for j, (i, _, meta) in enumerate(group):
            m = np.ascontiguousarray(mean[j])
            s: np.ndarray | None = np.ascontiguousarray(std[j])
            if not s.any():  # deterministic codec: no spread worth storing (as LatentDataset._store)
                s = None
            item = items[i]
            full = {"key": item.key, "target": int(item.target), **meta}
            full = dict(full, sha256=_array_digest(m, s), shape=list(m.shape), dtype=str(m.dtype))
            entries.append((item.key, Entry(m, s, full)))

    def load(i: int) -> tuple[int, Any, Any]:
        try:
            data, digest = _read(spec, items[i])
            if adopt and i in adopt:
                old = _adopt(spec, adopt[i], digest)
                if old is not None:
                    return i, old, None
            return i, _load(spec, items[i], data, digest), None
        except Exception as exc:  # any error of one file is that file's failure
            return i, None, exc

    with ThreadPoolExecutor(max(1, spec.prefetch)) as ex:
        for i, res, exc in ex.map(load, range(len(items))):
            if exc is not None:
                # what the user sees (real path) and what the cache stores (redacted from the exception)
                failures.append((i, type(exc).__name__, str(exc), redact_reason(exc, items[i].url, items[i].rel)))
                continue
            if len(res) == 3:  # adopted from an old cache: no encoding
                m, s, meta = res
                item = items[i]
                meta = {k: v for k, v in meta.items() if k not in ("sha256", "shape", "dtype", "shard")}
                full = dict(meta, key=item.key, target=int(item.target), sha256=_array_digest(m, s),
                            shape=list(m.shape), dtype=str(m.dtype))
                entries.append((item.key, Entry(m, s, full)))
                continue
            img, meta = res
            pending.setdefault(img.shape, []).append((i, img, meta))
            if len(pending[img.shape]) >= spec.batch_size:
                flush(img.shape)
    for shape in sorted(pending):
        flush(shape)

    out: dict[str, Any] = {"pid": pid, "shard": None, "rows": [], "stats": None, "failures": failures,
                           "n": len(items), "encode_s": encode_s, "task_s": 0.0, "pid_os": os.getpid()}
    if entries:
        entries.sort(key=lambda e: e[0])  # as compaction: samples in key order
        data, rows = build_shard(entries)
        name = shard_name(data)
        stats = channel_sums([e.mean for _, e in entries])
        cache = spec.cache()
        loc = cache.location
        fs, so = loc.fs, loc.storage_options
        path = loc.join("shards", name)
        # Content-addressed: a shard of this name already there (a killed run's, a re-run task's) holds
        # these very bytes. It is written again anyway (atomically; readers see the same bytes): no
        # exists() round trip on the normal path, and an old uncommitted shard gets a fresh age, so
        # `latentds gc` (grace period) does not remove it between this task and the client's commit.
        call(lambda: write_atomic(fs, path, data), path, storage_options=so)
        idx = loc.join("shards", name[: -len(".tar")] + ".index.json")
        doc = index_document(name, data, rows, stats)
        call(lambda: write_atomic(fs, idx, doc), idx, storage_options=so)
        out.update(shard=name, rows=rows, stats=stats)
    out["task_s"] = time.perf_counter() - t0
    return out


# -- the client -------------------------------------------------------------------------------

def _legacy_copies(store: Any, todo: list[tuple[str, list[SourceItem]]]) -> dict[str, dict[int, tuple]]:
    """Per partition: items not committed under their key whose pre-issue-11 key (no source root)
    is, with where that copy lives, so the task can take it instead of encoding (after checking
    the content hash). An old cache is thus re-keyed by a bulk re-run without encoding again."""
    if not todo:
        return {}
    try:
        m = store.refresh()
    except LatentdsError:
        return {}  # a broken manifest is reported by the commit; no shortcut then
    if m is None:
        return {}
    out: dict[str, dict[int, tuple]] = {}
    content = meta_off = meta_len = None
    for pid, chunk in todo:
        for i, it in enumerate(chunk):
            if m.find(it.key) >= 0:
                continue
            r = m.find(it.legacy_key)
            if r < 0:
                continue
            if content is None:
                content = m.column("content_sha256")
                meta_off, meta_len = m.column("meta_offset"), m.column("meta_length")
            shard, off, length, mlen, soff, sha, _ = m.locate(r)
            out.setdefault(pid, {})[i] = (store.shard_path(shard), off, length, mlen, soff, sha,
                                          str(content[r].as_py()), int(meta_off[r].as_py()), int(meta_len[r].as_py()))
    return out


def _redact(msg: str, item: SourceItem) -> str:
    return redact_text(msg, item.url, item.rel)


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


def read_failures(loc: Location) -> dict[str, dict[str, Any]]:
    out = {}
    fs = loc.fs
    for h in sorted(_list_json_names(loc, "failures")):
        p = loc.join("failures", f"{h}.json")
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
           temp_grace_s: float = 3600.0, source_id: str | None = None,
           _crash_marker: str | None = None) -> BulkReport:
    """Encode every sample of ``source`` into ``cache`` on Dask; resumable, idempotent.

    ``client``: a ``distributed.Client``; else ``scheduler`` (an address) is connected to; else a
    ``LocalCluster(n_workers, threads_per_worker, processes=True)`` is started and closed.
    ``shard_samples`` files make one partition = one task = one shard. ``retry_failed`` encodes
    only the files recorded as failed. ``source_id``: the tree's identity in every sample key, as
    ``LatentDataset(source_id=...)`` (default: the resolved root path or URL). Returns a :class:`BulkReport`; ``report.failures`` lists
    every failure still outstanding for this source (real paths; the cache holds only hashes).
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    from .codecs import create_codec
    from .store import ShardedStore

    t_start = time.perf_counter()
    so = dict(storage_options or {})
    cso = dict(cache_storage_options) if cache_storage_options is not None else so
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
                _crash_marker)

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
    by_hash = {it.relpath_hash: it for it in items}
    known_failures = read_failures(loc)
    done_parts = _list_json_names(loc, "bulk")

    if retry_failed:
        todo_items = [it for it in items if it.relpath_hash in known_failures]
    else:
        todo_items = items
    parts: list[tuple[str, list[SourceItem]]] = []
    for s in range(0, len(todo_items), max(1, shard_samples)):
        chunk = todo_items[s:s + shard_samples]
        keys = [it.key for it in chunk]
        pid = partition_id(ns, keys) if not retry_failed else partition_id(ns + "/retry", keys)
        parts.append((pid, chunk))
    report.partitions = len(parts)
    todo = [(pid, chunk) for pid, chunk in parts if retry_failed or pid not in done_parts]
    adopt = _legacy_copies(store, todo)
    report.skipped_partitions = len(parts) - len(todo)

    own_cluster = own_client = None
    if client is None and todo:
        if scheduler:
            client = own_client = Client(scheduler)
        else:
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
                    failed = {f[0]: (f[1], f[2], f[3] if len(f) > 3 else _redact(f[2], chunk[f[0]]))
                              for f in r["failures"]}
                    for i, (etype, msg, stored) in sorted(failed.items()):
                        it = chunk[i]
                        store.record_failure(it.relpath_hash, etype, stored)
                        known_failures[it.relpath_hash] = {"error_type": etype, "reason": msg}
                        new_failures += 1
                    for i, it in enumerate(chunk):  # encoded now: a stale failure record goes
                        if i not in failed and it.relpath_hash in known_failures:
                            p = loc.join("failures", f"{it.relpath_hash}.json")
                            try:
                                loc.fs.rm(p)
                            except FileNotFoundError:
                                pass
                            known_failures.pop(it.relpath_hash, None)
                    if not retry_failed:
                        # the keys it committed: `latentds gc` / `verify` can tell a sound record
                        # (needed to skip the partition on a re-run) from one that stands for nothing
                        body = canonical_json({"partition": r["pid"], "shard": r["shard"], "samples": r["n"],
                                               "failed": sorted(chunk[i].relpath_hash for i in failed),
                                               "keys": sorted(it.key for i, it in enumerate(chunk)
                                                              if i not in failed)}).encode()
                        p = loc.join("bulk", f"{r['pid']}.json")
                        call(lambda: write_atomic(loc.fs, p, body), p, storage_options=loc.storage_options)
                    report.encoded += r["n"] - len(failed)
                    report.task_seconds += float(r.get("task_s") or 0.0)
                    report.encode_seconds += float(r.get("encode_s") or 0.0)
                    report.committed_partitions += 1
                    bar.update(r["n"])
                for key, exc in errors:
                    pid = str(key)[len("lds-"):]
                    for it in part_items.get(pid, []):
                        store.record_failure(it.relpath_hash, type(exc).__name__, _redact(str(exc), it))
                        known_failures[it.relpath_hash] = {"error_type": type(exc).__name__, "reason": str(exc)}
                        new_failures += 1
                    bar.update(len(part_items.get(pid, [])))
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
    if report.generation is None:  # nothing committed now: name the committed generation
        # from the pointer alone. Loading the manifest here, right before a CLI client exits, was
        # the widest window for pyarrow's shutdown race (benchmarks/RESULTS.md, bulk: SIGABRT).
        ptr = store.manifests.read_pointer()
        report.generation = str(ptr["generation"]) if ptr else None
    for h, rec in sorted(known_failures.items(), key=lambda kv: by_hash[kv[0]].rel if kv[0] in by_hash else kv[0]):
        it = by_hash.get(h)
        if it is not None:
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
