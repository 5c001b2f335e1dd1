"""Review R1 of commit 2979b7d (``LatentIterableDataset(batch_size=B, drop_last=)``,
latentds/stream_batch.py): cases where the batched mode does NOT give what
``DataLoader(per-sample dataset, batch_size=B, drop_last=...)`` gives. Each test asserts the
claimed behaviour and is a strict xfail until the bug is fixed (then remove the mark)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from latentds import LatentIterableDataset
from latentds.errors import ConfigError
from latentds.store import ShardedStore
from latentds.store.entries import LatentCache

N = 23  # one shard, stream order = key order; batches of 4: 5 whole + a partial of 3 (samples 20-22)


def _key(i: int) -> str:
    return f"{i:040x}"


def _cache(tmp_path: Path, shapes: dict[int, tuple[int, ...]] | None = None,
           dtypes: dict[int, Any] | None = None) -> str:
    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    rng = np.random.default_rng(0)
    for i in range(N):
        z = rng.standard_normal((shapes or {}).get(i, (2, 3, 4))).astype((dtypes or {}).get(i, np.float32))
        s.cache.put(_key(i), z, None, {"key": _key(i), "target": i % 3})
    s.compact(shard_samples=N)
    return str(tmp_path / "c")


def test_r1_drop_last_drops_a_partial_batch_of_mixed_shapes_without_error(tmp_path: Path) -> None:
    c = _cache(tmp_path, shapes={N - 1: (2, 5)})  # the odd sample is in the dropped partial batch (20-22)
    per = list(DataLoader(LatentIterableDataset(c, "ns"), batch_size=4, drop_last=True))
    assert len(per) == 5  # the per-sample loader: 5 whole batches, no error
    got = list(DataLoader(LatentIterableDataset(c, "ns", batch_size=4, drop_last=True), batch_size=None))
    assert len(got) == 5 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(per, got))


def test_r1_mixed_dtypes_of_one_shape_batch_as_the_per_sample_loader(tmp_path: Path) -> None:
    c = _cache(tmp_path, dtypes={5: np.float16})
    per = list(DataLoader(LatentIterableDataset(c, "ns"), batch_size=4))
    assert len(per) == 6 and per[1][0].dtype == torch.float32  # promoted by torch.stack, no error
    got = list(DataLoader(LatentIterableDataset(c, "ns", batch_size=4), batch_size=None))
    assert len(got) == 6 and all(a[0].dtype == b[0].dtype and torch.equal(a[0], b[0]) for a, b in zip(per, got))


def test_r1_a_yielded_batch_is_not_held_by_the_generator(tmp_path: Path) -> None:
    c = _cache(tmp_path)
    it = iter(LatentIterableDataset(c, "ns", batch_size=4))
    x, _ = next(it)
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None  # the consumer dropped it: nothing else may keep the batch's memory


@pytest.mark.xfail(strict=True, reason="torch's default_convert (DataLoader(batch_size=None)'s collate_fn) turns "
                                       "every plain tuple into a list; the dataset yields default_collate's tuple "
                                       "(H1: test_stream_batches.py::test_string_targets_are_default_collates_tuple)")
def test_r1_string_targets_come_as_the_per_sample_loader_makes_them(tmp_path: Path) -> None:
    c = _cache(tmp_path)

    def ttf(t: int) -> str:
        return f"class{t}"

    per = list(DataLoader(LatentIterableDataset(c, "ns", target_transform=ttf), batch_size=4))
    got = list(DataLoader(LatentIterableDataset(c, "ns", target_transform=ttf, batch_size=4), batch_size=None))
    assert [type(t) for _, t in got] == [type(t) for _, t in per]  # tuple, as default_collate makes it
    assert [t for _, t in got] == [t for _, t in per]


def test_r1_drop_last_without_batch_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="drop_last"):
        LatentIterableDataset(str(tmp_path / "c"), "ns", drop_last=True)
