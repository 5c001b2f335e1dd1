"""A file that kills its worker (OOM kill, SIGKILL, segfault) fails alone, named; the rest of its
partition is encoded, and ``retry_failed`` tries only that file (issue 11, item 3).

The culprit is a real DICOM of its own size; the test codec (tests/dying_codec.py, registered in
the Dask workers by a worker plugin) SIGKILLs its worker process when it is handed an image of
that size, as the kernel's OOM killer would. The Dask cluster is a real LocalCluster with
processes. ``allowed-failures`` is 0 here only to keep the test short (one worker death per
attempt instead of four): the job's outcome does not depend on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import dying_codec
from latentds.isolate import Splits, is_worker_death, split_evenly

SHAPE = (64, 48)


def test_split_evenly_keeps_order_and_balance():
    for n in (1, 2, 3, 5, 9, 1024):
        runs = split_evenly(list(range(n)))
        assert sum(runs, []) == list(range(n)) and len(runs) == min(n, 4)
        assert max(map(len, runs)) - min(map(len, runs)) <= 1


def test_a_partition_record_is_written_once_every_piece_is_in():
    s = Splits("ns")
    chunk = [f"f{i}" for i in range(5)]
    pieces = s.split("p", chunk, chunk)
    assert [c for _, c in pieces] == [["f0"], ["f1"], ["f2", "f3"], ["f4"]]
    (a, _), (b, _), (c, _), (d, _) = pieces
    assert s.finished(a, shard="s1", keys=["f0"], failed=[], samples=1) is None
    again = s.again(b, ["f3"], ["f3"])  # died alone once: run once more before naming it
    assert again is not None and s.again(again[0], ["f3"], ["f3"]) is None
    assert s.finished(again[0], shard=None, keys=[], failed=["n3"], samples=1) is None
    assert s.finished(d, shard="s4", keys=["f4"], failed=[], samples=1) is None
    root, rec = s.finished(c, shard="s2", keys=["f1", "f2"], failed=[], samples=2)
    assert root == "p" and rec["failed"] == ["n3"] and rec["keys"] == ["f0", "f1", "f2", "f4"]
    assert rec["samples"] == 5 and rec["shards"] == ["s1", "s2", "s4"] and rec["shard"] is None
    # an unsplit partition keeps exactly the record it always had (no "shards" field)
    assert s.finished("q", shard="s9", keys=["k"], failed=[], samples=1)[1] == {
        "partition": "q", "shard": "s9", "samples": 1, "failed": [], "keys": ["k"]}
    assert is_worker_death(MemoryError()) and not is_worker_death(ValueError())


@pytest.mark.slow
@pytest.mark.timeout(2400)  # each worker restart takes minutes on a loaded 2-core machine
def test_the_file_that_kills_its_worker_fails_alone_and_the_rest_is_encoded(tmp_path):
    import dask
    from dask.distributed import Client, LocalCluster

    from latentds import LatentDataset
    from latentds.bulk import encode, read_failures
    from latentds.preprocess import Preprocess
    from latentds.testing.synthetic import make_dataset, write_dicom

    src = tmp_path / "src"
    make_dataset(src, n_per_class=4, shape=SHAPE)
    culprit = src / "negative" / "s00002x Doe\tJane.dcm"  # a name that must not reach the cache
    write_dicom(culprit, np.random.default_rng(0).random((40, 40)).astype(np.float32))
    shapes = {p: Preprocess(crop_roi=True)(str(p)).shape for p in src.rglob("*.dcm")}
    assert list(shapes.values()).count(shapes[culprit]) == 1  # only the culprit has its size
    kw = {"die_on_shape": list(shapes[culprit]), "death_log": str(tmp_path / "deaths.log")}
    cache = tmp_path / "cache"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster)
        try:
            client.register_plugin(dying_codec.Register())
            r = encode(src, dying_codec.NAME, cache, client=client, shard_samples=9, progress=False, codec_kwargs=kw)
            deaths_first = _deaths(tmp_path)
            again = encode(src, dying_codec.NAME, cache, client=client, shard_samples=9, progress=False,
                           codec_kwargs=kw)
            retry = encode(src, dying_codec.NAME, cache, client=client, shard_samples=9, progress=False,
                           codec_kwargs=kw, retry_failed=True)
        finally:
            client.close()
            cluster.close()
    assert deaths_first >= 3  # the partition, the piece holding the culprit, the culprit alone (twice)
    assert [(f.path, f.error_type) for f in r.failures] == [(str(culprit), "WorkerDiedError")]
    assert r.encoded == 8 and r.committed_partitions == 1
    (ns,) = [p for p in cache.iterdir() if p.is_dir()]
    (rec,) = [json.loads(p.read_bytes()) for p in (ns / "bulk").glob("*.json")]
    assert len(rec["keys"]) == 8 and len(rec["failed"]) == 1 and rec["samples"] == 9
    stored = json.dumps(read_failures(ns_location(cache, ns.name)))
    assert "Doe" not in stored and "Jane" not in stored and "WorkerDiedError" in stored
    # a plain re-run skips the partition (no death); --retry-failed runs the culprit alone
    assert again.skipped_partitions == 1 and again.encoded == 0 and len(again.failures) == 1
    assert retry.total == 9 and retry.partitions == 1 and [f.path for f in retry.failures] == [str(culprit)]
    assert _deaths(tmp_path) - deaths_first == 2  # the culprit, alone, twice; no good file ran again
    # the 8 good files: exactly the latents of a clean in-process encode with bicubic-f4
    ds = LatentDataset(src, codec="bicubic-f4", cache=cache)
    clean = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "clean")
    m = ds.store.refresh()
    for i, (p, _) in enumerate(ds.samples):
        if Path(p) == culprit:
            assert m.find(ds.key(i)) < 0
            continue
        assert m.find(ds.key(i)) >= 0
        assert np.array_equal(ds[i][0].numpy(), clean[i][0].numpy())


def ns_location(cache: Path, ns: str):
    from latentds.store.fsio import Location

    return Location(str(cache / ns))


def _deaths(tmp: Path) -> int:
    p = tmp / "deaths.log"
    return len(p.read_text().splitlines()) if p.exists() else 0
