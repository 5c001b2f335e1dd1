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
from latentds.errors import ManifestError
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

    from latentds.store import gc

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


def test_shard_bytes_are_exactly_tarfiles() -> None:
    """The shard writer builds tar headers itself (speed): the bytes must stay exactly what
    tarfile writes, or content-addressed shard names would change between versions."""
    import hashlib
    import io
    import tarfile

    from latentds.store.entries import canonical_json

    def _npy_bytes(a: np.ndarray) -> bytes:
        out = io.BytesIO()
        np.lib.format.write_array(out, np.ascontiguousarray(a), allow_pickle=False)
        return out.getvalue()

    def reference(items: list[tuple[str, Entry]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
                info.uname = info.gname = "latentds"
                tar.addfile(info, io.BytesIO(data))
            for key, e in items:
                add(f"{key}.npy", _npy_bytes(e.mean))
                if e.std is not None:
                    add(f"{key}.std.npy", _npy_bytes(e.std))
                add(f"{key}.cls", str(int(e.meta.get("target", -1))).encode())
                add(f"{key}.json", canonical_json(e.meta).encode())
        return buf.getvalue()

    rng = np.random.default_rng(3)
    items = []
    for i in range(40):
        shape = (4, int(rng.integers(1, 30)), int(rng.integers(1, 30)))
        std = None if i % 3 == 0 else np.abs(rng.standard_normal(shape)).astype(np.float32)
        dt = np.float16 if i % 5 == 0 else np.float32
        items.append((f"{i:040x}", Entry(rng.standard_normal(shape).astype(dt), std,
                                         {"key": f"{i:040x}", "target": i % 4, "note": "é" * i})))
    for n in (1, 2, 40):
        data, rows = build_shard(items[:n])
        assert data == reference(items[:n])
        for r in rows:  # each row's checksums are of its own bytes in the shard
            assert hashlib.sha256(data[r.offset:r.offset + r.length]).hexdigest() == r.sha256


def test_iterable_epoch_reads_one_pinned_generation(tmp_path) -> None:
    """Refresh first, then pin: a generation committed after the epoch started is not mixed in
    (shards() and iteration agree); the next epoch reads it."""
    from latentds import LatentIterableDataset

    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))

    def stage(i: int) -> None:
        k = f"{i:040x}"
        s.cache.put(k, np.full((2, 2, 2), i, np.float32), None, {"key": k, "target": i})

    for i in range(3):
        stage(i)
    s.compact()
    it = LatentIterableDataset(str(tmp_path / "c"), "ns")
    it.set_epoch(0)
    before = it.shards()
    for i in range(3, 6):
        stage(i)
    s.compact()  # lands after the epoch began
    assert it.shards() == before
    assert sorted(t for _, t in it) == [0, 1, 2]
    it.set_epoch(1)
    assert sorted(t for _, t in it) == [0, 1, 2, 3, 4, 5]


def test_pointer_without_crc32c_still_opens(tmp_path) -> None:
    """Pointers written before the store package carry only the sha256: still checked and read."""
    import json

    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    s.commit_rows(rows("a" * 40), {})
    ptr = s.manifests.read_pointer()
    assert isinstance(ptr["crc32c"], int)
    old = {k: v for k, v in ptr.items() if k != "crc32c"}
    s.backend.put("manifest/CURRENT.json", json.dumps(old).encode())
    assert s.manifests.load().find("a" * 40) >= 0
    bad = dict(old, sha256="0" * 64)
    s.backend.put("manifest/CURRENT.json", json.dumps(bad).encode())
    with pytest.raises(ManifestError, match="checksum mismatch"):
        s.manifests.load()
    # a pointer whose CRC no longer matches (rewritten by a tool that knows only the sha256):
    # the sha256 decides
    s.backend.put("manifest/CURRENT.json", json.dumps(dict(ptr, crc32c=ptr["crc32c"] ^ 1)).encode())
    assert s.manifests.load().find("a" * 40) >= 0
    # damaged generation bytes fail both
    rel = f"manifest/{ptr['generation']}.parquet"
    raw = bytearray(s.backend.get(rel))
    raw[len(raw) // 2] ^= 0xFF
    s.backend.put(rel, bytes(raw))
    s.backend.put("manifest/CURRENT.json", json.dumps(ptr).encode())
    with pytest.raises(ManifestError, match="checksum mismatch"):
        s.manifests.load()


def test_iterable_detects_a_flipped_byte(tmp_path) -> None:
    """Streaming checks each sample's CRC32C (legacy rows: sha256) and names shard and sample."""
    from latentds import LatentIterableDataset
    from latentds.errors import ShardError

    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    for i in range(3):
        k = f"{i:040x}"
        s.cache.put(k, np.full((2, 2, 2), i, np.float32), None, {"key": k, "target": i})
    s.compact()
    m = s.refresh()
    assert [t for _, t in LatentIterableDataset(str(tmp_path / "c"), "ns")] == [0, 1, 2]
    off, length, *_ = m.row_layout(1)
    rel = f"shards/{m.shards[0]}"
    data = bytearray(s.backend.get(rel))
    data[off + length - 1] ^= 0xFF
    s.backend.put(rel, bytes(data))
    with pytest.raises(ShardError, match=r"crc32c.*|checksum"):
        list(LatentIterableDataset(str(tmp_path / "c"), "ns"))


def test_store_with_local_copies_pickles_for_spawned_workers(tmp_path) -> None:
    """DataLoader workers started with spawn get the store pickled: the read-through copies'
    lock must not travel (each process makes its own)."""
    import pickle

    from latentds.store import open_store

    s = open_store(str(tmp_path / "c"), "ns", local_cache=str(tmp_path / "copies"))
    s2 = pickle.loads(pickle.dumps(s))
    s2.readthrough.put("ab" * 32, b"x")
    assert s2.readthrough.get("ab" * 32) == b"x"
