"""Shard prefetch (latentds.store.prefetch) and the streaming dataset that uses it: same samples,
same order and same errors as one shard at a time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from latentds.errors import ShardError
from latentds.store.prefetch import fetch_ahead


def test_fetch_ahead_keeps_order_and_overlaps() -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def fetch(n: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (5 - n % 5))  # later names finish first: order must still hold
        with lock:
            running[0] -= 1
        return n * n

    assert list(fetch_ahead(fetch, range(10), 3)) == [(n, n * n) for n in range(10)]
    assert peak[0] >= 2  # fetches really ran side by side
    assert list(fetch_ahead(fetch, range(4), 0)) == [(n, n * n) for n in range(4)]


def test_fetch_ahead_raises_at_the_failing_turn_and_stops_early() -> None:
    started: list[int] = []

    def fetch(n: int) -> int:
        started.append(n)
        if n == 3:
            raise FileNotFoundError(f"object {n}")
        return n

    got = []
    with pytest.raises(FileNotFoundError, match="object 3"):
        for n, v in fetch_ahead(fetch, range(100), 2):
            got.append(v)
    assert got == [0, 1, 2]
    assert max(started) <= 3 + 2  # no more than depth beyond the failure was ever started
    it = fetch_ahead(fetch, range(100), 2)
    assert next(it) == (0, 0)
    it.close()  # an early stop cancels what has not started
    time.sleep(0.05)
    assert len(started) < 20


def _cache(tmp_path, n: int = 12):
    from latentds.store.entries import LatentCache
    from latentds.store import ShardedStore

    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    rng = np.random.default_rng(0)
    for i in range(n):
        k = f"{i:040x}"
        s.cache.put(k, rng.standard_normal((2, 3, 3)).astype(np.float32), None, {"key": k, "target": i})
    s.compact(shard_samples=3)
    return s


def test_streaming_with_prefetch_equals_one_shard_at_a_time(tmp_path) -> None:
    from latentds import LatentIterableDataset

    _cache(tmp_path)
    for shuffle in (False, True):
        a = list(LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=shuffle, seed=4, prefetch=0))
        b = list(LatentIterableDataset(str(tmp_path / "c"), "ns", shuffle=shuffle, seed=4))
        assert len(a) == 12 and [t for _, t in a] == [t for _, t in b]
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
        assert all(z.is_contiguous() and z.numpy().flags.writeable for z, _ in b)


def test_streaming_with_prefetch_names_a_corrupt_sample(tmp_path) -> None:
    from latentds import LatentIterableDataset

    s = _cache(tmp_path)
    m = s.refresh()
    row = m.find(f"{7:040x}")
    off, length, *_ = m.row_layout(row)
    rel = f"shards/{m.shards[int(m.shard_ids()[row])]}"
    data = bytearray(s.backend.get(rel))
    data[off + 3] ^= 0x01
    s.backend.put(rel, bytes(data))
    with pytest.raises(ShardError, match=f"sample {7:040x}.*crc32c"):
        list(LatentIterableDataset(str(tmp_path / "c"), "ns"))
