"""``LatentIterableDataset(batch_size=B)`` (latentds/stream_batch.py): whole batches, exactly those
``DataLoader(per-sample dataset, batch_size=B, drop_last=...)`` collates, batch by batch: same
samples, order, per-worker batch boundaries, dtypes; the same typed error at a corrupt sample."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from latentds import LatentDataset, LatentIterableDataset
from latentds.errors import CacheError, ConfigError, ShardError
from latentds.store import ShardedStore
from latentds.store.entries import LatentCache
from latentds.stream_batch import _allocate
from latentds.testing.synthetic import make_dataset

N = 23  # not a multiple of any batch size used: every worker has a partial last batch
FORK = multiprocessing.get_context("fork")


def _key(i: int) -> str:
    return f"{i:040x}"


def _cache(tmp_path: Path, shapes: dict[int, tuple[int, ...]] | None = None,
           shard_samples: int = 5) -> tuple[ShardedStore, Any]:
    """N samples, target i % 3; 5 rows a shard (2 workers get 3 shards and 2), or one shard"""
    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    rng = np.random.default_rng(0)
    for i in range(N):
        shape = (shapes or {}).get(i, (2, 3, 4))
        s.cache.put(_key(i), rng.standard_normal(shape).astype(np.float32), None, {"key": _key(i), "target": i % 3})
    s.compact(shard_samples=shard_samples)
    return s, s.refresh()


def _loader(ds: LatentIterableDataset, workers: int, **kw: Any) -> DataLoader:
    return DataLoader(ds, num_workers=workers, multiprocessing_context=FORK if workers else None, **kw)


def _both(make: Any, batch: int, workers: int, drop_last: bool) -> tuple[list[Any], list[Any]]:
    """Batches of the per-sample mode under DataLoader(batch_size=B) and of the batched mode."""
    per_sample = list(_loader(make(), workers, batch_size=batch, drop_last=drop_last))
    batched = list(_loader(make(batch_size=batch, drop_last=drop_last), workers, batch_size=None))
    return per_sample, batched


def _same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for (xa, ta), (xb, tb) in zip(a, b):
        assert xa.dtype == xb.dtype and xa.shape == xb.shape and torch.equal(xa, xb)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_equal_the_per_sample_loaders(tmp_path: Path, shuffle: bool, workers: int) -> None:
    _cache(tmp_path)

    def make(**kw: Any) -> LatentIterableDataset:
        ds = LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=shuffle, seed=4, **kw)
        ds.set_epoch(2)
        return ds

    for batch, drop_last in ((4, False), (7, True)):
        a, b = _both(make, batch, workers, drop_last)
        _same(a, b)
        assert b[0][0].dtype == torch.float32 and b[0][1].dtype == torch.int64
        sizes = sorted(len(t) for _, t in b)
        ds = make()
        by_shard = ds._plan()[1]
        per_worker = [sum(len(by_shard[s]) for s in ds.shards()[w::max(workers, 1)]) for w in range(max(workers, 1))]
        # each worker batches its own stream: its last batch partial (kept unless drop_last)
        assert sizes == sorted(sum(([batch] * (c // batch) + ([c % batch] if c % batch and not drop_last else [])
                                    for c in per_worker), []))
        assert len(set(sizes)) > 1 or drop_last
        seen = torch.cat([t for _, t in b])
        if not drop_last:
            assert sorted(seen.tolist()) == sorted(i % 3 for i in range(N))  # every sample once


def test_transforms_take_the_per_sample_path_and_collate_the_same(tmp_path: Path) -> None:
    _cache(tmp_path)
    for tf, ttf in ((None, float), (lambda z: z[:, :2] * 2, None), (lambda z: z + 1, lambda t: (t, -t))):
        def make(**kw: Any) -> LatentIterableDataset:
            return LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, transform=tf, target_transform=ttf,
                                         **kw)

        a, b = _both(make, 6, 2, False)
        assert len(a) == len(b) >= 4
        for (xa, ta), (xb, tb) in zip(a, b):
            assert xa.dtype == xb.dtype and torch.equal(xa, xb)
            if isinstance(ta, torch.Tensor):
                assert ta.dtype == tb.dtype and torch.equal(ta, tb)
            else:  # a tuple target: collated per position, as default_collate does
                assert len(ta) == len(tb) and all(torch.equal(p, q) for p, q in zip(ta, tb))
        if ttf is float:
            assert b[0][1].dtype == torch.float64


@pytest.fixture(scope="module")
def views_ds(tmp_path_factory: pytest.TempPathFactory) -> LatentDataset:
    root = tmp_path_factory.mktemp("sb") / "src"
    make_dataset(root, n_per_class=5, shape=(40, 32))
    ds = LatentDataset(root, codec="bicubic-f4", cache=tmp_path_factory.mktemp("sb_c") / "c", views=2,
                       image_size=(40, 32))
    assert not ds.fill(progress=False).failures
    ds.compact(shard_samples=3)
    return ds


@pytest.mark.parametrize("workers", [0, 2])
def test_from_dataset_with_views_and_a_rank_split(views_ds: LatentDataset, workers: int) -> None:
    served = 0  # over both ranks: every sample once (how many each rank gets depends on the keys,
    for rank in (0, 1):  # which depend on the fixture's absolute path: a CI clone gave one rank 3)
        def make(**kw: Any) -> LatentIterableDataset:
            it = LatentIterableDataset.from_dataset(views_ds, rank=rank, world_size=2, shuffle=True, seed=1, **kw)
            it.set_epoch(3)
            return it

        a, b = _both(make, 3, workers, False)
        _same(a, b)
        it = make()
        mine = sum(len(t) for _, t in b)
        assert mine == sum(len(it._plan()[1][s]) for s in it.my_shards()) > 0
        served += mine
    assert served == len(views_ds)


def test_samples_of_other_shapes_in_one_batch_are_a_config_error_naming_both(tmp_path: Path) -> None:
    _cache(tmp_path, {5: (2, 5)}, shard_samples=N)
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=4)
    it = iter(DataLoader(ds, batch_size=None))
    x, t = next(it)  # samples 0-3 stack
    assert x.shape == (4, 2, 3, 4) and t.tolist() == [0, 1, 2, 0]
    with pytest.raises(ConfigError) as e:
        next(it)
    msg = str(e.value)
    assert _key(4) in msg and _key(5) in msg and "(2, 3, 4)" in msg and "(2, 5)" in msg and "batch_size=None" in msg
    # the per-sample mode serves it, batched by a collate_fn of the user's
    got = list(DataLoader(LatentIterableDataset(str(tmp_path / "c"), "ns"), batch_size=4, collate_fn=list))
    assert [tuple(z.shape) for z, _ in got[1]][1] == (2, 5)
    # with a transform: the same error from the collate of the transformed tensors
    tds = LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=4, transform=lambda z: z + 0)
    with pytest.raises(ConfigError, match=f"{_key(4)}.*{_key(5)}.*batch_size=None"):
        list(tds)


def _flip(s: ShardedStore, m: Any, i: int) -> None:
    """Flip the last byte of sample ``i``'s member in its shard."""
    row = int(m.find_many([_key(i)])[0])
    off, length, *_ = m.row_layout(row)
    rel = f"shards/{m.shards[m.shard_ids()[row]]}"
    data = bytearray(s.backend.get(rel))
    data[off + length - 1] ^= 0xFF
    s.backend.put(rel, bytes(data))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("transform", [None, torch.neg])
def test_a_corrupt_sample_mid_batch_raises_the_per_sample_error(tmp_path: Path, workers: int, transform: Any) -> None:
    s, m = _cache(tmp_path, shard_samples=N)  # one shard: stream order is key order
    _flip(s, m, 7)  # in the second batch of 4

    def run(own: int | None, loader: int | None) -> tuple[list[Any], BaseException]:
        ds = LatentIterableDataset(str(tmp_path / "c"), "ns", prefetch=0, transform=transform, batch_size=own)
        got: list[Any] = []
        try:
            for batch in _loader(ds, workers, batch_size=loader):
                got.append(batch)
        except ShardError as exc:
            # its traceback holds the DataLoader iterator: dropped, the workers stop now (in
            # a garbage collection later, torch's teardown waits ~5 s for them)
            exc.__traceback__ = None
            return got, exc
        raise AssertionError("no ShardError")

    with pytest.raises(ShardError) as plain:  # the error itself, raised in this process
        list(LatentIterableDataset(str(tmp_path / "c"), "ns"))
    assert re.search(f"{_key(7)}.*checksum mismatch", str(plain.value))
    a, ea = run(None, 4)  # per sample, batched by the DataLoader
    b, eb = run(4, None)
    assert type(ea) is type(eb) is ShardError and str(plain.value) in str(ea) and str(plain.value) in str(eb)
    _same(a, b)
    assert len(b) == 1 and b[0][1].tolist() == [0, 1, 2, 0]  # samples 0-3, then the batch of sample 7 raises


def test_a_corrupt_sample_after_a_shape_mismatch_in_the_same_batch_raises_the_shard_error(tmp_path: Path) -> None:
    s, m = _cache(tmp_path, {1: (2, 5)}, shard_samples=N)
    _flip(s, m, 2)  # default_collate would never be reached: fetching sample 2 raises first
    with pytest.raises(ShardError, match=_key(2)):
        list(LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=4))


def test_drop_last_still_checks_the_dropped_samples(tmp_path: Path) -> None:
    s, m = _cache(tmp_path, shard_samples=N)
    _flip(s, m, N - 1)  # in the partial last batch: the per-sample fetcher reads it before dropping
    with pytest.raises(ShardError, match=_key(N - 1)):
        list(DataLoader(LatentIterableDataset(str(tmp_path / "c"), "ns"), batch_size=4, drop_last=True))
    with pytest.raises(ShardError, match=_key(N - 1)):
        list(LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=4, drop_last=True))


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_batch_size_is_validated(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=bad)


def test_drop_last_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="drop_last must be True or False"):
        LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=4, drop_last="yes")  # type: ignore[arg-type]


def test_worker_batches_are_built_in_shared_memory(tmp_path: Path) -> None:
    """The batch a worker builds is already in shared memory (as default_collate's), so the
    DataLoader sends a handle instead of copying it there first. collate_fn runs in the worker."""
    _cache(tmp_path)
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=8)
    flags = [(x.is_shared(), len(x)) for x, _ in _loader(ds, 2, batch_size=None, collate_fn=lambda b: b)]
    assert flags and all(shared for shared, _ in flags) and sum(n for _, n in flags) == N
    assert not _allocate((2, 3), np.dtype(np.float32), False).is_shared()
    x = _allocate((2, 3), np.dtype(np.float16), True)
    assert x.is_shared() and x.shape == (2, 3) and x.dtype == torch.float16
    # iterated directly (main process): tuples of plain tensors
    x, t = next(iter(ds))
    assert isinstance(x, torch.Tensor) and x.shape == (8, 2, 3, 4) and t.dtype == torch.int64


@pytest.mark.parametrize("workers", [0, 2])
def test_mixed_dtypes_of_one_shape_collate_as_per_sample(tmp_path: Path, workers: int) -> None:
    """default_collate promotes (main process) or casts into the first's dtype (worker): the same."""
    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    rng = np.random.default_rng(1)
    for i in range(N):
        z = rng.standard_normal((2, 3, 4)).astype(np.float16 if i in (0, 6) else np.float32)
        s.cache.put(_key(i), z, None, {"key": _key(i), "target": i % 3})
    s.compact(shard_samples=N)

    def make(**kw: Any) -> LatentIterableDataset:
        return LatentIterableDataset(str(tmp_path / "c"), "ns", **kw)

    a, b = _both(make, 4, workers, False)
    _same(a, b)
    # batch 0 starts with a float16 sample: promoted to float32 in the main process, cast to
    # float16 in a worker (default_collate stacks into a tensor of the first sample's dtype there)
    assert b[0][0].dtype == (torch.float32 if workers == 0 else torch.float16)
    assert b[1][0].dtype == torch.float32  # float32 first: float16 sample 6 promoted or cast up alike


def test_transformed_batches_are_not_held_by_the_generator(tmp_path: Path) -> None:
    import gc
    import weakref

    _cache(tmp_path)
    it = iter(LatentIterableDataset(str(tmp_path / "c"), "ns", batch_size=4, transform=lambda z: z * 1))
    x, _ = next(it)
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None


def test_string_targets_are_default_collates_tuple(tmp_path: Path) -> None:
    """The dataset yields what default_collate makes of the per-sample tuples (strings: a tuple);
    DataLoader(batch_size=None) then applies torch's default_convert, which lists every tuple."""
    _cache(tmp_path, shard_samples=N)

    def ttf(t: int) -> str:
        return f"class{t}"

    per = list(DataLoader(LatentIterableDataset(str(tmp_path / "c"), "ns", target_transform=ttf), batch_size=4))
    mine = list(LatentIterableDataset(str(tmp_path / "c"), "ns", target_transform=ttf, batch_size=4))
    assert [t for _, t in mine] == [t for _, t in per] and all(type(t) is tuple for _, t in mine)
    via = list(DataLoader(LatentIterableDataset(str(tmp_path / "c"), "ns", target_transform=ttf, batch_size=4),
                          batch_size=None))
    assert [t for _, t in via] == [list(t) for _, t in per]


def test_nothing_to_stream_says_why(tmp_path: Path) -> None:
    """H3's audit: a namespace typo or a wrong cache URL is not 'run compact first'."""
    s, _ = _cache(tmp_path)
    s.cache.write_info({})  # as LatentDataset and encode describe a namespace
    with pytest.raises(CacheError) as e:
        list(LatentIterableDataset(str(tmp_path / "c"), "deadbeef"))
    assert "no namespace 'deadbeef'" in str(e.value)
    assert "the namespaces here are ns" in str(e.value) and "compact" not in str(e.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(CacheError, match="there is no latentds namespace here"):
        list(LatentIterableDataset(str(tmp_path / "plain"), "ns"))
    with pytest.raises(CacheError, match="no committed shards; run compact first .there is no cache at"):
        list(LatentIterableDataset(str(tmp_path / "nowhere"), "ns"))
    s = ShardedStore(LatentCache(str(tmp_path / "staged"), "ns"))  # a namespace with nothing compacted
    s.cache.put(_key(0), np.zeros((2, 3, 4), np.float32), None, {"key": _key(0), "target": 0})
    s.cache.write_info({})
    with pytest.raises(CacheError, match=r"CURRENT.json: no committed shards; run compact first$"):
        list(LatentIterableDataset(str(tmp_path / "staged"), "ns"))
