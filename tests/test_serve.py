"""Manifest-only random access (``latentds.serve.CachedLatentDataset``, issue 15): a committed
cache served without its source tree returns exactly what ``LatentDataset`` returns."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from latentds import LatentDataset
from latentds.errors import CacheError
from latentds.serve import CachedLatentDataset
from latentds.testing import synthetic

from conftest import Backend


def test_serves_a_committed_cache_without_the_source_tree(tmp_path: Path, backend: Backend) -> None:
    src = tmp_path / "dcm"
    synthetic.make_dataset(src, n_per_class=5, shape=(48, 40), seed=3)
    kw = {"codec": "bicubic-f4", "cache": backend.url, "cache_storage_options": backend.options or None,
          "image_size": (48, 40)}
    LatentDataset(src, **kw).fill(progress=False)
    LatentDataset(src, **kw).compact(shard_samples=3)
    ds = LatentDataset(src, **kw)
    keys = [ds.key(i) for i in range(len(ds))]
    ref = [ds[i] for i in range(len(ds))]
    norm = LatentDataset(src, normalize=True, **kw)
    ref_norm = [norm[i][0] for i in range(len(ds))]
    ns = ds.namespace
    shutil.rmtree(src)  # nothing below reads the source tree
    opts = backend.options or None
    served = CachedLatentDataset(backend.url, ns, storage_options=opts, keys=keys)
    assert len(served) == len(ref) and served.targets == ds.targets
    for i, (x, t) in enumerate(ref):
        y, u = served[i]
        assert torch.equal(x, y) and t == u
    idx = [5, 0, 9, 3, 3, -1]
    for (x, t), i in zip(served.__getitems__(idx), idx):
        assert torch.equal(x, ref[i][0]) and t == ref[i][1]
    allrows = CachedLatentDataset(backend.url, ns, storage_options=opts, normalize=True)
    assert sorted(allrows.samples) == sorted(zip(keys, ds.targets))
    pos = {k: i for i, k in enumerate(keys)}
    batch = allrows.__getitems__(list(range(len(allrows))))
    for j, (x, t) in enumerate(batch):
        assert torch.equal(x, ref_norm[pos[allrows.key(j)]]) and torch.equal(x, allrows[j][0])
    with pytest.raises(CacheError, match="not committed"):
        CachedLatentDataset(backend.url, ns, storage_options=opts, keys=[*keys[:2], "0" * 40])
    with pytest.raises(CacheError, match="no committed shards"):
        CachedLatentDataset(backend.url, "0" * 16, storage_options=opts)
    with pytest.raises(IndexError):
        served[len(served)]
