"""Issue 11: defects found by an adversarial pass, each pinned by a test that failed before its fix.

Item 1: two trees sharing a cache never share an entry (the source root is in the key), on the
LatentDataset and the bulk (Dask) paths alike; an old cache (keys without the root) is still read
with no encoding, but only where the stored content hash proves the entry is this file's.
Item 2: ``LatentIterableDataset.from_dataset`` streams exactly the dataset's samples, with its
current targets.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from latentds import CacheError, LatentDataset, LatentIterableDataset
from latentds.store.entries import sample_key
from latentds.sources import legacy_key, list_sources
from latentds.testing.synthetic import make_dataset

CODEC = "bicubic-f4"
SHAPE = (64, 48)


def _twin_trees(base: Path, n_per_class: int = 3) -> tuple[Path, Path]:
    """train/ and val/ with the same relative paths, sizes and mtimes but different pixels: what
    unpacking an archive of fixed-size DICOMs gives."""
    train, val = base / "train", base / "val"
    make_dataset(train, n_per_class=n_per_class, shape=SHAPE, seed=0, transfer_syntaxes=("explicit-le",))
    for p in sorted(train.rglob("*.dcm")):
        q = val / p.relative_to(train)
        q.parent.mkdir(parents=True, exist_ok=True)
        data = bytearray(p.read_bytes())
        tail = data[-400:]  # native pixel data is the last element: change pixels, keep the size
        data[-400:] = bytes(255 - b for b in tail)
        q.write_bytes(bytes(data))
        st = p.stat()
        os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert q.stat().st_size == st.st_size and q.stat().st_mtime_ns == st.st_mtime_ns
    return train, val


def _count_encodes(ds: LatentDataset) -> list[int]:
    calls = [0]
    codec = ds.codec
    orig = codec.encode_dist

    def counting(x: torch.Tensor) -> Any:
        calls[0] += int(x.shape[0])
        return orig(x)

    codec.encode_dist = counting  # type: ignore[method-assign]
    return calls


@pytest.fixture
def twins(tmp_path: Path) -> tuple[Path, Path]:
    return _twin_trees(tmp_path / "src")


def test_two_trees_in_one_cache_never_share_latents(twins: tuple[Path, Path], tmp_path: Path) -> None:
    train_root, val_root = twins
    cache = tmp_path / "cache"
    train = LatentDataset(train_root, codec=CODEC, cache=cache)
    train.fill(progress=False)
    train.compact()
    val = LatentDataset(val_root, codec=CODEC, cache=cache)
    assert val.namespace == train.namespace  # one namespace: only the key keeps them apart
    fresh = LatentDataset(val_root, codec=CODEC, cache=tmp_path / "val-only")
    for i in range(len(val)):
        assert val.relative_path(i) == train.relative_path(i)
        assert val.key(i) != train.key(i)
        assert torch.equal(val[i][0], fresh[i][0]), f"val sample {i} served another tree's latent"
    # and after both are compacted, each still reads its own
    val.compact()
    t2, v2 = LatentDataset(train_root, codec=CODEC, cache=cache), LatentDataset(val_root, codec=CODEC, cache=cache)
    for i in range(len(v2)):
        assert not torch.equal(t2[i][0], v2[i][0])
        assert torch.equal(v2[i][0], fresh[i][0])


def test_bulk_keys_equal_dataset_keys_and_keep_trees_apart(twins: tuple[Path, Path], tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    from latentds.bulk import encode

    train_root, val_root = twins
    cache = tmp_path / "cache"
    for root in twins:  # source identity: exactly LatentDataset's, root included
        ds = LatentDataset(root, codec=CODEC, cache=cache)
        items = {it.url: it for it in list_sources(root).items}
        for i, (p, _) in enumerate(ds.samples):
            assert items[p].key == ds.key(i) == sample_key(ds.source_identity(i))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            Client(cl) as client:
        for root in twins:
            r = encode(root, CODEC, cache, client=client, shard_samples=4, progress=False)
            assert r.ok and r.encoded == 6, r.failures[:1]
    fresh = LatentDataset(val_root, codec=CODEC, cache=tmp_path / "val-only")
    val = LatentDataset(val_root, codec=CODEC, cache=cache)
    calls = _count_encodes(val)
    for i in range(len(val)):
        assert torch.equal(val[i][0], fresh[i][0])
    assert calls[0] == 0  # all read from the bulk-filled cache


def _make_legacy(ds: LatentDataset) -> None:
    """Turn a filled (not compacted) cache into what the code before issue 11 wrote: the same
    objects under keys without the source root, then compacted."""
    for i in range(len(ds)):
        new, old = ds.key(i), legacy_key(ds.source_identity(i))
        src, dst = ds.cache.object_path(new), ds.cache.object_path(old)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        e = ds.cache.get(new)  # that code stored the source's plain sha256 (now: nothing without a key)
        meta = dict(e.meta, key=old, content_sha256=hashlib.sha256(Path(ds.samples[i][0]).read_bytes()).hexdigest())
        ds.cache.put(old, e.mean, e.std, meta)
        os.remove(src)
    ds.compact()


def test_old_cache_is_read_without_encoding_but_never_across_trees(twins: tuple[Path, Path], tmp_path: Path) -> None:
    train_root, val_root = twins
    cache = tmp_path / "cache"
    train = LatentDataset(train_root, codec=CODEC, cache=cache)
    expected = [train[i][0] for i in range(len(train))]
    _make_legacy(train)

    again = LatentDataset(train_root, codec=CODEC, cache=cache)
    calls = _count_encodes(again)
    for i in range(len(again)):
        assert torch.equal(again[i][0], expected[i])
    assert calls[0] == 0  # old entries adopted: same bytes proven by the stored content sha256
    assert again.decode(0).shape[-2:] == again.decode(0).shape[-2:]  # full metadata came along
    again.compact()  # the adopted copies are committed under the new keys
    m = again.store.refresh()
    assert all(m.find(again.key(i)) >= 0 for i in range(len(again)))

    # val's legacy keys are train's (same relative path, size, mtime): the content hash differs,
    # so nothing is adopted and val gets its own latents
    val = LatentDataset(val_root, codec=CODEC, cache=cache)
    assert [legacy_key(val.source_identity(i)) for i in range(len(val))] == \
           [legacy_key(train.source_identity(i)) for i in range(len(train))]
    fresh = LatentDataset(val_root, codec=CODEC, cache=tmp_path / "val-only")
    calls = _count_encodes(val)
    rep = val.fill(progress=False)
    assert rep.encoded == len(val) and calls[0] == len(val)
    for i in range(len(val)):
        assert torch.equal(val[i][0], fresh[i][0])


def test_iterable_streams_exactly_the_dataset_with_current_targets(tmp_path: Path) -> None:
    # two unrelated trees (distinct mtimes) in one cache: train and val
    train_root, val_root = tmp_path / "src" / "train", tmp_path / "src" / "val"
    make_dataset(train_root, n_per_class=3, shape=SHAPE, seed=0)
    make_dataset(val_root, n_per_class=3, shape=SHAPE, seed=1)
    cache = tmp_path / "cache"
    train = LatentDataset(train_root, codec=CODEC, cache=cache)
    val = LatentDataset(val_root, codec=CODEC, cache=cache)
    train.fill(progress=False)
    val.fill(progress=False)
    # supersede one train row: the file changes (new mtime -> new key), the old row stays committed
    changed = Path(train.samples[0][0])
    train.compact(shard_samples=4)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    # a class folder sorting first shifts class_to_idx: stored targets are now stale
    (train_root / "aaa").mkdir()
    shutil.copy(changed, train_root / "aaa" / "extra.dcm")
    train = LatentDataset(train_root, codec=CODEC, cache=cache)
    assert train.class_to_idx["aaa"] == 0 and len(train) == 7
    train.fill(progress=False)
    train.compact(shard_samples=4)
    m = train.store.refresh()
    assert len(m) == 6 + 6 + 2  # val's, train's old ones (one superseded), the changed one and the new one

    expected = {train.key(i): (train[i][0], train.targets[i]) for i in range(len(train))}
    got = list(LatentIterableDataset.from_dataset(train, shuffle=True, seed=1))
    assert len(got) == len(train)
    remaining = dict(expected)
    for z, t in got:
        k = next(k for k, (ez, et) in remaining.items() if torch.equal(ez, z) and et == t)
        remaining.pop(k)
    assert not remaining
    # split over ranks: a partition of exactly the dataset
    parts = [list(LatentIterableDataset.from_dataset(train, rank=r, world_size=2)) for r in range(2)]
    assert sum(len(p) for p in parts) == len(train)

    # a sample of the dataset that is not committed is an error, not a shorter epoch
    (train_root / "aaa" / "extra2.dcm").write_bytes(changed.read_bytes())
    grown = LatentDataset(train_root, codec=CODEC, cache=cache)
    with pytest.raises(CacheError, match="1 of 8 samples of the dataset are not in committed shards"):
        list(LatentIterableDataset.from_dataset(grown))
    assert np.isfinite(float(got[0][0].sum()))


def test_bulk_rerun_over_an_old_cache_adopts_instead_of_encoding(twins: tuple[Path, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from dask.distributed import Client, LocalCluster

    import latentds.bulk as bulk

    train_root, val_root = twins
    cache = tmp_path / "cache"
    train = LatentDataset(train_root, codec=CODEC, cache=cache)
    expected = [train[i][0] for i in range(len(train))]
    _make_legacy(train)
    loaded: list[str] = []
    real_load = bulk._load

    def spy(spec: Any, item: Any, *a: Any) -> Any:
        loaded.append(item.rel)
        return real_load(spec, item, *a)

    monkeypatch.setattr(bulk, "_load", spy)  # in-process (threads) workers see the spy
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            Client(cl) as client:
        r = bulk.encode(train_root, CODEC, cache, client=client, shard_samples=4, progress=False)
        assert r.ok and r.encoded == 6
        assert loaded == []  # every old copy taken, nothing preprocessed or encoded
        r = bulk.encode(val_root, CODEC, cache, client=client, shard_samples=4, progress=False)
        assert r.ok and len(loaded) == 6  # val's legacy keys are train's: content differs, all encoded
    t2, v2 = LatentDataset(train_root, codec=CODEC, cache=cache), LatentDataset(val_root, codec=CODEC, cache=cache)
    fresh = LatentDataset(val_root, codec=CODEC, cache=tmp_path / "val-only")
    m = t2.store.refresh()
    for i in range(len(t2)):
        assert m.find(t2.key(i)) >= 0 and m.find(v2.key(i)) >= 0
        assert torch.equal(t2[i][0], expected[i])
        assert torch.equal(v2[i][0], fresh[i][0])


# -- item 5: gc beside a compaction never removes what is (about to be) committed ----------------

def _half_compacted(tmp_path: Path, age_s: float) -> tuple[LatentDataset, list, dict, Path]:
    """A committed generation plus a shard a compaction has written but not committed yet."""
    from latentds.store.shards import build_shard, index_document, shard_name
    from latentds.store import channel_sums

    src = tmp_path / "src"
    make_dataset(src, n_per_class=3, shape=SHAPE, seed=0, transfer_syntaxes=("explicit-le",))
    ds = LatentDataset(src, codec=CODEC, cache=tmp_path / "cache")
    for i in range(3):
        ds[i]
    ds.compact()
    for i in range(3, len(ds)):
        ds[i]
    store = ds.store
    group = [(k, store.cache.get(k)) for k in store.cache.keys() if store.manifest().find(k) < 0]
    data, rows = build_shard(group)
    name = shard_name(data)
    path = Path(store.shard_path(name))
    path.write_bytes(data)
    stats = channel_sums([e.mean for _, e in group])
    Path(store.shard_path(name[:-4] + ".index.json")).write_bytes(index_document(name, data, rows, stats))
    t = time.time() - age_s
    for p in path.parent.iterdir():
        os.utime(p, (t, t))
    return ds, [(name, r) for r in rows], {name: stats}, path


def test_gc_grace_has_a_floor_for_work_in_flight(tmp_path: Path) -> None:
    from latentds.store import MIN_GRACE_S, gc

    ds, rows, stats, shard = _half_compacted(tmp_path, age_s=10)  # written 10 s ago, not committed
    rep = gc(ds.store, grace_s=0)
    assert shard.exists() and rep.in_flight_grace_s == MIN_GRACE_S >= 60
    ds.store.commit_rows(rows, stats)  # the compaction commits: nothing it names is gone
    fresh = LatentDataset(ds.root, codec=CODEC, cache=ds.cache.root.url)
    calls = _count_encodes(fresh)
    gc(fresh.store, grace_s=0)  # staging copies of committed samples may go at any grace
    for i in range(len(fresh)):
        fresh[i]
    assert calls[0] == 0


def test_gc_rechecks_the_pointer_before_each_deletion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentds.store import gc, verify

    monkeypatch.setenv("LATENTDS_GC_MIN_GRACE_S", "0")  # isolate the re-check from the floor
    ds, rows, stats, shard = _half_compacted(tmp_path, age_s=7200)  # an old shard, not named yet
    store = ds.store
    fs = store.location.fs
    real_find = fs.find

    def find_then_commit(*a: Any, **kw: Any) -> Any:
        listing = real_find(*a, **kw)
        store.commit_rows(rows, stats)  # a compaction commits right after gc listed the store
        return listing

    monkeypatch.setattr(fs, "find", find_then_commit)
    rep = gc(store, grace_s=0)
    monkeypatch.setattr(fs, "find", real_find)
    ptr = store.manifests.read_pointer()
    assert shard.exists() and Path(store.manifests.generation_path(ptr["generation"])).exists()
    assert rep.rescued >= 1
    fresh = LatentDataset(ds.root, codec=CODEC, cache=ds.cache.root.url)
    calls = _count_encodes(fresh)
    for i in range(len(fresh)):
        fresh[i]
    assert calls[0] == 0 and verify(fresh.store).ok


def test_verify_sources_finds_content_changed_under_the_same_size_and_mtime(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from latentds.store.ops import verify_sources

    # entries hold a content identity only under an identity key (issue 11 item 7)
    monkeypatch.setenv("LATENTDS_IDENTITY_KEY", "k" * 32)

    src = tmp_path / "src"
    make_dataset(src, n_per_class=2, shape=SHAPE, seed=0, transfer_syntaxes=("explicit-le",))
    ds = LatentDataset(src, codec=CODEC, cache=tmp_path / "cache")
    ds.fill(progress=False)
    ds.compact()
    ds[0]
    assert verify_sources(ds).ok and verify_sources(ds).checked == len(ds)
    p = Path(ds.samples[1][0])
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[-300:] = bytes(255 - b for b in data[-300:])
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: the same key
    fresh = LatentDataset(src, codec=CODEC, cache=tmp_path / "cache")
    assert fresh.key(1) == ds.key(1)
    rep = verify_sources(fresh)
    assert [q for q, _ in rep.stale] == [str(p)] and "stale" in rep.stale[0][1]
