"""Manifest key storage (issue 15, item 3): generations are written with 20-byte binary keys,
and generations written by the code before (40-character text keys) still open and serve the
same rows with zero re-encodes; lookups agree between the two layouts, keys ending in zero
bytes included."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentds.errors import ManifestError
from latentds.store import ShardedStore
from latentds.store.entries import LatentCache
from latentds.store.fsio import write_atomic
from latentds.store.keys import STORED_KEY
from latentds.store.manifest import META_KEY, SCHEMA, STORED_SCHEMA, Manifest, ManifestStore
from latentds.store.shards import crc32c


def _keys(n: int) -> list[str]:
    # edge bytes on purpose: keys ending in zero bytes (numpy's S20 drops trailing zeros on
    # scalars) and starting with 0x00 / 0xff
    ks = [f"{i * 7919:040x}" for i in range(1, n - 3)]
    ks += ["ab" * 15 + "00" * 5, "00" * 20, "ff" * 20, "00" * 19 + "01"]
    return ks


def _store(path, keys: list[str]) -> ShardedStore:
    store = ShardedStore(LatentCache(str(path), "ns"))
    rng = np.random.default_rng(0)
    for i, k in enumerate(keys):
        std = np.abs(rng.standard_normal((2, 3, 2), dtype=np.float32)) if i % 3 else None
        store.cache.put(k, rng.standard_normal((2, 3, 2), dtype=np.float32), std,
                        {"target": i % 2, "content_sha256": hashlib.sha256(k.encode()).hexdigest()})
    return store


def _write_old_layout(store: ShardedStore) -> None:
    """Rewrite the committed generation as the code before issue 15 wrote it: text keys (dictionary
    encoding tried on every column), zstd, the same metadata; pointer with sha256 and crc32c."""
    ms = store.manifests
    ptr = ms.read_pointer()
    path = ms.generation_path(ptr["generation"])
    fs = store.location.fs
    t = pq.read_table(io.BytesIO(fs.cat_file(path)))
    assert t.schema.field("key").type == STORED_KEY  # what the new writer wrote
    meta = t.schema.metadata[META_KEY]
    m = Manifest("g", fs.cat_file(path))
    t = m.table.replace_schema_metadata({META_KEY: meta})
    assert t.schema.remove_metadata().equals(SCHEMA) and t.column("key").type == pa.string()
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd")
    data = buf.getvalue()
    write_atomic(fs, path, data)
    write_atomic(fs, ms.pointer_path, json.dumps(dict(ptr, sha256=hashlib.sha256(data).hexdigest(),
                                                      crc32c=crc32c(data), bytes=len(data)), sort_keys=True).encode())


def _served(store: ShardedStore, keys: list[str]) -> list[tuple]:
    m = store.refresh()
    out = []
    for k in keys:
        row = m.find(k)
        e = store.get(k)
        mean, std = store.read_planned(m, row)
        out.append((row, m.key_at(row), m.key_bytes(row), m.locate(row), e.mean.tobytes(),
                    None if e.std is None else e.std.tobytes(), mean.tobytes(), None if std is None else std.tobytes()))
    return out


def test_old_text_key_generation_serves_identical_rows(tmp_path) -> None:
    keys = _keys(40)
    store = _store(tmp_path / "c", keys)
    store.compact()
    new = _served(store, keys)
    m_new = store.manifest()
    assert m_new._index.binary and len(m_new) == len(keys)
    rows = np.arange(len(keys))
    _write_old_layout(store)

    old_store = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    m_old = old_store.refresh()
    assert not m_old._index.binary  # read as text, no conversion, no re-encode
    assert _served(old_store, keys) == new
    assert m_old.table.equals(m_new.table)
    assert (m_old.key_matrix(rows) == m_new.key_matrix(rows)).all()
    assert m_old.key_matrix(rows).tobytes() == "".join(m_old.key_at(r) for r in rows).encode()
    probe = keys + ["f" * 40, "AB" * 20, "ab", "zz" * 20]
    assert (m_old.find_many(probe) == m_new.find_many(probe)).all()
    assert [m_old.find(k) for k in probe] == [m_new.find(k) for k in probe]
    assert m_new.find("AB" * 20) == -1 and m_new.find("ab" * 15 + "00" * 5) >= 0

    # nothing to pack: the old generation stays committed and is read as it is
    assert old_store.compact().generation == m_old.generation
    # new samples committed over the old generation: every old row kept, the new one binary
    more = [f"e{i:039x}" for i in range(1, 4)]
    old_store.cache.put(more[0], np.ones((2, 3, 2), np.float32), None, {"target": 1})
    old_store.cache.put(more[1], np.zeros((2, 3, 2), np.float32), None, {"target": 0})
    old_store.cache.put(more[2], np.full((2, 3, 2), 2, np.float32), None, {"target": 0})
    rep = old_store.compact()
    assert rep.packed == 3
    m3 = old_store.refresh()
    assert m3._index.binary and len(m3) == len(keys) + 3
    assert [s[3:] for s in _served(old_store, keys)] == [s[3:] for s in new]


def test_binary_index_lookups_and_unsorted_generation() -> None:
    keys = _keys(30)
    rng = np.random.default_rng(1)
    shuffled = [keys[i] for i in rng.permutation(len(keys))]
    n = len(shuffled)
    cols = {"key": shuffled, "shard": ["shard-" + "0" * 32 + ".tar"] * n, "offset": np.arange(n) * 512,
            "length": np.full(n, 228), "mean_length": np.full(n, 228), "std_offset": np.full(n, -1),
            "shape": [[1, 5, 5]] * n, "dtype": ["float32"] * n, "target": np.arange(n) % 2,
            "sha256": ["0" * 64] * n, "content_sha256": [""] * n, "meta_offset": np.zeros(n, np.int64),
            "meta_length": np.zeros(n, np.int64), "crc32c": np.arange(n)}
    text = pa.Table.from_pydict(cols, schema=SCHEMA)
    binary = text.set_column(0, STORED_SCHEMA.field("key"),
                             pa.array([bytes.fromhex(k) for k in shuffled], STORED_KEY))
    for table in (text, binary):
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=7)  # several row groups, not sorted
        m = Manifest("g", buf.getvalue())
        assert m._index.binary == (table is binary) and m._index.order is not None
        assert [m.find(k) for k in shuffled] == list(range(n))
        assert m.find_many(shuffled + ["1" * 40, "nothex"]).tolist() == list(range(n)) + [-1, -1]
        assert [m.key_bytes(r) for r in range(n)] == [k.encode() for k in shuffled]
        assert m.key_matrix(np.arange(n)).tobytes() == "".join(shuffled).encode()
        assert m.column("key").to_pylist() == shuffled and m.table.column("key").to_pylist() == shuffled
        assert m.read_plan()[0][:, 5].tolist() == list(range(n))


def test_commit_writes_binary_keys_and_keeps_text_for_a_key_that_is_not_one(tmp_path) -> None:
    from latentds.store.backend import Backend

    ms = ManifestStore(Backend(str(tmp_path / "m")))
    keys = sorted(_keys(6))
    n = len(keys)

    def table(ks: list[str]) -> pa.Table:
        return pa.Table.from_pydict(
            {"key": ks, "shard": ["shard-" + "1" * 32 + ".tar"] * n, "offset": np.arange(n), "length": np.ones(n),
             "mean_length": np.ones(n), "std_offset": np.full(n, -1), "shape": [[1]] * n, "dtype": ["uint8"] * n,
             "target": np.zeros(n), "sha256": ["0" * 64] * n, "content_sha256": [""] * n,
             "meta_offset": np.zeros(n), "meta_length": np.zeros(n), "crc32c": np.zeros(n)}, schema=SCHEMA)

    ptr = ms.commit(table(keys), {})
    raw = ms.backend.get(ptr["path"])
    assert pq.read_schema(io.BytesIO(raw)).field("key").type == STORED_KEY
    assert [ms.load().find(k) for k in keys] == list(range(n))
    bad = keys[:-1] + ["Z" * 40]  # never written by latentds: kept as text, refused by name on read
    ptr = ms.commit(table(bad), {})
    assert pq.read_schema(io.BytesIO(ms.backend.get(ptr["path"]))).field("key").type == pa.string()
    with pytest.raises(ManifestError, match="not a sample key"):
        ms.load()
