"""gc beside a compaction on S3: no store answer may come from a listing taken earlier.

The S3 soak (tests/test_soak.py) failed at the minimum grace with "manifest generation named by
CURRENT.json is missing" although nothing had been deleted: s3fs keeps every listing in its
per-instance cache, one instance serves every location with the same options in a process, and
``cat_file`` asks for the object's size first, answered from that listing. gc lists the whole
store; its next pass loads the generation a compaction committed since and was told it did not
exist. These tests drive that interleaving step by step on the loopback S3 server (and on local
disk, where it always held).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from latentds.store import gc, open_store

from conftest import Backend


def _stage(store: Any, n: int, prefix: str = "") -> str:
    key = (prefix + hashlib.sha1(f"sample-{n}".encode()).hexdigest())[:40]
    store.cache.put(key, np.full((4, 2, 2), n, np.float32), None, {"target": n % 2})
    return key


def _elsewhere(backend: Backend) -> dict[str, Any]:
    """Options for a store handle that acts as another process would: its own filesystem
    instance (a writer in the same instance invalidates the listing it writes under)."""
    return {**backend.options, "skip_instance_cache": True}


def _generations(store: Any) -> list[str]:
    return sorted(rel for rel in store.backend.list("manifest") if rel.endswith(".parquet"))


def test_gc_after_a_commit_that_followed_its_listing(backend: Backend) -> None:
    collector = open_store(backend.url, "ns", backend.options)
    compactor = open_store(backend.url, "ns", _elsewhere(backend))
    _stage(compactor, 0)
    first = compactor.compact().generation
    gc(collector, grace_s=0)  # lists every object of the store
    _stage(compactor, 1)
    second = compactor.compact().generation  # committed after gc's listing
    assert second and second != first

    rep = gc(collector, grace_s=0)  # used to raise ManifestError: the new generation "missing"
    ptr = collector.manifests.read_pointer()
    assert ptr is not None and ptr["generation"] == second
    m = collector.refresh()
    assert m is not None and m.generation == second and len(m) == 2
    # neither generation is gone: the committed one never goes, the superseded one is younger
    # than the in-flight grace
    gens = _generations(collector)
    assert [g for g in gens if second in g] and [g for g in gens if first in g], gens
    assert not [p for p in rep.removed if "/manifest/" in p], rep.removed


def test_an_object_written_after_a_listing_is_found(backend: Backend) -> None:
    reader = open_store(backend.url, "ns", backend.options)
    writer = open_store(backend.url, "ns", _elsewhere(backend))
    _stage(writer, 0, prefix="ab")
    assert len(reader.cache.keys()) == 1  # a listing of staging/ (compaction and gc take one)
    key = _stage(writer, 1, prefix="ab")  # a DataLoader worker stages a sample: same fan-out folder
    assert reader.has(key)  # exists() answered from the old listing said no (a needless re-encode)
    e = reader.get(key)  # cat_file() answered from the old listing raised "missing"
    assert e is not None and float(e.mean.ravel()[0]) == 1.0


def test_a_whole_second_timestamp_never_overstates_an_age() -> None:
    import datetime as dt

    from latentds.store.collect import _age_s

    # S3 gives LastModified truncated to the second: written at 10.9 s, listed as 10 s
    written = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=dt.timezone.utc)
    now = written.timestamp() + 1.5  # at most 1.5 s, at least 0.6 s after the write
    assert _age_s({"LastModified": written}, now) <= 0.6
    precise = written.replace(microsecond=900000)
    assert abs(_age_s({"LastModified": precise}, now) - 0.6) < 1e-6
    assert _age_s({"mtime": now - 3.25}, now) == 3.25  # local disk: exact


def _half_compacted(store: Any) -> tuple[Any, list, dict]:
    """One committed generation, then a shard a compaction has written but not committed yet."""
    from latentds.store import write_shard

    for n in range(2):
        _stage(store, n)
    store.compact()
    group = [(k, store.cache.get(k)) for k in (_stage(store, n) for n in (2, 3))]
    w = write_shard(store, group)
    return w, [(w.name, r) for r in w.rows], {w.name: w.stats}


def test_gc_at_grace_0_keeps_a_shard_a_compaction_has_not_committed_yet(backend: Backend) -> None:
    """Issue 11, item 5 on both stores: the minimum grace protects work in flight."""
    from latentds.store import MIN_GRACE_S

    store = open_store(backend.url, "ns", backend.options)
    w, rows, stats = _half_compacted(store)
    rep = gc(store, grace_s=0)
    assert rep.in_flight_grace_s == MIN_GRACE_S and not [p for p in rep.removed if w.name[:-4] in p], rep.removed
    store.commit_rows(rows, stats)  # the compaction commits: every row it names reads back
    m = store.refresh()
    assert len(m) == 4 and all(store.get(k) is not None for k, _ in ((r.key, 0) for _, r in rows))


def test_gc_rechecks_the_pointer_right_before_deleting(backend: Backend, monkeypatch: Any) -> None:
    """Issue 11, item 5 with the floor lowered to 0: a compaction that commits right after gc
    listed the store (so the listing shows its shard unnamed) loses nothing; gc re-reads the
    pointer before each deletion."""
    monkeypatch.setenv("LATENTDS_GC_MIN_GRACE_S", "0")
    store = open_store(backend.url, "ns", backend.options)
    w, rows, stats = _half_compacted(store)
    committer = open_store(backend.url, "ns", _elsewhere(backend))
    fs = store.backend.fs
    real_find = fs.find

    def find_then_commit(*a: Any, **kw: Any) -> Any:
        listing = real_find(*a, **kw)
        committer.commit_rows(rows, stats)
        return listing

    monkeypatch.setattr(fs, "find", find_then_commit)
    rep = gc(store, grace_s=0)
    monkeypatch.setattr(fs, "find", real_find)
    assert rep.rescued >= 1 and not [p for p in rep.removed if w.name[:-4] in p], rep.removed
    m = store.refresh()
    assert len(m) == 4 and m.generation in " ".join(_generations(store))
    assert all(store.get(r.key) is not None for _, r in rows)


def test_locations_never_answer_from_an_old_listing(backend: Backend) -> None:
    """Every location (bulk records, failure records, sources), not only the store's backend:
    list, another process writes, then read in the same process (the lead's case: a notebook
    running bulk.encode twice, FailureBook.sweep after the job).

    Failed on S3 while ``Location.fs`` kept fsspec's listings cache. It was kept because turning
    it off made bulk (listing info) and ``LatentDataset`` (HEAD info) key S3 sources differently;
    the cause was the test proxy's HEAD answers (size 0), and both shapes now go through one
    function (``latentds.sample.source.stamp``, tests/test_source_identity.py)."""
    from latentds.bulk import read_failures
    from latentds.store.fsio import Location

    loc = Location(backend.url, backend.options)
    other = Location(backend.url, _elsewhere(backend))
    other.fs.makedirs(other.join("failures"), exist_ok=True)
    other.fs.pipe_file(other.join("failures", "a.json"), b'{"n": 1}')
    assert set(read_failures(loc)) == {"a"}
    assert loc.fs.ls(loc.join("failures"))  # a listing, kept by fsspec unless turned off
    new = other.join("failures", "b.json")
    other.fs.pipe_file(new, b'{"n": 2}')
    path = loc.join("failures", "b.json")
    assert loc.fs.exists(path) and loc.fs.cat_file(path) == b'{"n": 2}'
    assert set(read_failures(loc)) == {"a", "b"}


def test_gc_logs_each_removal_with_its_reason_and_evidence(backend: Backend, monkeypatch: Any) -> None:
    """The audit trail the soak prints on failure: one entry per removed object, saying what it
    was, the generation it was judged against and its ages (listed, and re-checked right before
    the DELETE for what may be work in flight)."""
    monkeypatch.setenv("LATENTDS_GC_MIN_GRACE_S", "0")
    store = open_store(backend.url, "ns", backend.options)
    _stage(store, 0)
    first = store.compact().generation
    _stage(store, 1)
    second = store.compact().generation
    rep = gc(store, grace_s=0)
    assert len(rep.log) == len(rep.removed) == 3, rep.removed  # two staging objects, the superseded generation
    by_object = {e["object"]: e for e in rep.log}
    assert {store.backend.path(o) for o in by_object} == set(rep.removed)
    gen = by_object[f"manifest/{first}.parquet"]
    assert gen["why"] == "superseded generation" and gen["against"] == second
    # An S3 timestamp is whole seconds, counted as the end of its second (an age is never
    # overstated), so an object written this second may show an age down to -1 s.
    assert gen["age_rechecked_s"] is not None and gen["age_rechecked_s"] >= -1.0 and gen["listed"]
    staged = [e for o, e in by_object.items() if o.startswith("staging/")]
    assert len(staged) == 2 and all(e["why"] == "staging object of a committed sample" and e["age_rechecked_s"] is None
                                    for e in staged)


def _two_commits(backend: Backend) -> tuple[Any, bytes, str, list[str]]:
    """A store with two generations; the first pointer's bytes, the shard only the second
    names, and every committed key."""
    store = open_store(backend.url, "ns", backend.options)
    keys = [_stage(store, 0)]
    store.compact()
    first = store.backend.get("manifest/CURRENT.json")
    keys.append(_stage(store, 1))
    shard = store.compact().shards[0]
    return store, first, shard, keys


def _pointer_answers(store: Any, monkeypatch: Any, later: Any) -> None:
    """The store's answer for CURRENT.json: true the first time, then ``later()`` (an old answer
    or a 404), injected at the store backend."""
    real_get, reads = store.backend.get, []

    def get(rel: str) -> bytes:
        if rel == "manifest/CURRENT.json":
            reads.append(rel)
            if len(reads) > 1:
                return later()
        return real_get(rel)

    monkeypatch.setattr(store.backend, "get", get)


def _all_read_back(backend: Backend, keys: list[str]) -> bool:
    fresh = open_store(backend.url, "ns", backend.options)
    fresh.refresh()
    return all(fresh.get(k) is not None for k in keys)


def test_gc_keeps_a_shard_an_old_pointer_answer_does_not_name(backend: Backend, monkeypatch: Any) -> None:
    """gc's re-read of the pointer right before a deletion returns an older pointer (a stale
    answer; generations only grow, so it names fewer shards): the shard the newer generation
    added is kept. Failed before (the view was replaced by the older one and the shard went)."""
    monkeypatch.setenv("LATENTDS_GC_MIN_GRACE_S", "0")  # every object old enough: only membership protects
    store, first, shard, keys = _two_commits(backend)
    _pointer_answers(store, monkeypatch, lambda: first)
    rep = gc(store, grace_s=0)
    assert not [p for p in rep.removed if shard[:-len(".tar")] in p], rep.removed
    assert store.backend.exists(f"shards/{shard}")
    monkeypatch.undo()
    assert _all_read_back(backend, keys)


def test_gc_stops_when_the_pointer_reads_as_missing(backend: Backend, monkeypatch: Any) -> None:
    """A 404 for CURRENT.json after it was read: before, gc took it for "nothing committed" and
    removed every shard older than the grace; now it stops with a ManifestError naming the file."""
    from latentds.errors import ManifestError

    monkeypatch.setenv("LATENTDS_GC_MIN_GRACE_S", "0")
    store, _, shard, keys = _two_commits(backend)

    def missing() -> bytes:
        raise FileNotFoundError("manifest/CURRENT.json")

    _pointer_answers(store, monkeypatch, missing)
    with pytest.raises(ManifestError, match="CURRENT.json: read as missing during gc"):
        gc(store, grace_s=0)
    monkeypatch.undo()
    assert len([r for r in store.backend.list("shards") if r.endswith(".tar")]) == 2
    assert _all_read_back(backend, keys)
