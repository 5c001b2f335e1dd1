"""``LatentIterableDataset`` under ``DataLoader(persistent_workers=True)``: ``set_epoch`` in the
main process reaches the workers' copies (latentds/epoch_box.py), so each epoch is exactly what
a fresh loader yields for that epoch (shard order, shuffle, views, generation)."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from latentds import LatentIterableDataset
from latentds.store import ShardedStore
from latentds.store.entries import LatentCache

FORK = multiprocessing.get_context("fork")


def _put(s: ShardedStore, i: int) -> None:
    k = f"{i:040x}"
    s.cache.put(k, np.full((2, 3), i, np.float32), None, {"key": k, "target": i})


def _store(tmp_path: Path, n: int = 20) -> ShardedStore:
    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    for i in range(n):
        _put(s, i)
    s.compact(shard_samples=3)
    return s


def _epoch(loader: DataLoader) -> list[int]:
    return [int(t) for _, ts in loader for t in ts]


def _fresh(tmp_path: Path, epoch: int, **kw: Any) -> list[int]:
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, seed=7, **kw)
    ds.set_epoch(epoch)
    return _epoch(DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=FORK))


def test_persistent_workers_follow_set_epoch(tmp_path: Path) -> None:
    _store(tmp_path)
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, multiprocessing_context=FORK)
    seen = []
    for e in (0, 1, 2):
        ds.set_epoch(e)
        got = _epoch(loader)
        assert got == _fresh(tmp_path, e) and sorted(got) == list(range(20))
        seen.append(got)
    assert seen[0] != seen[1] != seen[2]  # the shuffle moved (it repeated epoch 0 before)
    again = _epoch(loader)  # no set_epoch: the same epoch again, as fresh workers would give
    assert again == seen[2]


def test_persistent_workers_read_the_generation_the_main_process_pinned(tmp_path: Path) -> None:
    s = _store(tmp_path)
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, seed=7, batch_size=4)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context=FORK)
    assert sorted(_epoch(loader)) == list(range(20))
    _put(s, 99)
    s.compact(shard_samples=3)  # a new generation between epochs
    ds.set_epoch(1)  # pinned here, in the main process
    _put(s, 100)
    s.compact(shard_samples=3)  # and another one the epoch must not see
    got = _epoch(loader)
    assert sorted(got) == list(range(20)) + [99]  # every worker read the pinned one: each sample once


def test_a_pickled_copy_keeps_its_epoch(tmp_path: Path) -> None:
    _store(tmp_path)
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, seed=7)
    ds.set_epoch(3)
    copy = pickle.loads(pickle.dumps(ds))  # a plain pickle: a private box, same epoch
    assert copy.epoch == 3 and [int(t) for _, t in copy] == [int(t) for _, t in ds]
    assert isinstance(ds._box._t, torch.Tensor) and ds._box._t.is_shared()


@pytest.mark.slow
def test_persistent_spawned_workers_follow_set_epoch(tmp_path: Path) -> None:
    """Spawned workers receive the shared box as torch sends shared tensors (a handle)."""
    _store(tmp_path)
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True,
                        multiprocessing_context=multiprocessing.get_context("spawn"))
    for e in (0, 1):
        ds.set_epoch(e)
        assert _epoch(loader) == _fresh(tmp_path, e)


def test_persistent_workers_reuse_the_loaded_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A persistent worker plans a new epoch of the same generation from the manifest it already
    loaded (at 10M rows a load is ~1.8 CPU s per worker); a new generation is loaded. Loads are
    counted in a file the forked workers append to (they inherit the wrapped method)."""
    from latentds.store.manifest import ManifestStore

    s = _store(tmp_path)
    log = tmp_path / "loads.txt"
    real = ManifestStore.load

    def counted(self: Any, ptr: Any = None) -> Any:
        if torch.utils.data.get_worker_info() is not None:
            with open(log, "a") as f:
                f.write("load\n")
        return real(self, ptr)

    monkeypatch.setattr(ManifestStore, "load", counted)
    ds = LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, seed=7)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, multiprocessing_context=FORK)
    for e in (0, 1, 2):
        ds.set_epoch(e)
        assert _epoch(loader) == _fresh(tmp_path, e)
    assert not log.exists()  # epochs 1 and 2: the same generation, planned from the one loaded
    _put(s, 99)
    s.compact(shard_samples=3)
    ds.set_epoch(3)
    assert sorted(_epoch(loader)) == list(range(20)) + [99]
    assert log.read_text().split() == ["load", "load"]  # one per worker for the new generation
