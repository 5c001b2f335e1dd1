"""Streaming with spawned DataLoader workers (issue 15 item 1): the epoch's rows travel in the
pickle (``latentds.store.epochplan.EpochPlan``), so a spawned worker reads exactly what a forked
worker or the main process reads, with the same checks, and requests nothing but its shards."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from latentds.errors import ShardError


def _cache(url: str, options: dict | None = None, n: int = 12):
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache

    s = ShardedStore(LatentCache(url, "ns", storage_options=options))
    rng = np.random.default_rng(0)
    for i in range(n):
        k = f"{i:040x}"
        s.cache.put(k, rng.standard_normal((2, 3, 3)).astype(np.float32), None, {"key": k, "target": i})
    s.compact(shard_samples=3)  # 4 shards
    return s


def _spawn_pickle(obj) -> bytes:
    """The pickle multiprocessing makes of a process it is spawning (``get_spawning_popen()`` set)."""
    from multiprocessing import context

    context.set_spawning_popen(object())
    try:
        return pickle.dumps(obj)
    finally:
        context.set_spawning_popen(None)


def test_an_explicit_pickle_carries_no_signed_url(backend) -> None:
    """A signed URL is a bearer token: only a process being spawned gets them; a pickle made by
    hand (a file, a queue) holds none, and its copy reads the same samples through its own client."""
    from latentds import LatentIterableDataset

    if backend.env is None:
        pytest.skip("signed URLs are an S3 fast path")
    _cache(backend.url, backend.options)
    it = LatentIterableDataset(backend.url, "ns", storage_options=backend.options)
    want = list(it)
    assert it._signed is not None
    raw = pickle.dumps(it)
    for marker in (b"Signature=", b"X-Amz-Signature", b"AWSAccessKeyId"):
        assert marker not in raw
    copy = pickle.loads(raw)
    assert copy._signed is None and _same(list(copy), want)
    assert pickle.loads(_spawn_pickle(it))._signed is not None  # a spawned worker does get them


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(int(s) == int(t) and torch.equal(x, y) for (x, s), (y, t) in zip(a, b))


def _reset(backend) -> None:
    if backend.env is not None:
        backend.env.proxy.reset_counts()


def _only_shard_gets(backend, shards: int) -> None:
    if backend.env is not None:  # no pointer, no manifest, no HEAD: one ranged GET per shard
        counts = dict(backend.env.proxy.counts)
        assert counts.get("GET") == shards and sum(counts.values()) == shards, counts


@pytest.mark.parametrize("shuffle", [False, True])
def test_unpickled_dataset_reads_the_shipped_plan_only(backend, shuffle: bool) -> None:
    """What a spawned worker gets: the same samples, targets and order as the original, and its
    only requests are the shard GETs (the plan, not the pointer, travelled)."""
    from latentds import LatentIterableDataset
    from latentds.store.epochplan import EpochPlan

    s = _cache(backend.url, backend.options)
    keys = [f"{i:040x}" for i in range(0, 12, 2)]  # a subset with its own targets (from_dataset's form)
    for samples in (None, {k: 100 + i for i, k in enumerate(keys)}):
        it = LatentIterableDataset(backend.url, "ns", storage_options=backend.options, shuffle=shuffle, seed=3,
                                   samples=samples)
        want = list(it)
        raw = _spawn_pickle(it)
        copy = pickle.loads(raw)
        assert isinstance(copy._pinned[1], EpochPlan) and copy._pinned[1].generation == s.refresh().generation
        assert len(raw) < 20_000, len(raw)  # rows, not the manifest
        _reset(backend)
        assert _same(list(copy), want)
        _only_shard_gets(backend, 4)
        if backend.env is not None:  # read through the signed URLs: no S3 filesystem was made
            assert copy._signed is not None and not copy._signed._off
            assert copy.store.backend.location._fs is None
        assert copy.shards() == it.shards()
        assert _same(list(pickle.loads(pickle.dumps(copy))), want)  # a plan ships on as it came


def test_shipped_plan_keeps_the_integrity_checks(backend) -> None:
    from latentds import LatentIterableDataset

    s = _cache(backend.url, backend.options)
    it = LatentIterableDataset(backend.url, "ns", storage_options=backend.options)
    m = s.refresh()
    row = m.find(f"{7:040x}")
    off, length, *_ = m.row_layout(row)
    rel = f"shards/{m.shards[int(m.shard_ids()[row])]}"
    good = s.backend.get(rel)
    bad = bytearray(good)
    bad[off + 3] ^= 0x01
    s.backend.put(rel, bytes(bad))
    with pytest.raises(ShardError, match=f"sample {7:040x}.*crc32c"):
        list(pickle.loads(pickle.dumps(it)))
    s.backend.put(rel, good[:off + length - 1])
    with pytest.raises(ShardError, match=f"sample {7:040x}.*truncated"):
        list(pickle.loads(pickle.dumps(it)))
    named = bytearray(good)  # another sample's member name in front of the row's bytes
    named[off - 512:off - 512 + 40] = f"{8:040x}".encode()
    s.backend.put(rel, bytes(named))
    with pytest.raises(ShardError, match=f"sample {7:040x}"):
        list(pickle.loads(pickle.dumps(it)))


def test_too_big_or_disabled_plan_ships_the_pointer(backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MAX_SHIPPED_ROWS (or with ship_plan off) the worker loads the pinned generation, as
    before: same samples, plus the pointer-named generation's GET."""
    import latentds.iterable as itmod
    from latentds import LatentIterableDataset

    _cache(backend.url, backend.options)
    it = LatentIterableDataset(backend.url, "ns", storage_options=backend.options)
    want = list(it)
    for patch in (("MAX_SHIPPED_ROWS", 11), ("ship", False)):
        with monkeypatch.context() as mp:
            if patch[0] == "ship":
                mp.setattr(it, "ship_plan", False)
            else:
                mp.setattr(itmod, *patch)
            copy = pickle.loads(pickle.dumps(it))
        assert copy._pinned is None and copy._pin == it._pin
        _reset(backend)
        assert _same(list(copy), want)
        if backend.env is not None:  # the 4 shards and the generation (the pin names it: no pointer read)
            assert backend.env.proxy.counts["GET"] == 5, dict(backend.env.proxy.counts)


@pytest.mark.slow  # each spawned worker imports torch: ~10 s per backend on the shared 2-core machine
def test_spawned_workers_read_what_forked_workers_read(backend) -> None:
    """Real spawned DataLoader workers: exactly the samples of forked workers and of the main
    process, from the generation pinned when the dataset was made (a later commit is not in the
    epoch), and on S3 nothing but the 4 shard GETs between them."""
    from latentds import LatentIterableDataset

    s = _cache(backend.url, backend.options)
    it = LatentIterableDataset(backend.url, "ns", storage_options=backend.options, shuffle=True, seed=5)
    s.cache.put(f"{99:040x}", np.zeros((2, 3, 3), np.float32), None, {"key": f"{99:040x}", "target": 99})
    s.compact(shard_samples=3)  # lands after the dataset was made

    def run(method: str) -> list:
        loader = DataLoader(it, batch_size=None, num_workers=2,
                            multiprocessing_context=multiprocessing.get_context(method))
        return sorted(((int(t), x) for x, t in loader), key=lambda p: p[0])

    main = sorted(((int(t), x) for x, t in it), key=lambda p: p[0])
    forked = run("fork")
    _reset(backend)
    spawned = run("spawn")
    _only_shard_gets(backend, 4)
    assert [t for t, _ in main] == list(range(12))
    for other in (forked, spawned):
        assert [t for t, _ in other] == [t for t, _ in main]
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(other, main))


def test_a_refused_signed_url_falls_back_to_the_backend(backend) -> None:
    """A signed URL S3 refuses (here a 404: moto does not check signatures, so an expired one
    cannot be staged) is only a lost fast path: the worker reads through its own client, the
    same samples; the next shards skip the fast path."""
    from latentds import LatentIterableDataset

    if backend.env is None:
        pytest.skip("signed URLs are an S3 fast path")
    _cache(backend.url, backend.options)
    it = LatentIterableDataset(backend.url, "ns", storage_options=backend.options)
    want = list(it)
    copy = pickle.loads(_spawn_pickle(it))
    copy._signed._urls = {k: v.replace("/shards/shard-", "/shards/gone-") for k, v in copy._signed._urls.items()}
    _reset(backend)
    assert _same(list(copy), want)
    assert copy._signed._off
    # the 4 shards, plus one refused GET per fetch already in flight (prefetch 2: at most 3)
    assert 5 <= backend.env.proxy.counts["GET"] <= 7, dict(backend.env.proxy.counts)


def test_plan_ships_only_where_it_does_not_stall_the_next_worker(tmp_path) -> None:
    """A spawned worker's pickle over the 64 KiB pipe makes the parent wait until that worker
    imported torch before starting the next: a plain dataset ships its plan only while the pickle
    stays small; with ``samples`` already over the pipe, the plan ships (it no longer costs that)."""
    from latentds import LatentIterableDataset
    from latentds.store.epochplan import EpochPlan

    url = str(tmp_path / "c")
    _cache(url, n=1400)  # 1,400 rows: ~123 KB of plan
    big = pickle.loads(pickle.dumps(LatentIterableDataset(url, "ns")))
    assert big._pinned is None and big._pin is not None  # the pointer, as before
    keys = {f"{i:040x}": i for i in range(1400)}  # ~70 KB of samples
    with_samples = pickle.loads(pickle.dumps(LatentIterableDataset(url, "ns", samples=keys)))
    assert isinstance(with_samples._pinned[1], EpochPlan)
    small = {k: t for k, t in list(keys.items())[:100]}
    assert isinstance(pickle.loads(pickle.dumps(LatentIterableDataset(url, "ns", samples=small)))._pinned[1],
                      EpochPlan)
    assert len(pickle.dumps(LatentIterableDataset(url, "ns", samples=small))) < 64 << 10
