"""The batched read path (``LatentDataset.__getitems__``, issue 15 item 2): exactly what
per-sample reads return, on local disk and on the loopback S3 server, before and after
compaction, with the same typed error on a corrupt shard, and few requests per batch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from latentds import LatentDataset
from latentds.testing import synthetic
from latentds.batch_read import coalesce
from latentds.errors import ShardError

from conftest import Backend


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "dcm"
    synthetic.make_dataset(root, n_per_class=8, shape=(48, 40), seed=5)
    return root


def make(root: Path, b: Backend, **kw: Any) -> LatentDataset:
    return LatentDataset(root, codec="bicubic-f4", cache=b.url, cache_storage_options=b.options or None, **kw)


def same(batch: list[tuple[Any, Any]], single: list[tuple[Any, Any]]) -> None:
    assert len(batch) == len(single)
    for (x, t), (y, u) in zip(batch, single):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        assert t == u


def shuffled(ds: LatentDataset, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).permutation(len(ds)).tolist()


@pytest.mark.parametrize("fixed", [True, False], ids=["one-shape", "ragged-shapes"])
def test_batch_equals_per_sample(src: Path, backend: Backend, fixed: bool) -> None:
    kw: dict[str, Any] = {"image_size": (48, 40)} if fixed else {}
    make(src, backend, **kw).fill(progress=False)
    make(src, backend, **kw).compact(shard_samples=5)  # several shards, so rows group by shard
    ds = make(src, backend, **kw)
    idx = shuffled(ds)
    before = ds.store.reads
    batch = ds.__getitems__(idx)
    reads = ds.store.reads - before
    assert reads <= len(ds.store.manifest().shards) < len(idx)  # coalesced, not one per sample
    same(batch, [ds[i] for i in idx])
    # repeated and negative indices, as dataset[i] takes them
    same(ds.__getitems__([3, 3, -1, 0]), [ds[3], ds[3], ds[-1], ds[0]])
    # a DataLoader calls __getitems__ and collates its views into the same batches
    loader = DataLoader(ds, batch_size=7, shuffle=False) if fixed else None
    if loader is not None:
        for k, (x, y) in enumerate(loader):
            ref = [ds[i] for i in range(7 * k, min(len(ds), 7 * k + 7))]
            assert torch.equal(x, torch.stack([r[0] for r in ref])) and y.tolist() == [r[1] for r in ref]


def test_normalize_and_target_transform_match(src: Path, tmp_path: Path) -> None:
    b = Backend("local", str(tmp_path / "cache"))
    kw = {"image_size": (48, 40), "normalize": True, "target_transform": lambda t: t + 10}
    make(src, b, **kw).fill(progress=False)
    make(src, b, **kw).compact()
    ds = make(src, b, **kw)
    idx = shuffled(ds, 1)
    same(ds.__getitems__(idx), [ds[i] for i in idx])


def test_transform_keeps_the_per_sample_path(src: Path, tmp_path: Path) -> None:
    b = Backend("local", str(tmp_path / "cache"))
    seen: list[tuple[int, ...]] = []

    def tf(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))  # called once per sample, with one sample
        return x * 2

    make(src, b).fill(progress=False)
    make(src, b).compact()
    ds = make(src, b, transform=tf)
    idx = shuffled(ds, 2)[:9]
    before = ds.store.reads
    out = ds.__getitems__(idx)
    assert len(seen) == 9 and ds.store.reads - before == 9  # one read per sample: the per-sample path
    seen.clear()
    same(out, [ds[i] for i in idx])


def test_staging_and_after_recompaction(src: Path, backend: Backend) -> None:
    kw = {"image_size": (48, 40)}
    ds = make(src, backend, **kw)
    ds.fill(indices=range(0, len(ds), 2), progress=False)
    ds.compact()
    ds.fill(progress=False)  # the odd samples stay in staging: uncommitted
    ds = make(src, backend, **kw)
    idx = shuffled(ds, 3)
    same(ds.__getitems__(idx), [ds[i] for i in idx])
    ds.compact(shard_samples=4)  # a new generation: rows are resolved again
    assert len(ds.store.manifest()) == len(ds)
    before = ds.store.reads
    batch = ds.__getitems__(idx)
    assert ds.store.reads - before <= len(ds.store.manifest().shards)
    same(batch, [ds[i] for i in idx])
    fresh = make(src, backend, **kw)
    same(fresh.__getitems__(idx), batch)


def _corrupt(ds: LatentDataset, index: int, *, truncate: bool = False) -> None:
    m = ds.store.manifest()
    row = m.find(ds.key(index))
    shard, off, length, *_ = m.locate(row)
    path = ds.store.shard_path(shard)
    fs = ds.store.location.fs
    data = bytearray(fs.cat_file(path))
    if truncate:
        data = data[: off + length // 2]
    else:
        data[off + length - 3] ^= 0x40  # a bit flip inside the latent's bytes
    if ds.store.location.is_local:
        os.chmod(path, 0o644)
    fs.pipe_file(path, bytes(data))
    ds.store.close()


@pytest.mark.parametrize("truncate", [False, True], ids=["bit-flip", "truncated"])
def test_corrupt_shard_raises_the_per_sample_error(src: Path, backend: Backend, truncate: bool) -> None:
    kw = {"image_size": (48, 40)}
    make(src, backend, **kw).fill(progress=False)
    make(src, backend, **kw).compact()
    ds = make(src, backend, **kw)
    idx = shuffled(ds, 4)
    bad = idx[5]
    ds[bad]
    _corrupt(ds, bad, truncate=truncate)
    with pytest.raises(ShardError) as per_sample:
        for i in idx:
            ds[i]
    fresh = make(src, backend, **kw)
    with pytest.raises(ShardError) as batched:
        fresh.__getitems__(idx)
    assert str(batched.value) == str(per_sample.value)
    assert ("checksum mismatch" in str(batched.value)) != truncate
    # a batch without the bad sample still reads (the error is that sample's, not the batch's)
    if not truncate:
        rest = [i for i in idx if i != bad]
        same(fresh.__getitems__(rest), [fresh[i] for i in rest])


def test_s3_requests_per_batch_at_most_shards_touched(src: Path, backend: Backend) -> None:
    if backend.env is None:
        pytest.skip("counts requests through the loopback S3 proxy")
    kw = {"image_size": (48, 40)}
    make(src, backend, **kw).fill(progress=False)
    make(src, backend, **kw).compact(shard_samples=6)
    ds = make(src, backend, **kw)
    ds[0]  # the manifest is loaded once per process, not per batch
    m = ds.store.manifest()
    idx = shuffled(ds, 5)[:16]
    touched = len({m.locate(m.find(ds.key(i)))[0] for i in idx})
    backend.env.proxy.reset_counts()
    batch = ds.__getitems__(idx)
    assert sum(backend.env.proxy.counts.values()) == backend.env.proxy.counts["GET"] <= touched
    backend.env.proxy.reset_counts()
    single = [ds[i] for i in idx]
    assert backend.env.proxy.counts["GET"] == len(idx)
    same(batch, single)


def test_coalesce_merges_only_close_ranges() -> None:
    starts, ends = np.array([0, 100, 1000, 1045]), np.array([90, 200, 1040, 1100])
    assert coalesce(starts, ends, 9) == [(0, 90, [0]), (100, 200, [1]), (1000, 1100, [2, 3])]
    assert coalesce(starts, ends, 800) == [(0, 1100, [0, 1, 2, 3])]
    assert coalesce(starts, ends, 0) == [(0, 90, [0]), (100, 200, [1]), (1000, 1040, [2]), (1045, 1100, [3])]


def test_collate_returns_the_batch_tensor_without_a_copy(src: Path, tmp_path: Path) -> None:
    from torch.utils.data import default_collate

    from latentds.batch_read import collate

    b = Backend("local", str(tmp_path / "cache"))
    make(src, b, image_size=(48, 40)).fill(progress=False)
    make(src, b, image_size=(48, 40)).compact()
    ds = make(src, b, image_size=(48, 40))
    idx = shuffled(ds, 6)[:10]
    items = ds.__getitems__(idx)
    x, y = collate(items)
    rx, ry = default_collate([ds[i] for i in idx])
    assert torch.equal(x, rx) and torch.equal(y, ry) and x.data_ptr() == items[0][0].data_ptr()
    # not rows of one tensor in order (a reordered batch): default_collate's copy, same values
    x2, _ = collate(items[::-1])
    assert torch.equal(x2, rx.flip(0)) and x2.data_ptr() != items[-1][0].data_ptr()
    loader = DataLoader(ds, batch_size=4, collate_fn=collate)
    assert torch.equal(torch.cat([xb for xb, _ in loader]), torch.stack([ds[i][0] for i in range(len(ds))]))


def test_shard_aware_sampler_covers_every_sample_within_windows(src: Path, tmp_path: Path) -> None:
    from latentds.sampler import ShardAwareSampler

    b = Backend("local", str(tmp_path / "cache"))
    kw = {"image_size": (48, 40)}
    ds = make(src, b, **kw)
    ds.fill(indices=range(12), progress=False)
    ds.compact(shard_samples=3)  # 4 shards of 3; the other samples are not committed yet
    ds = make(src, b, **kw)
    s = ShardAwareSampler(ds, window=2, seed=1)
    order = list(s)
    assert sorted(order) == list(range(len(ds))) and len(s) == len(ds)
    m = ds.store.manifest()
    shard_of = {i: m.locate(m.find(ds.key(i)))[0] for i in range(12)}
    assert set(order[12:]) == set(range(12, len(ds)))  # the uncommitted group comes last
    for w in (order[:6], order[6:12]):
        assert len({shard_of[i] for i in w}) == 2  # one window: exactly its two shards
    s.set_epoch(1)
    assert list(s) != order and sorted(list(s)) == sorted(order)
    loader = DataLoader(ds, batch_size=6, sampler=ShardAwareSampler(ds, window=2, seed=1))
    assert torch.equal(next(iter(loader))[0], torch.stack([ds[i][0] for i in order[:6]]))
    with pytest.raises(ValueError):
        ShardAwareSampler(ds, window=0)


# -- issue 15, this session: mapped reads, CRC once, whole-shard copies, shuffle quality ------------

def test_mapped_read_checks_once_then_trusts_only_what_it_checked(src: Path, tmp_path: Path) -> None:
    b = Backend("local", str(tmp_path / "cache"))
    kw = {"image_size": (48, 40)}
    make(src, b, **kw).fill(progress=False)
    make(src, b, **kw).compact()
    ds = make(src, b, **kw)
    idx = shuffled(ds, 7)
    ref = [ds[i] for i in idx]
    ds.batch_verify = "once"
    same(ds.__getitems__(idx[:8]), ref[:8])  # the first read checks (and remembers) these 8
    same(ds.__getitems__(idx[:8]), ref[:8])
    # a sample this process never checked is still checked on its first read, in any dataset
    _corrupt(ds, idx[-1])
    fresh = make(src, b, **kw)
    fresh.batch_verify = "once"
    with pytest.raises(ShardError, match="checksum mismatch"):
        fresh.__getitems__(idx[-4:])
    with pytest.raises(ShardError, match="checksum mismatch"):
        ds.__getitems__([*idx[:8], idx[-1]])
    same(ds.__getitems__(idx[:-1]), ref[:-1])


def test_mapped_read_of_a_shard_truncated_after_mapping_raises_shard_error(src: Path, tmp_path: Path) -> None:
    b = Backend("local", str(tmp_path / "cache"))
    kw = {"image_size": (48, 40)}
    make(src, b, **kw).fill(progress=False)
    make(src, b, **kw).compact()
    ds = make(src, b, **kw)
    idx = shuffled(ds, 8)
    same(ds.__getitems__(idx), [ds[i] for i in idx])  # every shard is mapped now
    m = ds.store.manifest()
    path = ds.store.shard_path(m.shards[0])
    os.chmod(path, 0o644)
    os.truncate(path, os.path.getsize(path) // 3)  # in place, under the live map: no SIGBUS
    with pytest.raises(ShardError, match="truncated"):
        ds.__getitems__(idx)


def test_shard_copies_on_s3_read_each_shard_once(src: Path, backend: Backend, tmp_path: Path) -> None:
    if backend.env is None:
        pytest.skip("counts requests through the loopback S3 proxy")
    kw = {"image_size": (48, 40)}
    make(src, backend, **kw).fill(progress=False)
    make(src, backend, **kw).compact(shard_samples=5)
    plain = make(src, backend, **kw)
    idx = shuffled(plain, 9)
    ref = [plain[i] for i in idx]
    ds = make(src, backend, local_cache=tmp_path / "rt", **kw)
    ds[0]
    m = ds.store.manifest()
    proxy = backend.env.proxy
    proxy.reset_counts()
    same(ds.__getitems__(idx[:7]), ref[:7])
    touched = len({m.locate(m.find(ds.key(i)))[0] for i in idx[:7]})
    assert proxy.counts["GET"] == touched  # each shard touched: one whole GET, no ranges
    same(ds.__getitems__(idx), ref)
    assert proxy.counts["GET"] == len(m.shards)
    proxy.reset_counts()
    same(ds.__getitems__(idx), ref)  # a second epoch: no request at all
    assert sum(proxy.counts.values()) == 0
    copies = sorted((tmp_path / "rt" / "shards").iterdir())
    assert [p.name for p in copies] == sorted(m.shards)
    # a corrupt local copy is never served: the batch is re-read, the copy dropped and refetched
    row = m.find(ds.key(idx[0]))
    bad = tmp_path / "rt" / "shards" / m.locate(row)[0]
    off, length = m.locate(row)[1:3]
    good = bad.read_bytes()
    with open(bad, "r+b") as fh:  # bit rot in place, under the live map
        fh.seek(off + length - 3)
        fh.write(bytes([good[off + length - 3] ^ 0x40]))
    proxy.reset_counts()
    same(ds.__getitems__(idx), ref)
    assert not bad.exists() or bad.read_bytes() == good  # dropped (the batch was re-read per sample)
    same(ds.__getitems__(idx), ref)
    assert bad.read_bytes() == good and proxy.counts["GET"] >= 2  # fetched again whole


def test_mixing_of_a_global_shuffle_and_of_shard_windows(src: Path, tmp_path: Path) -> None:
    from latentds.sampler import ShardAwareSampler, mixing

    b = Backend("local", str(tmp_path / "cache"))
    kw = {"image_size": (48, 40)}
    make(src, b, **kw).fill(progress=False)
    make(src, b, **kw).compact(shard_samples=2)
    ds = make(src, b, **kw)
    groups = ShardAwareSampler(ds).groups()
    n_sh = len(groups)
    assert all(len(g) == 2 for g in groups)  # so windows of 2 shards are batches of 4
    glob = mixing(np.random.default_rng(0).permutation(len(ds)), groups, 4)
    win = mixing(list(ShardAwareSampler(ds, window=2, seed=0)), groups, 4)
    seq = mixing(np.concatenate(groups), groups, 4)
    assert win["shards_per_batch"] == 2 < glob["shards_per_batch"]
    assert win["pair_coverage"] < glob["pair_coverage"] and seq["position_corr"] > 0.95
    assert glob["position_corr"] < win["position_corr"] and n_sh >= 4


def test_batch_checks_member_names_as_one_matrix(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The names of a batch's tar members are compared with the manifest's keys as one byte
    matrix (``Manifest.key_matrix``), not one ``check_member`` per sample: after the manifest's
    key index changed, the batched path had silently fallen back to the per-sample check."""
    b = Backend("local", str(tmp_path / "cache"))
    kw = {"image_size": (48, 40)}
    make(src, b, **kw).fill(progress=False)
    make(src, b, **kw).compact()
    ds = make(src, b, **kw)
    idx = shuffled(ds, 9)
    ref = [ds[i] for i in idx]

    def per_sample_check(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the batched path checked a member name per sample")

    import latentds.batch_mapped as bm

    monkeypatch.setattr(bm, "check_member", per_sample_check)
    for mmap in (True, False):
        ds.batch_mmap = mmap
        same(ds.__getitems__(idx), ref)
