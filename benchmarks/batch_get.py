"""One shuffled batch's S3 reads, by client, in a forked worker (issue 15 item 1, shuffled rows).

``LatentDataset.__getitems__`` on an object store fetches a batch's coalesced byte ranges in one
concurrent ``fs.cat_ranges`` (s3fs); with shard copies (``local_cache``) a worker's first batch
fetches every shard it touches whole. The streaming reader now reads through presigned URLs
(``latentds.store.signed.SignedRanges``). This asks whether the batched path is bound by the
client (then the signed path would help) or by the server: it times the reads of one batch of
``--batch`` random samples (``--samples`` latents of ~54 KB in 14 shards of ~8.4 MB, as
``s3_vs_litdata.py`` builds them) in a freshly forked child (after the parent made its s3fs
client, as a DataLoader worker), per client:

* ``s3fs``: ``fs.cat_ranges`` of all the batch's ranges at once (what ``batch_read`` does);
* ``signed xN``: the same ranges through ``SignedRanges.get_range`` on N threads (one kept-alive
  connection per thread).

Read sets: ``gap 2 MiB`` (the default coalescing), ``gap 0`` (one
range per sample, what real S3 would favour), ``whole shards`` (the shard-copy fetch).

    nice -n 10 python benchmarks/batch_get.py --rounds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

__all__ = ["main"]

SHARDS, MEMBER, HEAD = 14, 53_760, 512


def _layout(samples: int) -> list[tuple[int, int]]:
    """(shard, offset) of every sample: members packed back to back with a tar header and a
    ~1 KiB neighbour between them, as the cache writes them."""
    per = -(-samples // SHARDS)
    step = HEAD + MEMBER + 1536
    return [(i // per, HEAD + (i % per) * step) for i in range(samples)]


def _read_sets(layout: list[tuple[int, int]], batch: int, seed: int) -> dict[str, list[tuple[int, int, int]]]:
    from latentds.batch_read import _groups

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(layout), batch, replace=False)
    sh = np.array([layout[i][0] for i in pick], np.int64)
    st = np.array([layout[i][1] - HEAD for i in pick], np.int64)
    en = st + HEAD + MEMBER
    out = {}
    for name, gap in (("gap 2 MiB", 2 << 20), ("gap 0", 0)):
        gs, ge, mem = _groups(sh, st, en, gap)
        out[name] = [(int(sh[m[0]]), int(a), int(b)) for a, b, m in zip(gs, ge, mem)]
    size = int(max(o for _, o in layout) + MEMBER + 1536)
    out["whole shards"] = [(s, 0, size) for s in sorted(set(sh.tolist()))]
    return out


def _child(method: str, opts: dict[str, Any], urls: dict[str, str], ranges: list[tuple[int, int, int]],
           q: Any) -> None:
    try:
        paths = [f"bench/shard-{s:06d}.tar" for s, _, _ in ranges]
        starts, ends = [a for _, a, _ in ranges], [b for _, _, b in ranges]
        if method == "s3fs":
            import s3fs

            fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)

            def run() -> list[bytes]:
                return fs.cat_ranges(paths, starts, ends, on_error="raise")
        else:
            from latentds.store.signed import SignedRanges

            n = int(method.split("x")[1])
            sr = SignedRanges(urls, time.time() + 3600)
            pool = ThreadPoolExecutor(n)

            def run() -> list[bytes]:
                got = list(pool.map(lambda k: sr.get_range(paths[k], starts[k], ends[k]), range(len(paths))))
                assert all(g is not None for g in got)
                return got  # type: ignore[return-value]
        run()  # warm-up: client set-up, connections
        t = time.perf_counter()
        c = time.process_time()
        got = run()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        assert [len(g) for g in got] == [b - a for a, b in zip(starts, ends)]
        q.put({"wall": wall, "cpu": cpu})
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put({"error": repr(e)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--methods", nargs="*", default=["s3fs", "signed x4", "signed x8"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import s3fs

    from latentds.testing.loopback_s3 import storage_options
    from s3_vs_litdata import _server_process

    mgr, servers = _server_process()  # moto and the proxy in their own process, as --server-process
    try:
        moto_ep, proxy_ep = servers.endpoints()
        opts = storage_options(proxy_ep)
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        fs.call_s3("create_bucket", Bucket="bench")
        layout = _layout(args.samples)
        size = max(o for _, o in layout) + MEMBER + 1536
        urls = {}
        for s in range(SHARDS):
            p = f"bench/shard-{s:06d}.tar"
            fs.pipe_file(p, os.urandom(size))
            urls[p] = fs.sign(p, expiration=3600)
        ctx = mp.get_context("fork")
        res: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            sets = _read_sets(layout, args.batch, r)
            order = args.methods if r % 2 == 0 else list(reversed(args.methods))
            for name, ranges in sets.items():
                for m in order:
                    q = ctx.Queue()
                    p = ctx.Process(target=_child, args=(m, opts, urls, ranges, q))
                    p.start()
                    out = q.get(timeout=300)
                    p.join()
                    if "error" in out:
                        raise RuntimeError(f"{m}: {out['error']}")
                    out["gets"], out["mb"] = len(ranges), sum(b - a for _, a, b in ranges) / 1e6
                    res.setdefault((name, m), []).append(out)
                    print(f"round {r}: {name:12s} {m:10s} {len(ranges):3d} GETs {out['mb']:6.1f} MB  "
                          f"{out['wall'] * 1e3:7.1f} ms wall  {out['cpu'] * 1e3:6.1f} ms client CPU", flush=True)
        print(f"\none batch of {args.batch} random samples of {args.samples} (~{MEMBER // 1000} KB members, {SHARDS} "
              f"shards of {size / 1e6:.1f} MB), moto + counting proxy in their own process on 127.0.0.1, a forked "
              f"child per measurement, {args.rounds} rounds (medians); load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} cores")
        for (name, m), es in res.items():
            wall = statistics.median(e["wall"] for e in es)
            cpu = statistics.median(e["cpu"] for e in es)
            print(f"  {name:12s} {m:10s} {statistics.median(e['gets'] for e in es):4.0f} GETs "
                  f"{statistics.median(e['mb'] for e in es):6.1f} MB  {wall * 1e3:7.1f} ms wall "
                  f"({args.batch / wall:6.0f} samples/s for one worker)  {cpu * 1e3:6.1f} ms client CPU")
    finally:
        servers.stop()
        mgr.shutdown()


if __name__ == "__main__":
    main()
