"""Review R4 of 0fef8de (latentds/epoch_box.py after review R3: sequence number, one owner
process per box, seqlock). Each test asserts what the module docstring promises and is a strict
xfail until the bug is fixed (then remove the mark)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

from latentds import LatentIterableDataset
from latentds.store import ShardedStore
from latentds.store.entries import LatentCache

FORK = multiprocessing.get_context("fork")


def _store(tmp_path: Path, n: int = 20) -> None:
    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    for i in range(n):
        k = f"{i:040x}"
        s.cache.put(k, np.full((2, 3), i, np.float32), None, {"key": k, "target": i})
    s.compact(shard_samples=3)


def _ds(tmp_path: Path) -> LatentIterableDataset:
    return LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=True, seed=7)


def _order(ds: Any, workers: int) -> list[int]:
    loader = DataLoader(ds, batch_size=4, num_workers=workers, multiprocessing_context=FORK if workers else None)
    return [int(t) for _, ts in loader for t in ts]


def _child(ds: LatentIterableDataset, go: Any, out: Any) -> None:
    go.wait(30)  # the parent has called set_epoch(5) since this process got the dataset
    out.put((ds.epoch, _order(ds, 0), _order(ds, 1)))


def test_r4_a_set_epoch_after_another_process_got_the_dataset_does_not_reach_its_workers(tmp_path: Path) -> None:
    _store(tmp_path)
    ds = _ds(tmp_path)
    go, out = FORK.Event(), FORK.Queue()
    p = FORK.Process(target=_child, args=(ds, go, out))  # a forked helper (Pool child, eval process)
    p.start()
    ds.set_epoch(5)  # the parent moves on: its own epoch, not the child's
    go.set()
    epoch, in_process, with_workers = out.get(timeout=60)
    p.join(30)
    assert epoch == 0
    # the child's DataLoader workers must stream the child's epoch (0), as the child itself does;
    # now they adopt the parent's epoch 5 (the box own() copied at the child's fork)
    assert with_workers == in_process


def test_r4_a_shallow_copys_set_epoch_does_not_reach_the_originals_workers(tmp_path: Path) -> None:
    import copy

    _store(tmp_path)
    ds = _ds(tmp_path)
    loader = DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True, multiprocessing_context=FORK)
    [t for _, t in loader]
    ds.set_epoch(1)
    ev = copy.copy(ds)  # e.g. an evaluation view of the same data (its own epoch)
    ev.set_epoch(0)
    ref = _ds(tmp_path)
    ref.set_epoch(1)
    assert ds.epoch == 1
    # now: ds's workers stream epoch 0, the copy's epoch (deepcopy/pickle copies are fine)
    assert [int(t) for _, ts in loader for t in ts] == _order(ref, 0)


def test_r4_an_epoch_that_does_not_pack_leaves_the_box_readable() -> None:
    """R4 nit 3: put() used to make the sequence odd before packing, so set_epoch(2**63) raised a
    bare struct.error and left the box 'being written' (readers retried ~10 s, then failed)."""
    from latentds.epoch_box import EpochBox
    from latentds.errors import ConfigError

    box = EpochBox()
    box.put(3, {"generation": "g"})
    with pytest.raises(ConfigError, match="64 bits"):
        box.put(2**63, {"generation": "h"})
    reader = EpochBox.__new__(EpochBox)
    reader.__setstate__(box.__getstate__() | {"_seen": 0})
    assert reader.news() == (3, {"generation": "g"})  # at once, and the last good write
