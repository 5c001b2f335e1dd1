"""Loopback S3 (moto's server on 127.0.0.1, behind a counting proxy): requests per warm sample
and warm random-access throughput of LatentDataset vs raw ``s3fs.cat_file`` of the same byte
ranges; plus opening a 1,000,000-row manifest (time and memory). SYNTHETIC DICOMs.

    python benchmarks/store_s3.py --images 128 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa


def rate(fn, order: list[int]) -> float:
    t0 = time.perf_counter()
    for i in order:
        fn(i)
    return len(order) / (time.perf_counter() - t0)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def manifest_1m(tmp: Path) -> None:
    """Write a 1,000,000-row manifest here, then open it in a FRESH process: measuring in the
    writer's process is meaningless (the allocator reuses the memory the writer freed)."""
    import subprocess
    import sys

    from latentds.store.manifest import SCHEMA, ManifestStore
    from latentds.store.fsio import Location

    n = 1_000_000
    rng = np.random.default_rng(0)
    keys = [f"{x:040x}" for x in rng.integers(0, 2**62, n)]
    cols = {"key": keys, "shard": [f"shard-{i // 4096:032x}.tar" for i in range(n)],
            "offset": np.arange(n) * 14336, "length": np.full(n, 13440), "mean_length": np.full(n, 13440),
            "std_offset": np.full(n, -1), "shape": [[1, 64, 52]] * n, "dtype": ["float32"] * n,
            "target": rng.integers(0, 2, n), "sha256": [f"{x:064x}" for x in rng.integers(0, 2**62, n)],
            "content_sha256": [f"{x:064x}" for x in rng.integers(0, 2**62, n)],
            "meta_offset": np.arange(n) * 14336 + 14000, "meta_length": np.full(n, 300),
            "crc32c": rng.integers(0, 2**32, n)}
    ms = ManifestStore(Location(str(tmp / "m1")))
    ptr = ms.commit(pa.Table.from_pydict(cols, schema=SCHEMA), {})
    del cols, keys
    probe = f"""
import time, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
from latentds.store.manifest import ManifestStore
from latentds.store.fsio import Location
def rss(field="VmRSS:"):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1]) / 1024
ms = ManifestStore(Location({str(tmp / "m1")!r}))
ms.location.fs
before = rss()
t0 = time.perf_counter()
m = ms.load()
dt = time.perf_counter() - t0
after, peak = rss(), rss("VmHWM:")
probe = m.table.column("key").slice(0, 10000).to_pylist()
t1 = time.perf_counter()
for k in probe:
    m.find(k)
look = (time.perf_counter() - t1) / len(probe) * 1e6
print(dt, after - before, peak - before, look)
"""
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    dt, mb, peak, look = (float(v) for v in out)
    print(f"manifest 1,000,000 rows ({ptr['bytes'] / 1e6:.0f} MB parquet): open {dt:.2f} s (goal <= 2 s), "
          f"RSS +{mb:.0f} MB (goal <= 300 MB; fresh process, peak while opening +{peak:.0f} MB); "
          f"lookup {look:.1f} us/key")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=208)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--manifest-only", action="store_true", help="only the 1,000,000-row manifest open")
    args = ap.parse_args()
    if args.manifest_only:
        with tempfile.TemporaryDirectory() as tmp:
            manifest_1m(Path(tmp))
        return
    warnings.filterwarnings("ignore")
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    from latentds import LatentDataset
    from latentds.testing import synthetic
    from latentds.testing.loopback_s3 import FaultProxy, MotoS3, storage_options

    moto = MotoS3().start()
    proxy = FaultProxy(moto.port).start()
    opts = storage_options(proxy.endpoint)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import s3fs

        s3fs.S3FileSystem(**storage_options(moto.endpoint)).call_s3("create_bucket", Bucket="bench")
        synthetic.make_dataset(work / "data", n_per_class=args.images // 2, shape=(args.height, args.width), seed=0)
        kw = dict(codec="bicubic-f4", cache="s3://bench/latents", cache_storage_options=opts,
                  image_size=(args.height, args.width))
        LatentDataset(work / "data", **kw).fill(batch_size=16, progress=False)
        LatentDataset(work / "data", **kw).compact()
        ds = LatentDataset(work / "data", **kw)
        n = len(ds)
        ds[0]  # load the manifest (pointer + generation): once per process, not per sample
        m = ds.store.manifest()
        ranges = [m.locate(m.find(ds.key(i))) for i in range(n)]
        fs = s3fs.S3FileSystem(**opts)
        paths = [ds.store.shard_path(r[0]) for r in ranges]

        def raw(i: int) -> bytes:
            _, off, length, *_ = ranges[i]
            return fs.cat_file(paths[i], start=off, end=off + length)

        rng = np.random.default_rng(0)
        ours, theirs = [], []
        for r in range(args.rounds):
            order = rng.permutation(n).tolist()
            proxy.reset_counts()
            ours.append(rate(lambda i: ds[i], order))
            per_sample = sum(proxy.counts.values()) / n
            theirs.append(rate(raw, order))
            print(f"round {r}: LatentDataset {ours[-1]:7.0f}/s ({per_sample:.2f} requests/sample)   "
                  f"raw s3fs cat_file {theirs[-1]:7.0f}/s")
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"\n{n} SYNTHETIC DICOMs {args.height}x{args.width}; codec bicubic-f4; latent "
              f"{tuple(ds[0][0].shape)} float32; moto S3 server + counting proxy on 127.0.0.1")
        print(f"requests per warm sample: {per_sample:.2f} (goal 1)")
        print(f"median reads/s: LatentDataset {o:.0f}, raw s3fs cat_file {t:.0f}; ratio {100 * o / t:.0f}% (goal >= 50%)")
        manifest_1m(work)
    proxy.stop()
    moto.stop()


if __name__ == "__main__":
    main()
