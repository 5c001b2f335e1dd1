"""Spawned streaming workers get what grows with the dataset beside their pickle
(``latentds.store.sidefile``): the pickle stays under the 64 KiB spawn pipe at any size, the
worker serves the same samples, superseded files are removed, and a missing or corrupt side
file raises a typed error naming it."""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
from multiprocessing import context
from typing import Iterator

import numpy as np
import pytest
import torch

from latentds.errors import CacheError


@contextlib.contextmanager
def _as_spawning() -> Iterator[None]:
    """What multiprocessing does while it pickles a process it is spawning (popen_spawn_posix,
    popen_forkserver): ``get_spawning_popen()`` is set. Real spawned workers: test_spawn_plan."""
    context.set_spawning_popen(object())
    try:
        yield
    finally:
        context.set_spawning_popen(None)


def _cache(url: str, n: int) -> None:
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache

    s = ShardedStore(LatentCache(url, "ns"))
    rng = np.random.default_rng(1)
    for i in range(n):
        k = f"{i:040x}"
        s.cache.put(k, rng.standard_normal((2, 2, 2)).astype(np.float32), None, {"key": k, "target": i % 7})
    s.compact(shard_samples=max(1, n // 4))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(int(s) == int(t) and torch.equal(x, y) for (x, s), (y, t) in zip(a, b))


@pytest.fixture(scope="module")
def big_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("side") / "c")
    _cache(url, 3000)  # 3,000 keys (~150 KB of samples) and rows (~260 KB of plan): over the pipe
    return url


def test_spawned_pickle_stays_under_the_pipe_and_serves_the_same_samples(big_cache: str) -> None:
    from latentds import LatentIterableDataset
    from latentds.store.epochplan import EpochPlan

    samples = {f"{i:040x}": 1000 + i for i in range(0, 3000, 1)}
    it = LatentIterableDataset(big_cache, "ns", samples=samples, shuffle=True, seed=2)
    want = list(it)
    plain = pickle.dumps(it)  # an explicit pickle stays self-contained, as before
    assert len(plain) > 64 << 10 and "_side" not in pickle.loads(plain).__dict__
    with _as_spawning():
        raw = pickle.dumps(it)
    assert len(raw) < 8 << 10, len(raw)  # the name and digest of a file, not the state
    (side,) = it._shipped
    assert os.path.exists(side.path) and side.size > 64 << 10
    copy = pickle.loads(raw)
    assert "samples" not in copy.__dict__  # loaded on first use, in the worker
    assert _same(list(copy), want)
    assert isinstance(copy._pinned[1], EpochPlan) and copy.samples == samples
    assert _same(list(pickle.loads(pickle.dumps(copy))), want)  # a worker's copy pickles whole
    with _as_spawning():
        assert len(pickle.dumps(it)) == len(raw) and len(it._shipped) == 1  # the second worker: same file


def test_small_state_stays_in_the_pickle(big_cache: str) -> None:
    from latentds import LatentIterableDataset

    it = LatentIterableDataset(big_cache, "ns", samples={f"{i:040x}": i for i in range(20)})
    with _as_spawning():
        copy = pickle.loads(pickle.dumps(it))
    assert "_side" not in copy.__dict__ and not it._shipped and len(list(copy)) == 20


def test_superseded_side_files_are_removed(big_cache: str) -> None:
    from latentds import LatentIterableDataset

    it = LatentIterableDataset(big_cache, "ns", samples={f"{i:040x}": i for i in range(3000)}, views=1)
    paths = []
    for epoch in range(4):
        it.samples = {f"{i:040x}": i + epoch for i in range(3000)}  # a different state per epoch
        it.set_epoch(epoch)
        with _as_spawning():
            pickle.dumps(it)
        paths.append(it._shipped[-1].path)
    assert [os.path.exists(p) for p in paths] == [False, False, True, True]  # the last two epochs' files
    del it
    gc.collect()
    assert not any(os.path.exists(p) for p in paths)  # the dataset collected: its files too


def test_missing_or_corrupt_side_file_raises_naming_it(big_cache: str) -> None:
    from latentds import LatentIterableDataset

    it = LatentIterableDataset(big_cache, "ns", samples={f"{i:040x}": i for i in range(3000)})
    with _as_spawning():
        raw = pickle.dumps(it)
    path = it._shipped[0].path
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CacheError, match=f"{path}.*corrupt"):
        list(pickle.loads(raw))
    os.unlink(path)
    copy = pickle.loads(raw)
    with pytest.raises(CacheError, match=f"{path}.*cannot be read"):
        copy.my_shards()
    with pytest.raises(CacheError, match=f"{path}"):  # every later use, too: never a silent empty epoch
        list(copy)


@pytest.mark.slow  # two spawned workers import torch: ~10 s on the shared 2-core machine
def test_real_spawned_workers_read_the_side_file(big_cache: str) -> None:
    import multiprocessing

    from torch.utils.data import DataLoader

    from latentds import LatentIterableDataset

    samples = {f"{i:040x}": 5 + i for i in range(0, 3000, 3)}
    it = LatentIterableDataset(big_cache, "ns", samples=samples)
    want = sorted(((int(t), x) for x, t in it), key=lambda p: p[0])
    loader = DataLoader(it, batch_size=None, num_workers=2, multiprocessing_context=multiprocessing.get_context("spawn"))
    got = sorted(((int(t), x) for x, t in loader), key=lambda p: p[0])
    assert len(it._shipped) == 1  # both workers' state went beside their pickles, in one file
    assert [t for t, _ in got] == [t for t, _ in want] and all(torch.equal(x, y) for (_, x), (_, y) in zip(got, want))


def test_epoch_plan_rows_are_the_manifests(big_cache: str) -> None:
    """EpochPlan gathers its rows through Manifest.row_columns (public, vectorised): the same
    layout, target and CRC32C per row as the manifest's own per-row calls."""
    from latentds import LatentIterableDataset
    from latentds.store.epochplan import EpochPlan

    it = LatentIterableDataset(big_cache, "ns", shuffle=True, seed=1)
    m, by_shard = it._plan()
    assert m.row_columns(np.array([0, 5])).shape == (2, 6)
    plan = EpochPlan.from_manifest(m, by_shard)
    rows = [r for s in by_shard for r in by_shard[s]]
    for i in (0, 1, len(rows) // 2, len(rows) - 1):
        assert plan.row_layout(i) == m.row_layout(rows[i]) and plan.crc32c_at(i) == m.crc32c_at(rows[i]) >= 0
        assert plan.key_bytes(i) == m.key_bytes(rows[i])
