"""The sharded store, run the same way on a local directory and on a real S3 server (moto's
server mode on 127.0.0.1, see conftest.py): round trip, concurrent lazy fill + compaction,
crash leftovers + gc, corruption reported by name, and a stock webdataset reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from latentds import LatentDataset
from latentds.testing import synthetic
from latentds.cli import main as cli_main
from latentds.errors import LatentdsError, ManifestError, ShardError
from latentds.store import gc, verify
from latentds.store.shards import build_shard, shard_name
from latentds.store.fsio import write_atomic

from conftest import Backend

SHAPE = (64, 48)


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "dcm"
    synthetic.make_dataset(root, n_per_class=6, shape=SHAPE, seed=7)
    return root


@pytest.fixture(scope="module")
def reference(dicoms: Path, tmp_path_factory: pytest.TempPathFactory) -> list[torch.Tensor]:
    """Latents from a plain single-process run on its own local cache."""
    ds = LatentDataset(dicoms, codec="bicubic-f4", cache=tmp_path_factory.mktemp("ref") / "c")
    return [ds[i][0].clone() for i in range(len(ds))]


def make(root: Path, b: Backend, **kw: Any) -> LatentDataset:
    return LatentDataset(root, codec="bicubic-f4", cache=b.url, cache_storage_options=b.options or None, **kw)


def store_fs(ds: LatentDataset) -> Any:
    return ds.store.location.fs


def test_round_trip_one_ranged_read_per_warm_sample(dicoms: Path, reference: list[torch.Tensor],
                                                    backend: Backend) -> None:
    ds = make(dicoms, backend)
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], reference[i])
    rep = ds.compact()
    assert rep.packed == len(ds) and len(rep.shards) == 1 and rep.generation
    again = ds.compact()  # safe to repeat: nothing new, same generation
    assert again.packed == 0 and again.already_committed == len(ds) and again.generation == rep.generation

    fresh = make(dicoms, backend)
    fresh.store.refresh()
    if backend.env is not None:
        backend.env.proxy.reset_counts()
    for i in range(len(fresh)):
        z, t = fresh[i]
        assert torch.equal(z, reference[i]) and t == fresh.targets[i]
    assert fresh.store.reads == len(fresh)  # one ranged read per warm sample, never the whole shard
    if backend.env is not None:
        assert sum(backend.env.proxy.counts.values()) == len(fresh)  # counted at the S3 server itself
    assert verify(fresh.store).ok
    # decode needs the full metadata, which lives in the shard's .json member
    assert fresh.decode(0).shape[0] == 1


def test_changed_source_is_a_miss_after_compaction(dicoms: Path, tmp_path: Path, backend: Backend) -> None:
    import shutil

    root = tmp_path / "src"
    shutil.copytree(dicoms, root)
    ds = make(root, backend)
    before = ds[0][0].clone()
    ds.compact()
    path = ds.samples[0][0]
    other = ds.samples[-1][0]
    shutil.copyfile(other, path)  # different content, new size/mtime: a new identity
    fresh = make(root, backend)
    assert not torch.equal(fresh[0][0], before)


def _put(ds: LatentDataset, path: str, data: bytes) -> None:
    write_atomic(store_fs(ds), path, data)


def _get(ds: LatentDataset, path: str) -> bytes:
    return bytes(store_fs(ds).cat_file(path))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated shard", "empty manifest"])
def test_corruption_is_reported_by_name_by_verify_and_reads(dicoms: Path, backend: Backend, damage: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ds = make(dicoms, backend)
    for i in range(len(ds)):
        ds[i]
    ds.compact()
    m = ds.store.manifest()
    assert m is not None
    shard = ds.store.shard_path(m.shards[0])
    gen = ds.store.manifests.generation_path(m.generation)
    data = _get(ds, shard)
    if damage == "flipped byte":
        _, off, length, *_ = m.locate(m.find(ds.key(3)))
        buf = bytearray(data)
        buf[off + length - 2] ^= 0xFF  # inside sample 3's latent bytes
        _put(ds, shard, bytes(buf))
        bad, err, named, idx = shard, ShardError, shard, 3
    elif damage == "truncated shard":
        _put(ds, shard, data[: len(data) // 2])
        last = max(range(len(ds)), key=lambda i: m.locate(m.find(ds.key(i)))[1])  # the sample at the end
        bad, err, named, idx = shard, ShardError, shard, last
    else:
        _put(ds, gen, b"")
        bad, err, named, idx = gen, ManifestError, gen, 0

    rep = verify(ds.store)
    assert not rep.ok and bad in [name for name, _ in rep.bad]
    reader = make(dicoms, backend)
    with pytest.raises(err, match=os.path.basename(named)):
        reader[idx]
    # and the command line says the same, with a non-zero exit
    argv = ["verify", backend.url]
    if backend.options:
        argv += ["--storage-options", json.dumps(backend.options)]
    assert cli_main(argv) == 1
    out = capsys.readouterr()
    assert os.path.basename(named) in out.out + out.err
    if backend.options:
        assert backend.options["secret"] not in out.out + out.err


def test_crash_leftovers_are_ignored_then_collected(dicoms: Path, reference: list[torch.Tensor],
                                                    backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make(dicoms, backend)
    for i in range(len(ds) // 2):
        ds[i]
    ds.compact()
    loc = ds.store.location
    fs = loc.fs
    # What a writer or compactor killed half-way leaves: temp files (local writes), a shard and
    # a manifest generation that no pointer names, and a half-written temp shard.
    crash = [loc.join("staging", "ab", ".tmp-deadbeef-ab00.npz"), loc.join("shards", ".tmp-1234-shard-x.tar")]
    for p in crash:
        _put(ds, p, b"partial")
    from latentds.store.entries import Entry

    orphan_bytes, _ = build_shard([("f" * 40, Entry(np.ones((1, 4, 4), np.float32), None, {"target": 0}))])
    orphan = loc.join("shards", shard_name(orphan_bytes))
    _put(ds, orphan, orphan_bytes)
    orphan_gen = loc.join("manifest", "g-00000000000000000001-deadbeef.parquet")
    _put(ds, orphan_gen, b"not committed")

    # readers and verify ignore all of it
    fresh = make(dicoms, backend)
    for i in range(len(fresh)):
        assert torch.equal(fresh[i][0], reference[i])
    assert verify(fresh.store).ok
    # inside the grace period nothing is touched; after it, all leftovers go, committed data stays
    kept = gc(fresh.store, grace_s=3600)
    assert kept.removed == [] and kept.kept_young >= len(crash) + 2
    fresh.compact()
    # gc gives possible work in flight (temps, unnamed shards, old generations) a floor of grace
    # (ops.MIN_GRACE_S); these leftovers are minutes old at most, so the floor is lowered here
    monkeypatch.setenv("LATENTDS_GC_MIN_GRACE_S", "0")
    done = gc(fresh.store, grace_s=0)
    removed = set(done.removed)
    for p in [*crash, orphan, orphan_gen]:
        assert p in removed and not fs.exists(p)
    assert not any("/staging/" in p and "/.tmp-" not in p for p in removed) or fresh.store.manifest() is not None
    again = make(dicoms, backend)
    for i in range(len(again)):
        assert torch.equal(again[i][0], reference[i])
    assert again.store.reads == len(again)  # all committed now, staging collected
    assert verify(again.store).ok


def test_stock_webdataset_reads_the_shards(dicoms: Path, reference: list[torch.Tensor], tmp_path: Path,
                                           backend: Backend) -> None:
    import webdataset as wds

    ds = make(dicoms, backend)
    keys = {ds.key(i): i for i in range(len(ds))}
    for i in range(len(ds)):
        ds[i]
    ds.compact()
    m = ds.store.manifest()
    assert m is not None
    local = []
    for s in m.shards:  # a stock reader has no s3:// opener: fetch the shard file as it is
        p = tmp_path / s
        p.write_bytes(_get(ds, ds.store.shard_path(s)))
        local.append(str(p))
    seen = 0
    for sample in wds.WebDataset(local, shardshuffle=False, empty_check=True).decode():
        i = keys[sample["__key__"]]
        assert np.array_equal(sample["npy"], reference[i].numpy())
        assert sample["cls"] == ds.targets[i]
        assert sample["json"]["key"] == sample["__key__"]
        assert not any(k in json.dumps(sample["json"]) for k in ("PatientName", "PatientID", str(dicoms)))
        seen += 1
    assert seen == len(ds)


WORKER = textwrap.dedent("""
    import json, sys, torch
    from torch.utils.data import DataLoader
    from latentds import LatentDataset
    root, url, opts, seed = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    ds = LatentDataset(root, codec="bicubic-f4", cache=url, cache_storage_options=opts or None)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=1, num_workers=4, shuffle=True, generator=g)
    n = sum(1 for _ in loader)
    print("done", n)
""")


def test_two_processes_times_four_workers_fill_then_compact(dicoms: Path, reference: list[torch.Tensor],
                                                            backend: Backend) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(dicoms), backend.url, json.dumps(backend.options),
                               str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for seed in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        assert f"done {len(reference)}" in out
    ds = make(dicoms, backend)
    assert len(ds.cache.keys()) == len(ds)  # overlapping misses, one object per sample
    rep = ds.compact()
    assert rep.packed == len(ds) and not rep.bad
    fresh = make(dicoms, backend)
    for i in range(len(fresh)):
        assert torch.equal(fresh[i][0], reference[i])
    assert fresh.store.reads == len(fresh)
    assert verify(fresh.store).ok
