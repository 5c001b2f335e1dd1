"""Compaction reads staging objects in batches (issue 15, item 3, fifth pass): the batched
reader parses the metadata of many objects together and must accept, refuse and return
exactly what the one-object reader does, object by object, whatever its neighbours are."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from latentds.errors import CacheError
from latentds.store import savez
from latentds.store.entries import array_digest, decode_staged, decode_staged_many, encode_entry


def _with_meta_text(text: bytes, *, std: bool = True) -> bytes:
    """A staging object whose metadata member is ``text`` as stored (any spelling)."""
    m = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    buf = io.BytesIO()
    arrays = {"mean": m, "meta": np.frombuffer(text, np.uint8)}
    if std:
        arrays["std"] = m + 1
    np.savez(buf, **arrays)
    return buf.getvalue()


def _digest() -> str:
    m = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    return array_digest(m, m + 1)


def _texts() -> list[bytes]:
    d = _digest()
    canon = json.dumps({"sha256": d, "target": 1}, sort_keys=True, separators=(",", ":")).encode()
    return [
        canon,
        b" " + canon,                                      # leading blank: json.loads accepts it
        canon + b" \n",                                    # trailing blanks: accepted too
        json.dumps({"sha256": d, "n": "\u00e9"}, ensure_ascii=False).encode(),  # non-ASCII text
        b'{"sha256": "%s", "a": [1, 2.5, null, true]}' % d.encode(),            # blanks inside
        b'{"sha256":"%s"}{}' % d.encode(),                # extra data after the object: refused
        b'{"sha256":"%s"' % d.encode(),                   # cut short: refused
        b"[1, 2]",                                         # not an object: refused
        b"",                                               # empty: refused
        b'{"sha256":"%s","x":NaN}' % d.encode(),          # json.loads accepts NaN
        b"\xff\xfe{}",                                     # not UTF-8: refused
        b'{"a":"x',                                        # a string that the next text would close
        b'y","sha256":"%s"}' % d.encode(),
        b'{"sha256":"%s","k":1,"k":2}' % d.encode(),      # duplicate keys: last wins in both
    ]


def _outcome(fast: savez.FastStaged | None) -> object:
    if fast is None:
        return None
    mean, std, meta, mean_b, std_b, raw = fast
    return (mean.dtype.str, mean.shape, mean.tobytes(), None if std is None else std.tobytes(),
            json.dumps(meta, sort_keys=True), bytes(mean_b), None if std_b is None else bytes(std_b), raw)


def test_joined_metadata_parse_is_json_loads_text_by_text() -> None:
    texts = _texts()
    objs = [_with_meta_text(t) for t in texts]
    want = [_outcome(savez.fast_parse(o)) for o in objs]
    assert want[0] is not None and want[5] is None and want[3] is not None  # the cases are what they say
    assert [_outcome(f) for f in savez.fast_parse_many(objs)] == want
    rng = np.random.default_rng(0)
    for _ in range(20):  # any neighbours, any order
        order = rng.permutation(len(objs))
        assert [_outcome(f) for f in savez.fast_parse_many([objs[i] for i in order])] == [want[i] for i in order]
    got, ref = savez._loads_many(texts), [savez._loads(t) for t in texts]  # as text: NaN != NaN
    assert [json.dumps(g) if g is not savez._BAD else "BAD" for g in got] == \
        [json.dumps(r) if r is not savez._BAD else "BAD" for r in ref]


@pytest.mark.parametrize("k", range(3))
def test_batched_reader_agrees_with_decode_staged_on_every_flipped_byte(k: int) -> None:
    rng = np.random.default_rng(5)
    m = rng.standard_normal((2, 3, 2)).astype(np.float32)
    data = [encode_entry(m, np.abs(m), {"target": 1, "content_sha256": "ab"}),
            encode_entry(m, None, {"target": 0}),
            encode_entry(m.astype(np.float16), np.abs(m)[:1], {"note": "é \" x"})][k]
    variants = [data]
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            d = bytearray(data)
            d[i] ^= bit
            variants.append(bytes(d))

    def one(d: bytes) -> object:
        try:
            s = decode_staged(d, "obj")
        except CacheError as exc:
            return ("error", str(exc))
        return ("ok", s.mean.tobytes(), None if s.std is None else s.std.tobytes(), json.dumps(s.meta, sort_keys=True))

    def many(ds: list[bytes]) -> list[object]:
        out = []
        for s in decode_staged_many(ds, ["obj"] * len(ds)):
            out.append(("error", str(s)) if isinstance(s, CacheError) else
                       ("ok", s.mean.tobytes(), None if s.std is None else s.std.tobytes(),
                        json.dumps(s.meta, sort_keys=True)))
        return out

    want = [one(d) for d in variants]
    assert want[0][0] == "ok" and any(w[0] == "error" for w in want)
    for a in range(0, len(variants), 97):  # batches mixing good and corrupt objects
        assert many(variants[a:a + 97]) == want[a:a + 97]


def test_pipelined_shards_are_write_shard_byte_for_byte(tmp_path, monkeypatch) -> None:
    """Shards packed in chunks (here 5 samples) and finished on the background thread: the same
    shard files, index documents and manifest rows as write_shard of the same group, for
    groups that end inside a chunk, on a chunk boundary, and of one sample."""
    import os

    from latentds.store import ShardedStore, shardpipe
    from latentds.store.backend import Backend
    from latentds.store.entries import LatentCache, decode_entry
    from latentds.store.manifest import shard_table
    from latentds.store.shards import write_shard

    monkeypatch.setattr(shardpipe, "CHUNK", 5)
    store = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    rng = np.random.default_rng(2)
    keys = sorted(os.urandom(20).hex() for _ in range(41))
    for i, k in enumerate(keys):
        shape = (4, 5, 3) if i % 7 else (4, 2, 6)
        m = rng.standard_normal(shape).astype(np.float32 if i % 6 else np.float16)
        meta = {"target": i % 3, "content_sha256": f"{i:064x}", "note": "é" * (i % 2)}
        store.cache.put(k, m, np.abs(m) if i % 4 else None, meta)
    rep = store.compact(shard_samples=10)  # shards of 10, 10, 10, 10, 1: ends mid-chunk and on one
    assert rep.packed == 41 and len(rep.shards) == 5 and not rep.bad
    ref = Backend(str(tmp_path / "ref"))
    m = store.manifest()
    for s in range(0, 41, 10):
        part = [(k, decode_entry(open(store.cache.object_path(k), "rb").read(), k)) for k in keys[s:s + 10]]
        w = write_shard(ref, part)
        assert w.name == m.locate(m.find(part[0][0]))[0]
        assert open(store.shard_path(w.name), "rb").read() == ref.get(f"shards/{w.name}")
        idx = f"shards/{w.name[:-4]}.index.json"
        assert store.backend.get(idx) == ref.get(idx)
        mine = m.table.filter(m.table.column("shard").to_numpy(zero_copy_only=False) == w.name)
        assert mine.equals(shard_table(w.name, w.rows))


def test_a_key_tarfile_spells_otherwise_goes_through_write_shard(tmp_path) -> None:
    """A member name over 99 bytes (never one of latentds' keys) needs tarfile's prefix field:
    that shard falls back to write_shard (tarfile's own header), with the same result."""
    from latentds.store.backend import Backend
    from latentds.store.entries import Entry
    from latentds.store.shardpipe import ShardPipeline
    from latentds.store.shards import write_shard

    m = np.ones((2, 2, 2), np.float32)
    items = [("d" * 60 + "/" + "a" * 40, Entry(m, None, {"target": 1})), ("b" * 40, Entry(m * 2, m, {"target": 0}))]
    mine, ref = Backend(str(tmp_path / "a")), Backend(str(tmp_path / "b"))
    with ShardPipeline(mine, chunk=1) as pipe:
        for k, e in items:
            pipe.add(k, e)
        (w,) = pipe.results()
    r = write_shard(ref, items)
    assert (w.name, list(w.rows), w.stats) == (r.name, list(r.rows), r.stats)
    assert mine.get(f"shards/{w.name}") == ref.get(f"shards/{r.name}")


def test_channel_sums_added_a_chunk_at_a_time_are_channel_sums_bit_for_bit() -> None:
    from latentds.store.shards import ChannelSums, channel_sums

    rng = np.random.default_rng(4)
    for shape, dt in (((4, 16, 13), np.float32), ((4, 128, 104), np.float32), ((3, 5, 2), np.float16)):
        means = [(rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)).astype(dt) for _ in range(700)]
        means[300] = rng.standard_normal((shape[0], 3, 3)).astype(dt)  # one of another layout
        for cuts in ([], [1], [256, 512], sorted(rng.choice(np.arange(1, 700), 9, replace=False).tolist())):
            acc = ChannelSums()
            for a, b in zip([0, *cuts], [*cuts, 700]):
                acc.add(means[a:b])
            assert acc.result() == channel_sums(means), (shape, cuts)
        acc = ChannelSums()  # one layout only: every batch takes the vectorised path
        for a in range(0, 300, 7):
            acc.add(means[a:min(a + 7, 300)])
        assert acc.result() == channel_sums(means[:300])


def test_scale_sim_repeats_compaction_and_reports_each_run(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "benchmarks/scale_sim.py", "--rows", "300", "--real-samples", "300",
                        "--compact-runs", "2", "--open-runs", "1", "--skip-scale-verify", "--skip-scale-gc",
                        "--skip-scale-compact", "--dir", str(tmp_path / "c"), "--json", str(out)],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads(out.read_text())["real"]
    assert len(r["compact_runs"]) == 2 and r["packed"] == 300 and r["compact_vs_copy"] > 0
    assert r["compact_s"] in [x["compact_s"] for x in r["compact_runs"]]
    assert "each run" in p.stdout


def test_compaction_costs_runs_every_step(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "c.json"
    p = subprocess.run([sys.executable, "benchmarks/compaction_costs.py", "--samples", "64", "--repeat", "1",
                        "--dir", str(tmp_path / "c"), "--json", str(out)], cwd=root, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    steps = json.loads(out.read_text())["steps"]
    assert {"copy", "read", "zip_crc32", "staging_sha256", "row_checksums", "shard_sha256", "write_fsync"} <= set(steps)
    assert all(s["us_per_sample"] >= 0 for s in steps.values())


def test_compaction_ab_prints_a_shard_digest(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    runs = []
    for extra in ([], ["--no-read-ahead"]):
        p = subprocess.run([sys.executable, "benchmarks/compaction_ab.py", "--code", str(root), "--dir",
                            str(tmp_path / "s"), "--samples", "40", "--runs", "1", *extra], cwd=root,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    assert runs[0]["packed"] == runs[1]["packed"] == 40
    assert runs[0]["shards_sha256"] == runs[1]["shards_sha256"]  # same shards with and without the read thread


def test_staging_batches_are_bounded_by_bytes(tmp_path: Any, monkeypatch: Any) -> None:
    """Compaction reads staging objects in batches (one read ahead) of at most STAGED_BATCH
    objects and STAGED_BATCH_BYTES bytes, so its memory does not grow with the sample size
    (review R2: 256 objects of 8 MB latents were 4 GB)."""
    import numpy as np

    from latentds.store import ShardedStore, entries
    from latentds.store.entries import LatentCache

    store = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    m = np.zeros((64, 64, 64), np.float32)  # 1 MiB per object
    for i in range(20):
        store.cache.put(f"{i:040x}", m + i, None, {"target": i})
    seen: list[int] = []
    real = entries.fetch_ahead

    def spy(fn: Any, items: Any, depth: int = 0, start: Any = None) -> Any:
        def counted(batch: list[str]) -> Any:
            seen.append(len(batch))
            return fn(batch)
        return real(counted, items, depth)

    monkeypatch.setattr(entries, "fetch_ahead", spy)
    rep = store.compact()
    assert rep.packed == 20 and not rep.bad
    assert sum(seen) == 20 and 1 <= max(seen) <= entries.STAGED_BATCH_BYTES // (1 << 20)
    for i in (0, 7, 19):  # served from the shards, each its own sample
        e = store.get(f"{i:040x}")
        assert e is not None and float(e.mean.reshape(-1)[0]) == float(i)
