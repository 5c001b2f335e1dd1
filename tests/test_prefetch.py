"""Shard prefetch (latentds.store.prefetch) and the streaming dataset that uses it: same samples,
same order and same errors as one shard at a time; and the manifest key index read a row group
at a time (issue 15: the 10M-row open)."""

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


def _cache(url: str, options: dict | None = None, n: int = 12):
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache

    s = ShardedStore(LatentCache(url, "ns", storage_options=options))
    rng = np.random.default_rng(0)
    for i in range(n):
        k = f"{i:040x}"
        s.cache.put(k, rng.standard_normal((2, 3, 3)).astype(np.float32), None, {"key": k, "target": i})
    s.compact(shard_samples=3)
    return s


def test_streaming_with_prefetch_equals_one_shard_at_a_time(backend) -> None:
    from latentds import LatentIterableDataset

    _cache(backend.url, backend.options)
    for shuffle in (False, True):
        a = list(LatentIterableDataset(backend.url, "ns", storage_options=backend.options, shuffle=shuffle, seed=4,
                                       prefetch=0))
        if backend.env is not None:
            backend.env.proxy.reset_counts()
        b = list(LatentIterableDataset(backend.url, "ns", storage_options=backend.options, shuffle=shuffle, seed=4))
        if backend.env is not None:  # one ranged GET per shard, no HEAD before it
            counts = backend.env.proxy.counts
            assert counts["GET"] <= 4 + 2 and counts["HEAD"] <= 2, dict(counts)
        assert len(a) == 12 and [t for _, t in a] == [t for _, t in b]
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
        assert all(z.is_contiguous() and z.numpy().flags.writeable for z, _ in b)


def test_streaming_with_prefetch_names_a_corrupt_or_truncated_shard(backend) -> None:
    from latentds import LatentIterableDataset

    s = _cache(backend.url, backend.options)
    m = s.refresh()
    row = m.find(f"{7:040x}")
    off, length, *_ = m.row_layout(row)
    rel = f"shards/{m.shards[int(m.shard_ids()[row])]}"
    good = s.backend.get(rel)
    data = bytearray(good)
    data[off + 3] ^= 0x01
    s.backend.put(rel, bytes(data))
    with pytest.raises(ShardError, match=f"sample {7:040x}.*crc32c"):
        list(LatentIterableDataset(backend.url, "ns", storage_options=backend.options))
    s.backend.put(rel, good[:off + length - 1])
    with pytest.raises(ShardError, match=f"sample {7:040x}.*truncated"):
        list(LatentIterableDataset(backend.url, "ns", storage_options=backend.options))


def _generation(keys: list[str], row_group_size: int) -> bytes:
    import io

    import pyarrow.parquet as pq

    from latentds.store.entries import Entry
    from latentds.store.manifest import rows_table
    from latentds.store.shards import build_shard

    _, rs = build_shard([(k, Entry(np.full((1, 2, 2), i, np.float32), None, {"target": i % 2}))
                         for i, k in enumerate(keys)])
    buf = io.BytesIO()
    pq.write_table(rows_table([("shard-" + "0" * 32 + ".tar", r) for r in rs]), buf, row_group_size=row_group_size)
    return buf.getvalue()


def test_manifest_key_index_read_by_row_group() -> None:
    """The key index is decoded a row group at a time (lower peak at 10M rows): the same
    lookups as one whole-column decode, and a bad key in a later group is still refused."""
    from latentds.errors import ManifestError
    from latentds.store.manifest import Manifest

    keys = sorted(f"{i * 7919:040x}" for i in range(10))
    raw = _generation(keys, row_group_size=3)  # 4 row groups
    m = Manifest("g", raw)
    assert [m.find(k) for k in keys] == list(range(10)) and m.find("f" * 40) == -1
    shuffled = keys[5:] + keys[:5]  # not sorted: the order index is built over every group
    m2 = Manifest("g", _generation(shuffled, row_group_size=3))
    assert [m2.find(k) for k in shuffled] == list(range(10))
    with pytest.raises(ManifestError, match="not a sample key"):
        Manifest("g", _generation(keys[:8] + ["Z" * 40, "f" * 40], row_group_size=3))
    with pytest.raises(ManifestError, match="not a sample key"):  # another width in group 3
        Manifest("g", _generation(keys[:8] + ["ab" * 30, "f" * 40], row_group_size=3))


def test_streaming_workers_inherit_the_plan_made_with_the_dataset(backend) -> None:
    """The generation and plan are pinned when the dataset is made: forked DataLoader workers
    read only shards (no pointer or manifest GET each), a commit landing afterwards is not in
    this epoch (as with ``set_epoch``), and ``set_epoch`` pins the newest generation."""
    import multiprocessing

    from torch.utils.data import DataLoader

    from latentds import LatentIterableDataset

    s = _cache(backend.url, backend.options)  # 12 samples in 4 shards
    it = LatentIterableDataset(backend.url, "ns", storage_options=backend.options)
    s.cache.put(f"{99:040x}", np.zeros((2, 3, 3), np.float32), None, {"key": f"{99:040x}", "target": 99})
    s.compact(shard_samples=3)  # lands after the dataset was made
    if backend.env is not None:
        backend.env.proxy.reset_counts()
    loader = DataLoader(it, batch_size=None, num_workers=2, multiprocessing_context=multiprocessing.get_context("fork"))
    got = sorted(int(t) for _, t in loader)
    assert got == list(range(12))  # the pinned generation: not sample 99
    if backend.env is not None:  # the 4 shards (of 5 now) split between the workers, nothing else
        assert backend.env.proxy.counts["GET"] == 4 and sum(backend.env.proxy.counts.values()) == 4, \
            dict(backend.env.proxy.counts)
    it.set_epoch(0)  # "now": the newest generation, even for the epoch already pinned
    assert sorted(int(t) for _, t in it) == list(range(12)) + [99]


def test_streaming_dataset_made_before_any_commit_raises_when_iterated(tmp_path) -> None:
    from latentds import CacheError, LatentIterableDataset

    it = LatentIterableDataset(str(tmp_path / "empty"), "ns")  # nothing to pin yet: no error here
    with pytest.raises(CacheError, match="no committed shards; run compact first"):
        list(it)
    _cache(str(tmp_path / "empty"))
    assert len(list(it)) == 12  # unpinned, so the first iteration pins what is committed then


def test_fetch_ahead_ramps_from_start_to_depth() -> None:
    """``start`` fetches begin at once, then up to two more per result taken, never over depth."""
    running, peaks, lock = [0], [], threading.Lock()
    gate, started = threading.Event(), []

    def fetch(n: int) -> int:
        with lock:
            running[0] += 1
            started.append(n)
        if n == 0:
            gate.wait(5)
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return n

    it = fetch_ahead(fetch, range(12), 4, start=2)
    first: list = []
    t = threading.Thread(target=lambda: first.append(next(it)))  # waits on fetch 0, held by the gate
    t.start()
    time.sleep(0.1)
    with lock:
        at_start = sorted(started)
    gate.set()
    t.join()
    got = [first[0][1]]
    for n, v in it:
        got.append(v)
        with lock:
            peaks.append(running[0])
    assert at_start == [0, 1]  # only `start` began before the first result was taken
    assert got == list(range(12)) and max(peaks) <= 4 and max(peaks) >= 3
