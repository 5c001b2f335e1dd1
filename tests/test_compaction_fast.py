"""Compaction's batched packer (issue 15, item 3) writes exactly what the per-member writer
wrote: the same shard bytes, index documents, manifest rows and channel sums; and its staging
object reader accepts and refuses exactly what the general reader does, byte flip by byte flip."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import latentds.store.entries as entries
from latentds.errors import CacheError
from latentds.store import ShardedStore
from latentds.store.entries import Entry, LatentCache, decode_entry, decode_staged, encode_entry
from latentds.store.manifest import rows_table, shard_table
from latentds.store.shards import _build_shard_slow, build_shard, channel_sums, index_document
from latentds.store.tarpack import RowBlock


def _general(data: bytes, name: str):
    """The reader before the fast path (zip walk + parse_npy), for comparison."""
    fast, entries.fast_parse = entries.fast_parse, lambda d: None
    try:
        return decode_staged(data, name)
    finally:
        entries.fast_parse = fast


def _outcome(read, data: bytes):
    try:
        s = read(data, "obj")
    except CacheError as exc:
        return ("error", str(exc))
    return ("ok", s.mean.dtype.str, s.mean.shape, s.mean.tobytes(), None if s.std is None else (s.std.dtype.str,
            s.std.shape, s.std.tobytes()), json.dumps(s.meta, sort_keys=True))


def _objects() -> list[bytes]:
    rng = np.random.default_rng(5)
    m = rng.standard_normal((2, 3, 2)).astype(np.float32)
    return [encode_entry(m, np.abs(m), {"target": 1, "content_sha256": "ab"}),          # std, same layout
            encode_entry(m, None, {"target": 0}),                                          # no std
            encode_entry(m.astype(np.float16), np.abs(m)[:1], {"note": "é \" x"}),        # std of its own layout
            encode_entry(np.asfortranarray(m[0]), None, {"target": 3})]


@pytest.mark.parametrize("k", range(4))
def test_fast_reader_agrees_with_the_general_reader_on_every_flipped_byte(k: int) -> None:
    data = _objects()[k]
    assert entries.fast_parse(data) is not None  # the layout latentds writes takes the fast path
    assert _outcome(decode_staged, data) == _outcome(_general, data)
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            d = bytearray(data)
            d[i] ^= bit
            assert _outcome(decode_staged, bytes(d)) == _outcome(_general, bytes(d)), (i, bit)


def _items() -> list[tuple[str, object]]:
    rng = np.random.default_rng(3)
    out: list[tuple[str, object]] = []
    for i in range(30):
        shape = (4, int(rng.integers(1, 9)), int(rng.integers(1, 9))) if i % 4 else (4, 5, 5)
        dt = np.float16 if i % 5 == 0 else np.float32
        mean = rng.standard_normal(shape).astype(dt)
        std = None if i % 3 == 0 else np.abs(rng.standard_normal(shape)).astype(dt)
        meta = {"key": f"{i:040x}", "target": i % 4, "content_sha256": 'q"\\' if i == 7 else f"{i:064x}",
                "note": "é" * (i % 3)}
        if i == 11:
            meta.pop("target")
        key = f"{i:040x}"
        if i % 2:  # a checked staging object, as compaction reads it
            data = encode_entry(mean, std, meta)
            if i == 9:  # metadata stored with spaces: not canonical, written anew
                raw = json.dumps(json.loads(_general(data, "x").meta_raw), sort_keys=True).encode()
                assert b" " in raw
            out.append((key, decode_staged(data, key)))
        else:
            out.append((key, Entry(mean, std, meta)))
    return out


def test_batched_shard_is_the_per_member_shard() -> None:
    items = _items()
    for part in (items[:1], items[1:3], items, [it for it in items if not isinstance(it[1], Entry)]):
        data, rows = build_shard(part)
        ref, ref_rows = _build_shard_slow(part)
        assert isinstance(rows, RowBlock) and bytes(data) == ref and rows == ref_rows and list(rows) == ref_rows
        scratch = bytearray(b"\xff" * 100)  # old bytes in the buffer must not leak into a shard
        view, rows2 = build_shard(part, scratch=scratch)
        assert bytes(view) == ref and rows2 == ref_rows
        stats = channel_sums([e.mean for _, e in part if e.mean.shape == part[0][1].mean.shape])
        assert index_document("shard-" + "a" * 32 + ".tar", data, rows, stats) == \
            index_document("shard-" + "a" * 32 + ".tar", ref, ref_rows, stats)
        name = "shard-" + "b" * 32 + ".tar"
        assert shard_table(name, rows).equals(rows_table([(name, r) for r in ref_rows]))


def _channel_sums_loop(means: list[np.ndarray]) -> dict:
    c = int(means[0].shape[0])
    s, ss, count = np.zeros(c), np.zeros(c), 0
    for m in means:
        x = m.reshape(c, -1).astype(np.float64)
        s += x.sum(axis=1)
        ss += np.einsum("ij,ij->i", x, x)
        count += x.shape[1]
    return {"count": [count] * c, "sum": [float(v) for v in s], "sumsq": [float(v) for v in ss]}


@pytest.mark.parametrize("shape,dtype", [((4, 16, 13), np.float32), ((4, 128, 104), np.float32),
                                         ((16, 8, 8), np.float16), ((3, 7, 1), np.float64)])
def test_channel_sums_are_the_per_sample_loop_bit_for_bit(shape, dtype) -> None:
    rng = np.random.default_rng(0)
    means = [(rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)).astype(dtype) for _ in range(300)]
    assert channel_sums(means) == _channel_sums_loop(means)  # 4x128x104: several chunks
    mixed = means[:5] + [rng.standard_normal((shape[0], 2, 2)).astype(dtype)]
    assert channel_sums(mixed) == _channel_sums_loop(mixed)


def test_compaction_writes_what_the_per_member_writer_wrote(tmp_path) -> None:
    store = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    rng = np.random.default_rng(1)
    keys = sorted(f"{i:02x}" + os.urandom(19).hex() for i in range(40))
    for i, k in enumerate(keys):
        m = rng.standard_normal((4, 5, 3)).astype(np.float32)
        store.cache.put(k, m, np.abs(m) if i % 5 else None, {"target": i % 2, "content_sha256": f"{i:064x}"})
    # one corrupt object: reported as bad by name, as before, and never packed
    bad = store.cache.object_path(keys[7])
    with open(bad, "r+b") as fh:
        fh.seek(200)
        b = fh.read(1)
        fh.seek(200)
        fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(CacheError) as want:
        decode_entry(open(bad, "rb").read(), bad)
    rep = store.compact(shard_samples=16)
    assert rep.bad == [(bad, str(want.value))] and rep.packed == 39 and len(rep.shards) == 3
    good = [k for k in keys if k != keys[7]]
    m = store.manifest()
    for s in range(0, 39, 16):
        part = [(k, decode_entry(open(store.cache.object_path(k), "rb").read(), k)) for k in good[s:s + 16]]
        ref, ref_rows = _build_shard_slow(part)
        name = m.locate(m.find(part[0][0]))[0]
        assert open(store.shard_path(name), "rb").read() == ref
        stats = _channel_sums_loop([e.mean for _, e in part])
        idx = store.backend.get(f"shards/{name[:-4]}.index.json")
        assert idx == index_document(name, ref, ref_rows, stats)
        assert m.table.filter(m.table.column("shard").to_numpy(zero_copy_only=False) == name).equals(
            rows_table([(name, r) for r in ref_rows]))


def test_a_staging_object_cut_short_anywhere_is_a_typed_error_and_compaction_goes_on(tmp_path) -> None:
    # The fast reader once unpacked the second and third zip headers without a length check:
    # a file cut inside them raised struct.error, which stopped compaction for every sample.
    m = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32)
    data = encode_entry(m, np.abs(m), {"target": 1})
    accepted = []
    for n in range(len(data)):
        try:
            e = decode_staged(data[:n], "staging/ab/obj.npz")
        except CacheError as exc:
            assert "staging/ab/obj.npz" in str(exc)
            continue
        # Cut inside the zip's central directory only: every member is whole and checked
        # (CRC-32 + sha256), so the arrays are exactly the object's.
        assert np.array_equal(e.mean, m) and np.array_equal(e.std, np.abs(m))
        accepted.append(n)
    assert not accepted or min(accepted) > len(data) - 3 * 100  # never a cut inside a member
    store = ShardedStore(LatentCache(str(tmp_path), "ns"))
    keys = sorted(os.urandom(20).hex() for _ in range(3))
    for k in keys:
        store.cache.put(k, m, np.abs(m), {"target": 0})
    with open(store.cache.object_path(keys[1]), "r+b") as fh:
        fh.truncate(400)  # inside the meta member's header
    rep = store.compact()
    assert len(rep.bad) == 1 and keys[1] in str(rep.bad)
    assert store.manifest().find(keys[0]) >= 0 and store.manifest().find(keys[2]) >= 0


def test_a_negative_npy_dimension_is_a_typed_error() -> None:
    from latentds.store.savez import npy_info

    head = b"{'descr': '<f4', 'fortran_order': False, 'shape': (-2, -3), }"
    head = head + b" " * (118 - len(head)) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + b"\x00" * 24
    assert npy_info(memoryview(body)) is None  # the general reader then raises by name
