"""Reviewer's test (R): a batch whose samples lie in more shards than the store keeps descriptors
open for (256) must still be read by the batched mapped path, not fall back to per-sample reads.

``batch_read._store_fds`` opens every shard of a batch in a row through ``_store_fd``, whose
LRU closes the oldest descriptor at 256: descriptors already in the list being built are closed
and their numbers reused, so some shards' rows are mapped from another shard's file. The checks
catch it (the batch is re-read per sample, data stays right), but every such batch loses the
batched path; with a read-through shard cache (64 descriptors) the CRC failure also deletes a
good local copy. Fixed: each descriptor is mapped before the next is opened.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latentds import batch_read


def test_a_batch_over_more_shards_than_open_descriptors_stays_batched(tmp_path: Any, monkeypatch: Any) -> None:
    from latentds.serve import CachedLatentDataset
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache

    url, n = str(tmp_path / "c"), 300
    s = ShardedStore(LatentCache(url, "ns"))
    rng = np.random.default_rng(1)
    for i in range(n):
        k = f"{i:040x}"
        s.cache.put(k, rng.standard_normal((2, 2, 2)).astype(np.float32), None, {"key": k, "target": i % 7})
    s.compact(shard_samples=1)  # one shard per sample: the batch touches 300 shards
    ds = CachedLatentDataset(url, "ns")
    fallbacks: list[int] = []
    per_sample = batch_read._per_sample
    monkeypatch.setattr(batch_read, "_per_sample", lambda d, idx: fallbacks.append(len(idx)) or per_sample(d, idx))
    got = ds.__getitems__(list(range(n)))
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(got, [ds[i] for i in range(n)]))
    assert fallbacks == []  # the batched path served it
