"""The warm read path: per-row CRC32C in the manifest, precomputed read plans, no source stat
per warm read, and manifests written before the CRC32C column (read with sha256)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from latentds import LatentDataset
from latentds.testing import synthetic
from latentds.errors import ShardError
from latentds.store.manifest import LEGACY_SCHEMA, META_KEY, upgrade
from latentds.store.shards import crc32c, decode_sample
from latentds.store.fsio import write_atomic

from conftest import Backend


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "dcm"
    synthetic.make_dataset(root, n_per_class=4, shape=(48, 40), seed=3)
    return root


def compacted(root: Path, b: Backend, **kw: Any) -> LatentDataset:
    ds = LatentDataset(root, codec="bicubic-f4", cache=b.url, cache_storage_options=b.options or None, **kw)
    ds.fill(progress=False)
    ds.compact()
    return ds


def test_rows_carry_crc32c_and_the_plan_matches_the_parsed_path(pngs: Path, backend: Backend) -> None:
    ds = compacted(pngs, backend)
    m = ds.store.manifest()
    assert m is not None
    plan, layouts = m.read_plan()
    fs = ds.store.location.fs
    for row in range(len(m)):
        shard, off, length, mlen, soff, sha, _ = m.locate(row)
        buf = bytes(fs.cat_file(ds.store.shard_path(shard), start=off, end=off + length))
        assert plan[row, 5] == crc32c(buf) == int(m.table.column("crc32c")[row].as_py())
        parsed, _ = decode_sample(buf, mean_length=mlen, std_offset=soff, sha256=sha, name="x")
        planned, std = ds.store.read_planned(m, row)
        assert std is None and planned.dtype == parsed.dtype and np.array_equal(planned, parsed)
    # one layout per distinct (dtype, shape): ROI crops give several shapes here
    assert sorted(lay[1] for lay in layouts) == sorted({tuple(s) for s in m.table.column("shape").to_pylist()})


def test_warm_reads_do_not_stat_the_source_until_refresh(pngs: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    root = tmp_path / "src"
    shutil.copytree(pngs, root)
    ds = compacted(root, Backend("local", str(tmp_path / "cache")))
    first = [ds[i][0].clone() for i in range(len(ds))]  # resolves every identity once
    stats: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *a: Any, **kw: Any) -> os.stat_result:
        stats.append(os.fspath(path))
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(os, "stat", counting_stat)
    reads = ds.store.reads
    for i in reversed(range(len(ds))):
        z, t = ds[i]
        assert torch.equal(z, first[i]) and t == ds.targets[i]
    assert stats == [] and ds.store.reads == reads + len(ds)  # one pread each, no stat
    monkeypatch.undo()

    # a source changed after resolution: seen after refresh() (or by a new dataset), a miss
    path = ds.samples[0][0]
    shutil.copyfile(ds.samples[-1][0], path)
    os.utime(path, ns=(real_stat(path).st_atime_ns, real_stat(path).st_mtime_ns + 10**9))
    ds.refresh()
    assert torch.equal(ds[0][0], first[-1]) and not torch.equal(first[0], first[-1])


def _write_legacy_generation(ds: LatentDataset) -> None:
    """Rewrite the committed generation as a pre-CRC32C writer would have: no crc32c column."""
    ms = ds.store.manifests
    ptr = ms.read_pointer()
    assert ptr is not None
    path = ms.generation_path(ptr["generation"])
    fs = ds.store.location.fs
    t = pq.read_table(io.BytesIO(fs.cat_file(path)))
    meta = (t.schema.metadata or {})[META_KEY]
    t = upgrade(t)  # keys as text, as every writer before issue 15 stored them
    t = t.drop_columns(["crc32c"]).replace_schema_metadata({META_KEY: meta})
    assert t.schema.remove_metadata().equals(LEGACY_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(t, buf)
    data = buf.getvalue()
    write_atomic(fs, path, data)
    ptr = dict(ptr, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    write_atomic(fs, ms.pointer_path, json.dumps(ptr).encode())


def test_legacy_manifest_without_crc32c_reads_with_sha256(pngs: Path, backend: Backend) -> None:
    ds = compacted(pngs, backend)
    expected = [ds[i][0].clone() for i in range(len(ds))]
    _write_legacy_generation(ds)
    old = compacted(pngs, backend)  # nothing new to pack: the legacy generation stays committed
    m = old.store.manifest()
    assert m is not None and (m.read_plan()[0][:, 5] == -1).all()
    for i in range(len(old)):
        assert torch.equal(old[i][0], expected[i])

    # a flipped byte is still reported by name on read, through the sha256 path
    row = m.find(old.key(2))
    shard, off, length, *_ = m.locate(row)
    spath = old.store.shard_path(shard)
    fs = old.store.location.fs
    data = bytearray(fs.cat_file(spath))
    data[off + length - 2] ^= 0xFF
    write_atomic(fs, spath, bytes(data))
    reader = LatentDataset(pngs, codec="bicubic-f4", cache=backend.url,
                           cache_storage_options=backend.options or None)
    with pytest.raises(ShardError, match=os.path.basename(spath)):
        reader[2]


def test_manifest_open_keeps_reader_columns_only_and_finds_any_order() -> None:
    from latentds.store.manifest import SCHEMA, Manifest

    n = 50
    rng = np.random.default_rng(0)
    keys = [f"{x:040x}" for x in rng.permutation(n) * 7919]  # unsorted, as a hand-written table
    cols: dict[str, Any] = {
        "key": keys, "shard": [f"shard-{i % 3:032x}.tar" for i in range(n)], "offset": np.arange(n) * 1024,
        "length": np.full(n, 200), "mean_length": np.full(n, 200), "std_offset": np.full(n, -1),
        "shape": [[1, 2, 3]] * n, "dtype": ["float32"] * n, "target": np.arange(n) % 2,
        "sha256": [f"{i:064x}" for i in range(n)], "content_sha256": [""] * n,
        "meta_offset": np.zeros(n, np.int64), "meta_length": np.zeros(n, np.int64), "crc32c": np.arange(n)}
    table = __import__("pyarrow").Table.from_pydict(cols, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=7)  # several chunks per column
    for source in (buf.getvalue(), table):
        m = Manifest("g", source)
        assert len(m) == n and m.find("f" * 40) == -1
        for row, k in enumerate(keys):
            assert m.find(k) == row and m.key_at(row) == k
            shard, off, *_, sha, target = m.locate(row)
            assert (shard, off, sha, target) == (f"shard-{row % 3:032x}.tar", row * 1024, f"{row:064x}", row % 2)
        assert m.read_plan()[0][:, 5].tolist() == list(range(n))
        if isinstance(source, bytes):  # reads decoded single columns, never the full table
            assert m._table is None


def test_workers_read_committed_shards_after_the_parent_did(pngs: Path, tmp_path: Path) -> None:
    """Forked DataLoader workers inherit the parent's resolved rows and open descriptors; each
    re-opens its own descriptors (pid check) and reads the same latents."""
    from torch.utils.data import DataLoader

    ds = LatentDataset(pngs, codec="bicubic-f4", cache=tmp_path / "cache", image_size=(48, 40))
    ds.fill(progress=False)
    ds.compact()
    expected = torch.stack([ds[i][0] for i in range(len(ds))])  # parent: rows resolved, fds open
    got = torch.cat([z for z, _ in DataLoader(ds, batch_size=3, num_workers=2)])
    assert torch.equal(got, expected)


def test_verify_reports_a_crc32c_that_does_not_match(pngs: Path, tmp_path: Path) -> None:
    from latentds.store.ops import verify

    ds = compacted(pngs, Backend("local", str(tmp_path / "cache")))
    m = ds.store.manifest()
    assert m is not None and verify(ds.store).ok
    t = m.table
    col = t.column("crc32c").to_numpy().copy()
    col[1] ^= 1
    import pyarrow as pa

    t = t.set_column(t.schema.get_field_index("crc32c"), "crc32c", pa.array(col))
    ptr = ds.store.manifests.read_pointer()
    ds.store.manifests.commit(t, m.meta, expected=ptr)
    rep = verify(ds.store)
    assert len(rep.bad) == 1 and "crc32c" in rep.bad[0][1]
    fresh = LatentDataset(pngs, codec="bicubic-f4", cache=tmp_path / "cache")
    bad_key = fresh.store.manifest().key_at(1)
    bad = next(i for i in range(len(fresh)) if fresh.key(i) == bad_key)
    with pytest.raises(ShardError, match="crc32c"):
        fresh[bad]
