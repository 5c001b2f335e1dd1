"""What each step of a compaction costs (issue 15, item 3): CPU per sample and per MB of staging
bytes, step by step, next to a plain copy of the same bytes.

Each step is the library's own function, run alone over every staging object of a cache that
``benchmarks/scale_sim.py`` (or anything else) wrote, in the chunks compaction uses, best of
``--repeat`` runs of CPU time (``time.process_time``), so that other processes' load changes
the numbers less than it changes wall times. The steps add up to about one thread's share of a
compaction; the real one runs the checksum, index and write steps on a second thread.

    python benchmarks/compaction_costs.py [--samples 8192] [--dir /tmp/latentds-costs]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

__all__ = ["main"]


def best_cpu(f: Callable[[], Any], repeat: int) -> float:
    out = []
    for _ in range(repeat):
        c = time.process_time()
        f()
        out.append(time.process_time() - c)
    return min(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--dir", default="/tmp/latentds-costs")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    import scale_sim as ss
    from latentds.store import savez
    from latentds.store.backend import Backend, read_local
    from latentds.store.entries import decode_staged_many, sample_key
    from latentds.store.shardpipe import CHUNK, _Chunk, _Shard
    from latentds.store.shards import ChannelSums
    from latentds.store.tarpack import index_samples_json, sample_checksums

    shutil.rmtree(args.dir, ignore_errors=True)
    store = ss.store_at(args.dir)
    ss.write_staging(store, [sample_key({"sim": i}) for i in range(args.samples)], (4, 16, 13), seed=1)
    keys = store.cache.keys()
    root = store.cache.backend.path("staging")
    paths = [f"{root}/{k[:2]}/{k}.npz" for k in keys]
    datas = [read_local(p) for p in paths]
    n, nbytes = len(datas), sum(map(len, datas))
    chunks = [(a, min(a + CHUNK, n)) for a in range(0, n, CHUNK)]
    walks = [savez._walk(d) for d in datas]
    items = list(zip(keys, decode_staged_many(datas, paths)))
    built = [_Chunk(items[a:b], 0) for a, b in chunks]
    shard = b"".join(c.buf for c in built)
    bodies = []  # the three members' bodies, as the zip walk CRC-checks them
    for d in datas:
        mv, pos, parts = memoryview(d), 0, []
        for st in (savez._Z8, savez._Z8, savez._Z7):
            f = st.unpack_from(d, pos)
            start = pos + st.size
            parts.append(mv[start:start + f[-1]])
            pos = start + f[-1]
        bodies.append(parts)

    def digests() -> None:
        for w in walks:
            mi = w[2]
            h = hashlib.sha256(savez.dtype_name(mi[0]).encode())
            h.update(repr(mi[1]).encode())
            h.update(w[0][mi[4]:])
            h.update(w[1][w[3][4]:])
            h.hexdigest()

    def chunk_sums() -> None:
        acc = ChannelSums()
        for a, b in chunks:
            acc.add([e.mean for _, e in items[a:b]])

    def rows_sha() -> None:
        for c in built:
            mv = memoryview(c.buf)
            for a, b in zip(c.rel_start.tolist(), c.rel_end.tolist()):
                hashlib.sha256(mv[a:b]).hexdigest()

    def write() -> None:
        b = Backend(os.path.join(args.dir, "w"))
        b.put("shards/x.tar", shard)

    steps: list[tuple[str, str, Callable[[], Any]]] = [
        ("copy", "plain copy: open + read + append, files of 4,096 (scale_sim)",
         lambda: ss.plain_copy(store, os.path.join(args.dir, "copy"), 4096)),
        ("read", "read each staging object (open, fstat, read, close)", lambda: [read_local(p) for p in paths]),
        ("zip_crc32", "check: the three zip members' CRC-32", lambda: [zlib.crc32(b) for bs in bodies for b in bs]),
        ("staging_sha256", "check: sha256 of the arrays vs the metadata's", digests),
        ("zip_walk_total", "check: zip walk + .npy headers + CRC-32s + sha256 (savez._walk)",
         lambda: [savez._walk(d) for d in datas]),
        ("json_parse", "check: metadata JSON parse (one scan per 256)",
         lambda: [savez._loads_many([w[4] for w in walks[a:b]]) for a, b in chunks]),
        ("canonical_proof", "check: stored metadata is canonical_json (one encode per 256)",
         lambda: [savez.canonical_metas([e for _, e in items[a:b]]) for a, b in chunks]),
        ("decode_total", "read-side total: walk + JSON + arrays + Staged (decode_staged_many)",
         lambda: [decode_staged_many(datas[a:b], paths[a:b]) for a, b in chunks]),
        ("pack", "pack: tar headers + members into chunk buffers (incl. the canonical proof)",
         lambda: [_Chunk(items[a:b], 0) for a, b in chunks]),
        ("row_sha256", "format: sha256 of each row's bytes (manifest column)", rows_sha),
        ("row_checksums", "format: sha256 + CRC32C of each row (tarpack.sample_checksums)",
         lambda: [sample_checksums(c.buf, c.rel_start, c.rel_end) for c in built]),
        ("shard_sha256", "format: sha256 of the shard (its name)", lambda: hashlib.sha256(shard).hexdigest()),
        ("index_json", "format: the shard index's rows", lambda: [index_samples_json(c.rows) for c in built]),
        ("channel_sums", "format: per-channel sums (normalisation stats)", chunk_sums),
        ("write_fsync", "write the shard bytes (temp + fsync + rename)", write),
    ]
    for c in built:  # rows for index_json
        c.finish(_Shard())
    res: dict[str, Any] = {"samples": n, "staging_bytes": nbytes, "load_start": os.getloadavg()[0], "steps": {}}
    mb = nbytes / 1e6
    print(f"compaction cost by step: {n} staging objects, {mb:.1f} MB ({nbytes / n:.0f} B each); best of "
          f"{args.repeat} CPU times; load {os.getloadavg()[0]:.2f} at start")
    print(f"  {'step':16s} {'us/sample':>10s} {'CPU ms/MB':>10s}  what")
    for name, what, f in steps:
        cpu = best_cpu(f, args.repeat)
        res["steps"][name] = {"cpu_s": cpu, "us_per_sample": cpu / n * 1e6, "ms_per_MB": cpu / mb * 1e3, "what": what}
        print(f"  {name:16s} {cpu / n * 1e6:10.1f} {cpu / mb * 1e3:10.2f}  {what}")
    res["load_end"] = os.getloadavg()[0]
    print(f"load {res['load_end']:.2f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
