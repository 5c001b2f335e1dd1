"""Scale by simulation (issue 15, item 3): a 10M-sample cache on one small machine.

What is REAL and what is SIMULATED (on local disk):

* A **real tier** of ``--real-samples`` small latents (default 16,384 of 4×16×13 float32, mean
  + std: a 128×104 thumbnail at f=8) is written through the project's own code:
  ``LatentCache.put`` staging objects, ``ShardedStore.compact`` (tar shards + index + manifest
  generation), ``ops.verify``, ``ops.gc``. On it: compaction throughput against a plain copy of
  the same staging bytes into shard-sized files (copy, compact, copy again: the copy rate is the
  mean of the two, so load changes hit both), verify throughput, gc listing time.
* A **simulated** manifest of ``--rows`` rows (the real tier's rows plus rows of simulated
  shards) in the real shard layout: every simulated row has the offsets, lengths and metadata
  positions of the real compacted shards (small fixed-size latents pack identically), random
  keys / sha256 / content sha256 / CRC32C, one shard per 4,096 rows (``DEFAULT_SHARD_SAMPLES``).
  It is committed as a generation in the project's format (``manifest.STORED_SCHEMA``: 20-byte
  binary keys since issue 15, or ``--text-keys`` for the text keys before; zstd Parquet, the same
  metadata, 1,048,576-row row groups as ``pq.write_table`` makes, keys sorted, sha256 + CRC32C
  pointer written last with ``write_atomic``) but streamed by this script, row group by row
  group, instead of ``ManifestStore.commit`` (which holds the whole table and its sorted copy
  in memory: ~8 GB at 10M rows). The simulated shards' bytes do not exist (that would be
  ~51 GB); for the gc listing they exist as empty files.
* On that generation, each in a FRESH process (RSS from /proc/self/status): manifest open
  (``ManifestStore.load``: pointer, read, sha256, key index, int columns; three processes,
  median), first read plan and a warm read of a real row; ``verify`` (reads the real shards,
  reports the simulated ones missing: its per-row bookkeeping at full size); ``gc --dry-run``
  (listing the namespace with all shards present); an incremental ``compact`` of 4,096 new
  staging objects (``--compact-new``) into the full manifest (the merge-commit that bulk jobs
  also run).

    python benchmarks/scale_sim.py --rows 1000000 [--dir /tmp/latentds-scale] [--json out.json]
    python benchmarks/scale_sim.py --rows 10000000 --skip-scale-verify --skip-scale-gc --skip-scale-compact
        # the full size, once: verify, gc and compact hold every key as a Python string (~1 GB per
        # million rows at peak, measured at 1M), too much for a shared 23 GB machine

Goals (issue 15): 10M-row open <= 3 s and <= 1.5 GB; compaction >= 50 % of copy throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAMESPACE = "sim"
ROW_GROUP = 1 << 20  # pq.write_table's default max row group length (what commit writes)
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

__all__ = ["main"]


# ----------------------------------------------------------------------------- helpers


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM (peak) of this process, bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out


def load_state() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cores"


def dir_bytes(path: str) -> tuple[int, int]:
    n = size = 0
    for dp, _, names in os.walk(path):
        for name in names:
            n += 1
            size += os.path.getsize(os.path.join(dp, name))
    return n, size


def hex_strings(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """``n`` random lowercase hex strings of ``width`` characters as a numpy ``S<width>`` array."""
    return HEX[rng.integers(0, 16, size=(n, width), dtype=np.uint8)].view(f"S{width}").reshape(n)


def string_array(fixed: np.ndarray) -> Any:
    """An Arrow string array over a fixed-width numpy bytes array (no Python strings)."""
    import pyarrow as pa

    n, w = len(fixed), fixed.dtype.itemsize
    offsets = (np.arange(n + 1, dtype=np.int64) * w).astype(np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(fixed).tobytes()))


def store_at(directory: str) -> Any:
    from latentds.store.entries import LatentCache
    from latentds.store import ShardedStore

    return ShardedStore(LatentCache(directory, NAMESPACE))


def child(op: str, directory: str, *extra: str) -> dict[str, Any]:
    """Run ``op`` in a fresh interpreter (nothing cached, RSS measured from zero)."""
    p = subprocess.run([sys.executable, __file__, "--child", op, "--dir", directory, *extra],
                       capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"child {op} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- children


def run_child(op: str, directory: str, args: argparse.Namespace) -> dict[str, Any]:
    import latentds.store.manifest  # noqa: F401  imports first: their RSS is the baseline, not the op's
    import latentds.store

    base = proc_status()["VmRSS"]
    store = store_at(directory)
    out: dict[str, Any] = {"rss_base": base}
    cpu0 = time.process_time()
    if op == "open":
        t = time.perf_counter()
        m = store.refresh()  # what a reader's first access does: the pointer, then the generation
        out["open_s"], out["open_cpu_s"] = time.perf_counter() - t, time.process_time() - cpu0
        out["rows"] = len(m)
        out["rss_after_open"] = proc_status()["VmRSS"]
        out["peak_after_open"] = proc_status()["VmHWM"]
        keys = m.key_at(0), m.key_at(len(m) // 2), m.key_at(len(m) - 1)
        t = time.perf_counter()
        for _ in range(1000):
            for k in keys:
                m.find(k)
        out["find_us"] = (time.perf_counter() - t) / 3000 * 1e6
        t = time.perf_counter()
        m.read_plan()
        out["read_plan_s"] = time.perf_counter() - t
        out["rss_after_plan"] = proc_status()["VmRSS"]
        real = json.loads(Path(directory, "real_keys.json").read_text())
        row = m.find(real[0])
        store.read_planned(m, row)  # first read opens the shard
        rows = [m.find(k) for k in real[:2000]]
        t = time.perf_counter()
        for r in rows:
            store.read_planned(m, r)
        out["warm_read_us"] = (time.perf_counter() - t) / len(rows) * 1e6
    elif op == "verify":
        t = time.perf_counter()
        rep = latentds.store.verify(store, staging=False)
        out["verify_s"] = time.perf_counter() - t
        out["samples_checked"] = rep.samples
        out["shards"] = rep.shards
        out["bad"] = len(rep.bad)
        out["bad_missing_shards"] = sum("is missing" in why for _, why in rep.bad)
    elif op == "gc":
        loc = store.location
        t = time.perf_counter()
        files = loc.fs.find(loc.path, detail=True)
        out["find_s"] = time.perf_counter() - t
        out["files"] = len(files)
        del files
        t = time.perf_counter()
        rep = latentds.store.gc(store, grace_s=1e9, dry_run=True)
        out["gc_s"] = time.perf_counter() - t
        out["kept_young"] = rep.kept_young
    elif op == "compact":
        t = time.perf_counter()
        rep = store.compact()
        out["compact_s"] = time.perf_counter() - t
        out["packed"] = rep.packed
        out["rows_after"] = len(store.manifest())
    out["cpu_s"] = time.process_time() - cpu0
    out["peak"] = proc_status()["VmHWM"]
    out["rss_end"] = proc_status()["VmRSS"]
    return out


# ----------------------------------------------------------------------------- real tier


def write_staging(store: Any, keys: list[str], shape: tuple[int, ...], seed: int) -> float:
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    for i, key in enumerate(keys):
        mean = rng.standard_normal(shape, dtype=np.float32)
        std = np.abs(rng.standard_normal(shape, dtype=np.float32)) + 0.1
        meta = {"key": key, "target": i % 2, "content_sha256": hashlib.sha256(key.encode()).hexdigest(),
                "content_shape": [shape[1] * 8, shape[2] * 8], "image_shape": [shape[1] * 8, shape[2] * 8],
                "relpath_hash": hashlib.sha256(b"p" + key.encode()).hexdigest()[:16]}
        store.cache.put(key, mean, std, meta)
    return time.perf_counter() - t


def plain_copy(store: Any, out_dir: str, per_file: int) -> tuple[float, float, int]:
    """Read every staging object (sorted keys, as compaction does) and write them back to back
    into files of ``per_file`` objects, each written to a temp name and renamed (as shards
    are): the I/O a compaction cannot avoid. Returns (seconds, CPU seconds, bytes)."""
    keys = store.cache.keys()
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    t, c = time.perf_counter(), time.process_time()
    total = 0
    for s in range(0, len(keys), per_file):
        buf = io.BytesIO()
        for key in keys[s:s + per_file]:
            with open(store.cache.object_path(key), "rb") as fh:
                buf.write(fh.read())
        data = buf.getvalue()
        total += len(data)
        tmp = os.path.join(out_dir, f".tmp-{s}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(out_dir, f"copy-{s}.bin"))
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    shutil.rmtree(out_dir)
    return secs, cpu, total


def real_tier(args: argparse.Namespace, res: dict[str, Any]) -> Any:
    from latentds.store.entries import sample_key
    from latentds.store import gc, verify
    from latentds.store import DEFAULT_SHARD_SAMPLES

    store = store_at(args.dir)
    store.cache.write_info({"simulation": "benchmarks/scale_sim.py"})
    shape = tuple(args.latent_shape)
    keys = [sample_key({"sim": i}) for i in range(args.real_samples)]
    Path(args.dir, "real_keys.json").write_text(json.dumps(keys[:4096]))
    r: dict[str, Any] = {"samples": args.real_samples, "latent_shape": list(shape)}
    r["staging_write_s"] = write_staging(store, keys, shape, seed=1)
    n, staged = dir_bytes(store.location.join("staging"))
    r["staging_objects"], r["staging_bytes"] = n, staged
    copy_dir = os.path.join(args.dir, "plain-copy")
    runs = []
    for i in range(args.compact_runs):  # copy, compact, copy; again from scratch for each run
        if i:
            for sub in ("shards", "manifest"):
                shutil.rmtree(store.location.join(sub), ignore_errors=True)
            store = store_at(args.dir)
        c1, u1, copied = plain_copy(store, copy_dir, DEFAULT_SHARD_SAMPLES)
        t, c = time.perf_counter(), time.process_time()
        rep = store.compact()
        cs, cu = time.perf_counter() - t, time.process_time() - c
        c2, u2, _ = plain_copy(store, copy_dir, DEFAULT_SHARD_SAMPLES)
        # CPU seconds as well as wall: on a shared, overloaded machine the wall time of CPU-bound
        # work stretches with the load; the CPU-time ratio is what one quiet core would show
        runs.append({"compact_s": cs, "compact_cpu_s": cu, "copy_s": [c1, c2], "copy_cpu_s": [u1, u2],
                     "ratio": (staged / cs) / (copied / statistics.mean([c1, c2])),  # as compact_vs_copy below
                     "ratio_cpu": statistics.mean([u1, u2]) / cu,
                     "load": os.getloadavg()[0]})
    med = sorted(runs, key=lambda x: x["ratio"])[len(runs) // 2]  # the run with the median wall ratio
    r["compact_runs"] = runs
    r["compact_s"], r["compact_cpu_s"] = med["compact_s"], med["compact_cpu_s"]
    r["copy_s"], r["copy_cpu_s"] = med["copy_s"], med["copy_cpu_s"]
    r["compact_vs_copy_cpu"] = med["ratio_cpu"]
    r["copy_bytes"] = copied
    r["packed"], r["shards"] = rep.packed, len(rep.shards)
    _, shard_bytes = dir_bytes(store.location.join("shards"))
    r["shard_bytes"] = shard_bytes
    copy_rate = copied / statistics.mean(r["copy_s"])
    r["compact_MBps_staging"] = staged / r["compact_s"] / 1e6
    r["copy_MBps"] = copy_rate / 1e6
    r["compact_vs_copy"] = (staged / r["compact_s"]) / copy_rate
    r["compact_samples_per_s"] = rep.packed / r["compact_s"]
    t, c = time.perf_counter(), time.process_time()
    v = verify(store, staging=False)
    r["verify_s"], r["verify_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    assert v.ok and v.samples == args.real_samples, v.bad[:3]
    r["verify_samples_per_s"] = v.samples / r["verify_s"]
    r["verify_MBps_shards"] = shard_bytes / r["verify_s"] / 1e6
    t = time.perf_counter()
    files = store.location.fs.find(store.location.path, detail=True)
    r["find_s"], r["find_files"] = time.perf_counter() - t, len(files)
    t = time.perf_counter()
    g = gc(store, grace_s=1e9, dry_run=True)
    r["gc_s"], r["gc_kept_young"] = time.perf_counter() - t, g.kept_young
    res["real"] = r
    return store


# ----------------------------------------------------------------------------- simulated manifest


def simulate_manifest(store: Any, rows: int, res: dict[str, Any], seed: int) -> list[str]:
    """Commit a generation of ``rows`` rows: the real tier's plus simulated shards of the same
    layout. Returns the simulated shard names."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from google_crc32c import Checksum

    from latentds.store.keys import hex_to_binary
    from latentds.store.manifest import META_KEY, SCHEMA, STORED_SCHEMA, new_generation
    from latentds.store.fsio import write_atomic
    from latentds.store import DEFAULT_SHARD_SAMPLES, combine_stats

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    base = store.manifests.load()
    real, k = base.table, base.table.num_rows
    n_sim = max(0, rows - k)
    # the layout template: the slots of one full real shard, in shard order
    shard0 = real.column("shard")[0].as_py()
    tmpl = real.filter(pa.compute.equal(real.column("shard"), shard0)).sort_by("offset")
    per = min(DEFAULT_SHARD_SAMPLES, tmpl.num_rows)
    tcols = {c: tmpl.column(c).to_numpy()[:per] for c in ("offset", "length", "mean_length", "std_offset",
                                                          "meta_offset", "meta_length")}
    n_shards = -(-n_sim // per)
    sim_shards = [f"shard-{h.decode()}.tar" for h in hex_strings(rng, n_shards, 32)]
    # every key, sorted: generations are committed sorted by key (readers skip a 10M argsort)
    real_keys = np.array(real.column("key").to_pylist(), dtype="S40")
    keys = np.concatenate([real_keys, hex_strings(rng, n_sim, 40)])
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    res_sim: dict[str, Any] = {"rows": rows, "real_rows": k, "sim_rows": n_sim, "sim_shards": n_shards,
                               "rows_per_shard": per, "key_sort_s": time.perf_counter() - t0}
    real_np = {c: real.column(c).to_numpy() for c in ("offset", "length", "mean_length", "std_offset", "meta_offset",
                                                      "meta_length", "target", "crc32c")}
    real_shard = np.array(real.column("shard").to_pylist(), dtype="S42")
    real_sha = np.array(real.column("sha256").to_pylist(), dtype="S64")
    real_content = np.array(real.column("content_sha256").to_pylist(), dtype="S64")
    sim_shard_np = np.array(sim_shards or ["shard-" + "0" * 32 + ".tar"], dtype="S42")  # a placeholder: np.where
    shape, dtype = list(real.column("shape")[0].as_py()), real.column("dtype")[0].as_py()
    generation = new_generation()
    shards_meta = dict(base.meta.get("shards") or {})
    shards_meta.update({s: shards_meta[shard0] for s in sim_shards})
    meta = {"namespace": NAMESPACE, "parent": base.generation, "shards": shards_meta,
            "stats": combine_stats(shards_meta.values()), "created_unix": time.time(), "generation": generation,
            "simulated": f"benchmarks/scale_sim.py: {n_sim} simulated rows in {n_shards} shards"}
    # keys as ManifestStore.commit writes them since issue 15 (20-byte binary), or as before (text)
    text = bool(res.get("args", {}).get("text_keys"))
    schema = (SCHEMA if text else STORED_SCHEMA).with_metadata({META_KEY: json.dumps(meta).encode()})
    path = store.manifests.generation_path(generation)
    tmp = os.path.join(store.location.join("manifest"), f".tmp-{generation}.parquet")
    h, crc = hashlib.sha256(), Checksum()
    no_dict = {} if text else {"use_dictionary": [f.name for f in SCHEMA if f.name != "key"]}
    with pq.ParquetWriter(tmp, schema, compression="zstd", **no_dict) as w:
        for a in range(0, rows, ROW_GROUP):
            idx = order[a:a + ROW_GROUP]
            m = len(idx)
            is_real = idx < k
            ri = np.where(is_real, idx, 0)
            si = np.where(is_real, 0, idx - k)
            slot = si % per
            cols: dict[str, Any] = {"key": string_array(keys[a:a + m]) if text else pa.FixedSizeBinaryArray.from_buffers(
                STORED_SCHEMA.field("key").type, m, [None, pa.py_buffer(hex_to_binary(keys[a:a + m]))])}
            cols["shard"] = string_array(np.where(is_real, real_shard[ri], sim_shard_np[si // per]))
            for c in ("offset", "length", "mean_length", "std_offset"):
                cols[c] = pa.array(np.where(is_real, real_np[c][ri], tcols[c][slot]), pa.int64())
            cols["shape"] = pa.ListArray.from_arrays(pa.array(np.arange(m + 1, dtype=np.int32) * len(shape)),
                                                     pa.array(np.tile(np.array(shape, np.int32), m)))
            cols["dtype"] = pa.array([dtype] * m, pa.string())
            cols["target"] = pa.array(np.where(is_real, real_np["target"][ri], rng.integers(0, 2, m)), pa.int64())
            cols["sha256"] = string_array(np.where(is_real, real_sha[ri], hex_strings(rng, m, 64)))
            cols["content_sha256"] = string_array(np.where(is_real, real_content[ri], hex_strings(rng, m, 64)))
            for c in ("meta_offset", "meta_length"):
                cols[c] = pa.array(np.where(is_real, real_np[c][ri], tcols[c][slot]), pa.int64())
            cols["crc32c"] = pa.array(np.where(is_real, real_np["crc32c"][ri],
                                               rng.integers(0, 1 << 32, m, dtype=np.int64)), pa.int64())
            w.write_table(pa.Table.from_arrays([cols[f.name] for f in SCHEMA], schema=schema))
    with open(tmp, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
            crc.update(chunk)
    size = os.path.getsize(tmp)
    os.replace(tmp, path)
    # the pointer as ManifestStore.commit writes it (sha256 and, since the store package, crc32c)
    ptr = {"generation": generation, "path": f"manifest/{generation}.parquet", "sha256": h.hexdigest(),
           "crc32c": int.from_bytes(crc.digest(), "big"), "rows": rows, "bytes": size}
    write_atomic(store.location.fs, store.manifests.pointer_path, json.dumps(ptr, sort_keys=True).encode())
    res_sim["write_s"] = time.perf_counter() - t0
    res_sim["manifest_bytes"] = size
    res_sim["writer_peak_rss"] = proc_status()["VmHWM"]
    res["sim"] = res_sim
    return sim_shards


# ----------------------------------------------------------------------------- report


def gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB"


def report(res: dict[str, Any]) -> None:
    r, s = res["real"], res.get("sim", {})
    print(f"\nscale simulation: {res['machine']}; {res['load_start']} at start, {res['load_end']} at end")
    print(f"real tier: {r['samples']} latents {'x'.join(map(str, r['latent_shape']))} float32 (+std), "
          f"{r['staging_objects']} staging objects {r['staging_bytes'] / 1e6:.1f} MB -> {r['shards']} shards "
          f"{r['shard_bytes'] / 1e6:.1f} MB")
    print(f"  staging writes          {r['samples'] / r['staging_write_s']:10.0f} objects/s")
    print(f"  compact                 {r['compact_samples_per_s']:10.0f} samples/s  {r['compact_MBps_staging']:8.1f} MB/s "
          f"of staging bytes ({r['compact_s']:.2f} s)")
    print(f"  plain copy (same bytes) {r['copy_MBps']:10.1f} MB/s  (runs {r['copy_s'][0]:.2f} s, {r['copy_s'][1]:.2f} s)")
    ok = "met" if r["compact_vs_copy"] >= 0.5 else "NOT met"
    print(f"  compact / copy          {100 * r['compact_vs_copy']:9.1f} %   goal >= 50 %: {ok}  "
          f"(by CPU time: {100 * r['compact_vs_copy_cpu']:.1f} %, compact {r['compact_cpu_s']:.2f} CPU s)")
    if len(r.get("compact_runs", [])) > 1:
        print("  compact / copy, each run: " + ", ".join(f"{100 * x['ratio']:.1f} % wall ({100 * x['ratio_cpu']:.1f} % CPU, "
                                                      f"load {x['load']:.1f})" for x in r["compact_runs"])
              + "  (the median run above)")
    print(f"  verify (shards)         {r['verify_samples_per_s']:10.0f} samples/s  {r['verify_MBps_shards']:8.1f} MB/s")
    print(f"  gc dry-run              {r['gc_s']:10.2f} s  ({r['find_files']} files, listing {r['find_s']:.2f} s)")
    if not s:
        return
    print(f"\nsimulated manifest: {s['rows']:,} rows ({s['real_rows']:,} real, {s['sim_rows']:,} simulated in "
          f"{s['sim_shards']:,} shards of {s['rows_per_shard']}), {s['manifest_bytes'] / 1e6:.1f} MB Parquet, "
          f"written in {s['write_s']:.1f} s (writer peak RSS {gb(s['writer_peak_rss'])})")
    o = res.get("open")
    if o:
        ok = "met" if o["open_s_median"] <= 3 and o["rss_delta_median"] <= 1.5e9 else "NOT met"
        print(f"  open (fresh process, median of {len(o['runs'])})  {o['open_s_median']:.2f} s "
              f"({o['open_cpu_s_median']:.2f} CPU s), "
              f"RSS +{gb(o['rss_delta_median'])} (peak +{gb(o['peak_delta_median'])})   goal <= 3 s, <= 1.5 GB: {ok}")
        print(f"  first read plan {o['read_plan_s_median']:.2f} s (RSS then +{gb(o['plan_delta_median'])}); "
              f"find {o['find_us_median']:.1f} us; warm read of a real row {o['warm_read_us_median']:.1f} us")
    for name in ("verify", "gc", "compact"):
        c = res.get(f"scale_{name}")
        if c:
            secs = c.get(f"{name}_s")
            extra = {"verify": lambda: f"{c['samples_checked']} real rows read, {c['bad_missing_shards']} simulated "
                                       f"shards reported missing",
                     "gc": lambda: f"{c['files']} files, listing {c['find_s']:.2f} s",
                     "compact": lambda: f"{c['packed']} new samples into {c['rows_after']:,} rows"}[name]()
            print(f"  {name:7s} at full size  {secs:8.2f} s ({c['cpu_s']:.2f} CPU s), peak RSS {gb(c['peak'])} ({extra})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="manifest rows to simulate (10,000,000: the goal)")
    ap.add_argument("--dir", default="/tmp/latentds-scale", help="local scratch directory (removed first)")
    ap.add_argument("--real-samples", type=int, default=16384)
    ap.add_argument("--latent-shape", type=int, nargs=3, default=[4, 16, 13])
    ap.add_argument("--open-runs", type=int, default=3)
    ap.add_argument("--compact-runs", type=int, default=1,
                    help="compact the real tier this many times (copy, compact, copy each; the median run is reported)")
    ap.add_argument("--skip-scale-verify", action="store_true", help="skip verify on the full-size manifest")
    ap.add_argument("--skip-scale-compact", action="store_true", help="skip the incremental compact at full size")
    ap.add_argument("--skip-scale-gc", action="store_true", help="skip gc at full size")
    ap.add_argument("--compact-new", type=int, default=4096, help="new staging objects for the incremental compact")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--text-keys", action="store_true", help="write the manifest with text keys (before issue 15)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.dir, args)))
        return 0
    if args.rows < args.real_samples:
        ap.error("--rows must be at least --real-samples")
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    import platform

    res: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
                           "load_start": load_state(), "args": vars(args)}
    t0 = time.perf_counter()
    store = real_tier(args, res)
    print(f"real tier done in {time.perf_counter() - t0:.1f} s; {load_state()}", flush=True)
    print(json.dumps(res["real"]), flush=True)
    sim_shards = simulate_manifest(store, args.rows, res, seed=2)
    print(f"simulated manifest written in {res['sim']['write_s']:.1f} s; {load_state()}", flush=True)
    runs = [child("open", args.dir) for _ in range(args.open_runs)]

    def med(f: Any) -> float:
        return statistics.median(f(x) for x in runs)

    res["open"] = {"runs": runs, "open_s_median": med(lambda x: x["open_s"]),
                   "rss_delta_median": med(lambda x: x["rss_after_open"] - x["rss_base"]),
                   "peak_delta_median": med(lambda x: x["peak_after_open"] - x["rss_base"]),
                   "open_cpu_s_median": med(lambda x: x["open_cpu_s"]),
                   "read_plan_s_median": med(lambda x: x["read_plan_s"]),
                   "plan_delta_median": med(lambda x: x["rss_after_plan"] - x["rss_base"]),
                   "find_us_median": med(lambda x: x["find_us"]),
                   "warm_read_us_median": med(lambda x: x["warm_read_us"])}
    print(f"open measured; {load_state()}", flush=True)
    if not args.skip_scale_verify:
        res["scale_verify"] = child("verify", args.dir)
        print(f"verify measured; {load_state()}", flush=True)
    if not args.skip_scale_gc:
        # the simulated shards as empty files, so that gc lists every object a real cache would have
        sdir = store.location.join("shards")
        for name in sim_shards:
            for fname in (name, name[: -len(".tar")] + ".index.json"):
                open(os.path.join(sdir, fname), "wb").close()
        res["scale_gc"] = child("gc", args.dir)
        print(f"gc measured; {load_state()}", flush=True)
    if not args.skip_scale_compact:
        from latentds.store.entries import sample_key

        new = [sample_key({"sim-new": i}) for i in range(args.compact_new)]
        write_staging(store, new, tuple(args.latent_shape), seed=3)
        res["scale_compact"] = child("compact", args.dir)
        print(f"incremental compact measured; {load_state()}", flush=True)
    res["load_end"] = load_state()
    res["wall_s"] = time.perf_counter() - t0
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {args.json}")
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
