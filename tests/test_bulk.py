"""Bulk encoding on a real Dask LocalCluster (processes): failures, resume after SIGKILL, a worker
killed mid-task, table and flat sources, lazy + bulk in one cache."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import latentds
from latentds import LatentDataset
from latentds.bulk import encode, read_failures
from latentds.testing.synthetic import make_dataset

CODEC = "bicubic-f4"
SHAPE = (64, 48)
PART = 3  # files per partition / shard


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bulk") / "src"
    make_dataset(root, n_per_class=8, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def clean(client, data, tmp_path_factory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("clean") / "cache"
    r = encode(data, CODEC, cache, client=client, shard_samples=PART, progress=False)
    assert r.ok and r.encoded == 16 and r.partitions == 6
    return snapshot(cache)


def snapshot(cache: Path) -> dict[str, Any]:
    """What must be identical between runs: shard bytes (+ indexes), partition records, manifest
    rows, failure records (type, reason). Generation names carry a time, so they are not compared."""
    (ns,) = [p for p in cache.iterdir() if p.is_dir()]
    out: dict[str, Any] = {"ns": ns.name}
    for sub in ("shards", "bulk"):
        d = ns / sub
        out[sub] = {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}
    fails = {}
    if (ns / "failures").exists():
        for p in sorted((ns / "failures").iterdir()):
            rec = json.loads(p.read_bytes())
            fails[p.name] = (rec["error_type"], rec["reason"])
    out["failures"] = fails
    from latentds.store.entries import LatentCache
    from latentds.store import ShardedStore

    m = ShardedStore(LatentCache(str(cache), ns.name)).refresh()
    out["manifest"] = m.table.to_pylist() if m is not None else None
    # every file a killed writer might leave is named .tmp-*: there must be none
    out["temps"] = [str(p) for p in ns.rglob(".tmp-*")]
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["ns"] == b["ns"]
    assert sorted(a["shards"]) == sorted(b["shards"])
    for k in a["shards"]:
        assert a["shards"][k] == b["shards"][k], k
    assert a["bulk"] == b["bulk"]
    assert a["manifest"] == b["manifest"]
    assert a["failures"] == b["failures"]
    assert a["temps"] == [] and b["temps"] == []


def test_broken_files_are_reported_and_the_rest_committed(client, tmp_path):
    src = tmp_path / "src"
    make_dataset(src, n_per_class=5, shape=SHAPE)
    good = sorted(src.rglob("*.dcm"))
    trunc = good[3]
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])  # truncated DICOM
    garbage = src / "positive" / "s99999.dcm"
    garbage.write_bytes(b"this is not a dicom file" * 10)
    cache = tmp_path / "cache"
    # part of the cache lazily filled first: a lazy fill and a bulk job share one cache
    lazy = LatentDataset(src, codec=CODEC, cache=cache)
    lazy_latents = {i: lazy[i][0] for i in (0, 1)}

    r = encode(src, CODEC, cache, client=client, shard_samples=PART, progress=False)
    assert sorted(f.path for f in r.failures) == sorted([str(trunc), str(garbage)])
    assert {f.error_type for f in r.failures} <= {"DicomError", "ImageReadError"}
    assert r.encoded == 9 and not r.ok
    recs = read_failures(latentds.LatentDataset(src, codec=CODEC, cache=cache).store.location)
    assert len(recs) == 2
    for rec in recs.values():  # no source path in the cache (PHI)
        assert str(src) not in json.dumps(rec) and "s99999" not in json.dumps(rec)

    ds = LatentDataset(src, codec=CODEC, cache=cache)
    m = ds.store.refresh()
    fresh = LatentDataset(src, codec=CODEC, cache=tmp_path / "lazy-only")
    for i, (path, _) in enumerate(ds.samples):
        if path in (str(trunc), str(garbage)):
            assert m.find(ds.key(i)) < 0
            continue
        assert m.find(ds.key(i)) >= 0  # committed: a warm read, no encoding
        z, t = ds[i]
        assert t == ds.targets[i]
        assert torch.equal(z, fresh[i][0])  # bulk == lazy, bit for bit
    for i, z in lazy_latents.items():
        assert torch.equal(ds[i][0], z)

    # a re-run commits nothing new and still reports the outstanding failures
    r2 = encode(src, CODEC, cache, client=client, shard_samples=PART, progress=False)
    assert r2.committed_partitions == 0 and r2.skipped_partitions == r2.partitions
    assert sorted(f.path for f in r2.failures) == sorted([str(trunc), str(garbage)])

    # fix the files; --retry-failed encodes only those two
    make_dataset(tmp_path / "fixed", n_per_class=5, shape=SHAPE)
    shutil.copy(tmp_path / "fixed" / trunc.relative_to(src), trunc)
    garbage.write_bytes((tmp_path / "fixed" / "positive" / good[-1].name).read_bytes())
    r3 = encode(src, CODEC, cache, client=client, shard_samples=PART, progress=False, retry_failed=True)
    assert r3.ok and r3.encoded == 2 and r3.total == 11
    assert read_failures(ds.store.location) == {}
    m = ds.store.refresh()
    assert all(m.find(ds.key(i)) >= 0 for i in range(len(ds)))


def test_table_and_flat_sources(client, data, tmp_path):
    files = sorted(data.rglob("*.dcm"))[:5]
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for i, f in enumerate(files):
            w.writerow([os.path.relpath(f, tmp_path), "pos" if i % 2 else "neg", "train" if i < 4 else "val"])
    r = encode(table, CODEC, tmp_path / "c1", client=client, shard_samples=2, progress=False, split="train")
    assert r.ok and r.total == 4 and r.encoded == 4
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in files:
        shutil.copy(f, flat / f.name)
    r = encode(flat, CODEC, tmp_path / "c2", client=client, shard_samples=2, progress=False)
    assert r.ok and r.total == 5 and r.partitions == 3


def test_worker_killed_mid_task_gives_the_same_result(client, data, clean, tmp_path):
    import dying_codec  # the fault goes in through the codec registry (a worker plugin), not a library hook

    client.register_plugin(dying_codec.Register())
    marker = tmp_path / "crashed"
    cache = tmp_path / "cache"
    r = encode(data, dying_codec.NAME, cache, client=client, shard_samples=PART, progress=False,
               codec_kwargs={"die_marker": str(marker)})
    assert marker.exists()  # one worker process did die inside a task
    assert r.ok and r.encoded == 16
    assert_same(snapshot(cache), clean)


def _cli(data: Path, cache: Path, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "latentds", "encode", str(data), "--codec", CODEC, "--cache", str(cache),
           "--workers", "2", "--shard-samples", str(PART), "--quiet", "--torch-threads", "1"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def committed_partitions(cache: Path) -> int:
    return len(list(cache.glob("*/bulk/*.json")))


def test_resume_after_client_sigkill_is_bit_identical(data, clean, tmp_path):
    cache = tmp_path / "cache"
    # every worker's bicubic-f4 sleeps 0.7 s per batch (tests/dying_codec.py as a Dask preload)
    env = dict(_workers_env("dying_codec"), DYING_CODEC_DELAY_S="0.7")
    p = _cli(data, cache, env)
    deadline = time.time() + 120
    while committed_partitions(cache) < 2 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    k = committed_partitions(cache)
    os.killpg(p.pid, signal.SIGKILL)  # the client (scheduler + nannies) and its workers, no cleanup
    p.wait()
    assert 2 <= k < 6, k
    time.sleep(0.5)
    p2 = _cli(data, cache, dict(os.environ))
    out, err = p2.communicate(timeout=150)
    assert p2.returncode == 0, err.decode()[-2000:]
    assert "already committed" in out.decode()
    assert_same(snapshot(cache), clean)


def _counting_codec() -> tuple[Any, list[int]]:
    """bicubic-f4 (same fingerprint, same namespace) that counts the images it encodes."""
    from latentds.codecs import create_codec

    codec, calls = create_codec(CODEC), []
    real = codec.encode_dist

    def encode_dist(x: torch.Tensor) -> Any:
        calls.append(int(x.shape[0]))
        return real(x)

    codec.encode_dist = encode_dist  # type: ignore[method-assign]
    return codec, calls


def _workers_env(preload: str) -> dict[str, str]:
    """The environment of a CLI run whose Dask workers import tests/<preload>.py first."""
    tests = str(Path(__file__).parent)
    return dict(os.environ, DASK_DISTRIBUTED__WORKER__PRELOAD=f'["{preload}"]',
                PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))


def _lazy_half_committed(data: Path, cache: Path) -> None:
    """LatentDataset fills ``cache``: half committed by a compaction, half only staged."""
    lazy = LatentDataset(data, codec=CODEC, cache=cache)
    lazy.fill(progress=False, indices=range(8))
    lazy.compact()
    lazy.fill(progress=False, indices=range(8, 16))


def test_bulk_cache_is_read_by_the_dataset_with_zero_encodes_and_the_reverse(client, data, clean, tmp_path):
    import refusing_bicubic  # bicubic-f4's fingerprint, raises on any encode

    # bulk fills; LatentDataset then reads every sample without encoding, bit-identical to lazy
    cache = tmp_path / "bulk"
    assert encode(data, CODEC, cache, client=client, shard_samples=PART, progress=False).ok
    codec, calls = _counting_codec()
    ds = LatentDataset(data, codec=codec, cache=cache)
    bulk_latents = [ds[i][0] for i in range(len(ds))]
    assert calls == [] and len(bulk_latents) == 16
    fresh = LatentDataset(data, codec=CODEC, cache=tmp_path / "lazy-only")
    assert all(torch.equal(z, fresh[i][0]) for i, z in enumerate(bulk_latents))

    # the reverse: a cache LatentDataset filled; a bulk job over it whose codec cannot encode
    # succeeds, and writes the very shards (content-addressed) an encode from scratch writes
    cache2 = tmp_path / "lazy"
    _lazy_half_committed(data, cache2)
    client.register_plugin(refusing_bicubic.Register())
    r = encode(data, refusing_bicubic.NAME, cache2, client=client, shard_samples=PART, progress=False)
    assert r.ok and r.encoded == 16, r.failures[:1]
    assert set(clean["shards"]) <= {q.name for q in cache2.glob("*/shards/*")}
    codec, calls = _counting_codec()
    back = LatentDataset(data, codec=codec, cache=cache2)
    assert all(torch.equal(back[i][0], z) for i, z in enumerate(bulk_latents)) and calls == []


@pytest.mark.slow
def test_cli_bulk_cache_is_read_by_the_dataset_with_zero_encodes_and_the_reverse(data, clean, tmp_path):
    # `latentds encode --workers 2` fills; LatentDataset then reads every sample without encoding
    cache = tmp_path / "bulk"
    p = _cli(data, cache, dict(os.environ))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    codec, calls = _counting_codec()
    ds = LatentDataset(data, codec=codec, cache=cache)
    bulk_latents = [ds[i][0] for i in range(len(ds))]
    assert calls == [] and len(bulk_latents) == 16

    # the reverse: `latentds encode --workers 2` over a cache LatentDataset filled encodes nothing
    # (its workers' bicubic-f4 refuses to) and writes the very shards an encode from scratch writes
    cache2 = tmp_path / "lazy"
    _lazy_half_committed(data, cache2)
    p = _cli(data, cache2, _workers_env("refusing_bicubic"))
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, (out.decode()[-1000:], err.decode()[-2000:])
    assert "16 encoded; 0 failed" in out.decode()
    assert set(clean["shards"]) <= {q.name for q in cache2.glob("*/shards/*")}
    codec, calls = _counting_codec()
    back = LatentDataset(data, codec=codec, cache=cache2)
    assert all(torch.equal(back[i][0], z) for i, z in enumerate(bulk_latents)) and calls == []


def test_cli_exit_code_says_whether_anything_failed(tmp_path):
    src = tmp_path / "src"
    make_dataset(src, n_per_class=2, shape=SHAPE)
    (src / "negative" / "zz.dcm").write_bytes(b"garbage")
    cmd = [sys.executable, "-m", "latentds", "encode", str(src), "--codec", CODEC, "--cache", str(tmp_path / "c"),
           "--workers", "1", "--quiet"]
    p = subprocess.run(cmd, capture_output=True, timeout=300)  # a Dask cluster start is slow on a loaded 2-core box
    assert p.returncode == 1
    assert "zz.dcm" in p.stderr.decode() and "1 failed" in p.stdout.decode()


def test_s3_source_and_s3_cache(client, data, s3_env):
    import s3fs

    bucket = s3_env.new_bucket()
    opts = s3_env.options()
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    files = sorted(data.rglob("*.dcm"))[:3] + sorted(data.rglob("*.dcm"))[-3:]
    for f in files:
        fs.put_file(str(f), f"{bucket}/src/{f.parent.name}/{f.name}")
    src, cache = f"s3://{bucket}/src", f"s3://{bucket}/latents"
    r = encode(src, CODEC, cache, client=client, shard_samples=4, progress=False, storage_options=opts)
    assert r.ok and r.total == 6 and r.encoded == 6 and r.partitions == 2, r.failures[:1]
    ds = LatentDataset(src, codec=CODEC, cache=cache, storage_options=opts)
    m = ds.store.refresh()
    assert [m.find(ds.key(i)) >= 0 for i in range(len(ds))] == [True] * 6  # no encoding needed
    local = LatentDataset(data, codec=CODEC, cache=data.parent / "lazy-s3-check")
    by_name = {os.path.basename(p): i for i, (p, _) in enumerate(local.samples)}
    for i, (p, t) in enumerate(ds.samples):
        z, tt = ds[i]
        assert tt == t and torch.equal(z, local[by_name[p.rsplit("/", 1)[-1]]][0])


def _age(path: Path, seconds: float = 7200.0) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_gc_keeps_sound_partition_records_and_collects_stale_ones(client, data, tmp_path):
    from latentds.store import gc, verify

    cache = tmp_path / "cache"
    r = encode(data, CODEC, cache, client=client, shard_samples=PART, progress=False)
    assert r.ok and r.partitions == 6
    store = LatentDataset(data, codec=CODEC, cache=cache).store
    bulk, fails = Path(store.location.join("bulk")), Path(store.location.join("failures"))
    real = sorted(p.name for p in bulk.glob("*.json"))
    assert len(real) == 6
    recs = [json.loads((bulk / n).read_bytes()) for n in real]
    # a record lists the samples it committed: together, every sample once, all in the manifest
    m = store.refresh()
    assert sorted(k for rc in recs for k in rc["keys"]) == sorted(m.keys()) and len(m.keys()) == 16
    rec = recs[0]
    # stale: samples the manifest does not hold, unreadable, a killed writer's temp, an unreadable
    # failure record; all old. One more stale record is young: the grace period keeps it.
    orphan, corrupt, young, bad_fail = "f" * 32 + ".json", "e" * 32 + ".json", "d" * 32 + ".json", "a" * 16 + ".json"
    (bulk / orphan).write_text(json.dumps(dict(rec, partition="f" * 32, keys=["0" * 40])))
    (bulk / corrupt).write_bytes(b"{not json")
    (bulk / ".tmp-killed").write_bytes(b"partial")
    fails.mkdir(exist_ok=True)
    (fails / bad_fail).write_bytes(b"")
    for p in [*bulk.iterdir(), *fails.iterdir()]:
        _age(p)  # the sound records are old too: age alone never removes one
    (bulk / young).write_text(json.dumps(dict(rec, partition="d" * 32, keys=["0" * 40])))

    v = verify(store)
    assert {Path(n).name for n, _ in v.bad} == {orphan, corrupt, young, bad_fail}
    assert v.partitions == 9

    g = gc(store, grace_s=3600)
    assert {Path(p).name for p in g.removed} == {orphan, corrupt, ".tmp-killed", bad_fail}
    assert g.kept_young >= 1
    assert sorted(p.name for p in bulk.iterdir()) == sorted(real + [young])
    # resume after gc: every committed partition is still skipped, nothing is encoded again
    r2 = encode(data, CODEC, cache, client=client, shard_samples=PART, progress=False)
    assert r2.ok and r2.skipped_partitions == 6 and r2.committed_partitions == 0
    # with no grace period at all, the only partition record gc takes is the stale young one
    assert {Path(p).name for p in gc(store, grace_s=0).removed if "/bulk/" in p} == {young}
    assert sorted(p.name for p in bulk.iterdir()) == real


def test_verify_checks_partition_records_and_lists_failure_records(client, tmp_path, capsys):
    from latentds.cli import main

    src = tmp_path / "src"
    make_dataset(src, n_per_class=2, shape=SHAPE)
    (src / "negative" / "zz.dcm").write_bytes(b"garbage")
    cache = tmp_path / "cache"
    r = encode(src, CODEC, cache, client=client, shard_samples=PART, progress=False)
    assert len(r.failures) == 1 and r.partitions == 2
    assert main(["verify", str(cache)]) == 0  # a failed source file is outstanding work, not damage
    out = capsys.readouterr().out
    assert "2 bulk partition records checked; 0 problems" in out
    assert "1 failure records" in out and "FAILED " in out and "zz.dcm" not in out  # no source paths

    (ns,) = [p for p in cache.iterdir() if p.is_dir()]
    first, second = sorted((ns / "bulk").glob("*.json"))
    rec = json.loads(first.read_bytes())
    # a record of an older version (no keys) is judged by its shard: named by the manifest -> sound
    first.write_text(json.dumps({k: v for k, v in rec.items() if k != "keys"}))
    assert main(["verify", str(cache)]) == 0
    capsys.readouterr()
    # ... and not sound when the manifest does not name it
    old_form = {k: v for k, v in rec.items() if k != "keys"}
    first.write_text(json.dumps(dict(old_form, shard="shard-" + "0" * 64 + ".tar")))
    rec2 = json.loads(second.read_bytes())
    second.write_text(json.dumps(dict(rec2, keys=rec2["keys"] + ["0" * 40])))  # a sample the manifest lacks
    assert main(["verify", str(cache)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {first}" in out and f"BAD {second}" in out and "2 problems" in out


def test_malloc_thresholds_restored_only_where_dask_set_them(monkeypatch):
    import latentds.sample.worker as bulk

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setattr(bulk, "_MALLOC_RESTORED", False)
    assert bulk.restore_malloc_thresholds() is False  # a plain process: glibc's dynamic rule, untouched
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as Dask's nanny starts a worker
    monkeypatch.setenv("LATENTDS_KEEP_MALLOC_THRESHOLDS", "1")
    assert bulk.restore_malloc_thresholds() is False  # opted out
    monkeypatch.delenv("LATENTDS_KEEP_MALLOC_THRESHOLDS")
    monkeypatch.setattr(bulk, "_MALLOC_RESTORED", False)
    assert bulk.restore_malloc_thresholds() is sys.platform.startswith("linux")
    assert bulk.restore_malloc_thresholds() is False  # once per process
