"""Manifest pointer commits are compare-and-swap: conditional PUTs on S3 (moto's server honours
If-None-Match / If-Match), an flock around check + rename on local disk. A commit that loses
the race merges the winner's generation and retries; no committed row is ever dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentds.store.entries import Entry, LatentCache
from latentds.store.backend import CommitConflict, _precondition_failed
from latentds.store.shards import build_shard
from latentds.store import ShardedStore

from conftest import Backend


def store(b: Backend) -> ShardedStore:
    return ShardedStore(LatentCache(b.url, "ns", storage_options=b.options or None))


def rows(*keys: str) -> list:
    entries = [(k, Entry(np.full((1, 2, 2), i, np.float32), None, {"target": i % 2})) for i, k in enumerate(keys)]
    _, rs = build_shard(entries)
    return [("shard-" + "0" * 32 + ".tar", r) for r in rs]


def test_stale_commit_is_refused(backend: Backend) -> None:
    a = store(backend)
    a.commit_rows(rows("a" * 40), {})
    ms = a.manifests
    first = ms.read_pointer()
    a.commit_rows(rows("b" * 40), {})
    m = ms.load()
    assert m is not None
    with pytest.raises(CommitConflict):
        ms.commit(m.table, {}, expected=first)  # merged over a pointer that has moved since
    with pytest.raises(CommitConflict):
        ms.commit(m.table, {}, expected=None)  # "nothing committed yet" is stale too
    assert ms.read_pointer() == json.loads(store(backend).location.fs.cat_file(ms.pointer_path))


def test_racing_commit_is_merged_not_lost(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = store(backend), store(backend)
    a.commit_rows(rows("0" * 40), {})
    real = a.manifests.commit
    raced: list[str | None] = []

    def racing(table, meta, **kw):  # another writer commits after a's last check, before its write
        if not raced:
            raced.append(b.commit_rows(rows("b" * 40), {}))
        return real(table, meta, **kw)

    monkeypatch.setattr(a.manifests, "commit", racing)
    a.commit_rows(rows("a" * 40), {})
    m = store(backend).manifests.load()
    assert m is not None and raced
    assert all(m.find(k * 40) >= 0 for k in "0ab")  # b's rows were merged, not overwritten


def test_s3_server_refuses_a_write_on_a_stale_etag(backend: Backend) -> None:
    if backend.kind != "s3":
        pytest.skip("conditional PUTs are an object-store feature")
    a = store(backend)
    ms = a.manifests
    assert ms.conditional
    a.commit_rows(rows("a" * 40), {})
    etag = ms.backend._etag("manifest/CURRENT.json")
    a.commit_rows(rows("b" * 40), {})  # the pointer moves on
    fs = a.location.fs
    with pytest.raises(OSError) as info:
        fs.pipe_file(ms.pointer_path, b"{}", IfMatch=etag)
    assert _precondition_failed(info.value)
    with pytest.raises(FileExistsError):
        fs.pipe_file(ms.pointer_path, b"{}", mode="create")
    assert ms.read_pointer() is not None and ms.read_pointer() != {}


def test_compaction_refreshes_an_old_orphan_shard_of_the_same_name(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction killed before its commit leaves a shard no manifest names; the next compaction
    builds the very same bytes (same content-hash name). It must write the shard again (fresh
    mtime), not skip it because it exists: otherwise `latentds gc` (orphans older than the grace
    period) can delete it between that check and the commit, and the commit names a missing shard."""
    import os
    import time

    from latentds.store.ops import gc

    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    means = {f"{i:040x}": np.full((1, 2, 2), i, np.float32) for i in range(5)}
    for k, v in means.items():
        s.cache.put(k, v, None, {"target": 0})

    real = s.manifests.commit

    def killed(*a, **kw):
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(s.manifests, "commit", killed)
    with pytest.raises(RuntimeError):
        s.compact()
    fs = s.location.fs
    shards = [p for p in fs.find(s.location.join("shards")) if p.endswith(".tar")]
    assert len(shards) == 1 and s.manifests.read_pointer() is None
    orphan = shards[0]
    old = time.time() - 2 * 3600
    for p in fs.find(s.location.join("shards")):
        os.utime(p, (old, old))
    assert orphan in gc(s, grace_s=3600, dry_run=True).removed  # an old orphan: gc would take it

    seen: list[list[str]] = []

    def gc_then_commit(*a, **kw):  # gc runs in the window between writing shards and committing
        seen.append(gc(s, grace_s=3600).removed)
        return real(*a, **kw)

    monkeypatch.setattr(s.manifests, "commit", gc_then_commit)
    rep = s.compact()
    assert rep.packed == 5 and rep.shards == [orphan.rsplit("/", 1)[-1]]
    assert seen == [[]]  # gc found the shard young (rewritten), removed nothing
    assert fs.exists(orphan) and time.time() - os.path.getmtime(orphan) < 600
    assert gc(s, grace_s=3600).removed == []  # committed now: named, kept
    gc(s, grace_s=0)  # staging objects of committed samples go; reads now come from the shard
    assert s.cache.keys() == []
    for k, v in means.items():
        e = s.get(k)
        assert e is not None and np.array_equal(e.mean, v)
