"""Shuffled random access on S3 vs LitData streaming (issue 15 item 1), side by side in one run.

Setup as in the issue: N latents of C×h×w float32 (default 2,000 of 4×64×52), 8 MiB shards on
our side and 8 MB chunks on LitData's, the S3 server (moto) on 127.0.0.1 behind the counting
proxy of ``latentds.testing.loopback_s3``, ``DataLoader`` with 2 workers and batch 64, fresh caches.
Methods, interleaved per round (alternating order), medians over rounds:

* ``LatentDataset`` shuffled, per sample (a wrapper without ``__getitems__``: the old path);
* ``LatentDataset`` shuffled, batched (``__getitems__``: a batch's byte ranges coalesced and
  fetched at once through presigned URLs on a few threads, ``latentds.batch_signed``), default
  gap (2 MiB) and one GET per shard touched; ``s3fs reads``: the same through one concurrent
  ``cat_ranges`` (``batch_sign_urls = False``, the path before);
* ``LatentDataset`` with ``latentds.sampler.ShardAwareSampler`` (shuffled windows of 4 shards);
* ``LatentIterableDataset`` streaming (whole shards, shuffled shard order), with its default
  shard prefetch and without it (``prefetch=0``: one shard at a time); ``batched``: the dataset
  yields whole batches (``batch_size=``, ``DataLoader(batch_size=None)``: latentds/stream_batch.py);
* LitData ``StreamingDataset(shuffle=True)`` through ``StreamingDataLoader``, a fresh
  ``cache_dir`` each epoch, with its defaults (async chunk prefetch over obstore, told to
  allow the http:// loopback endpoint: ``_litdata_allow_http``).

Per epoch: samples/s (from the first ``iter()`` to the last batch, worker start included on
both sides), requests and response bytes counted at the proxy, and the seconds the proxy
waited on moto (summed over concurrent requests), whose share of the time is the test
server's: moto reads a whole object for every ranged GET.

    python benchmarks/s3_vs_litdata.py --samples 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batched_reads import build_cache  # noqa: E402

__all__ = ["main"]


class PerSample:
    """``LatentDataset`` without ``__getitems__``: DataLoader falls back to ``dataset[i]``."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


def _lit_item(npy: str, targets: list[int], i: int) -> dict[str, Any]:
    return {"latent": np.load(npy, mmap_mode="r")[i].copy(), "target": int(targets[i])}


def _litdata_allow_http() -> None:
    """LitData fetches chunks through obstore, whose client refuses http:// endpoints unless
    told (``allow_http``); LitData passes its own client options without it. Called in
    ``main`` and, for spawned workers, in LitData's ``worker_init_fn`` (not at import: spawned
    workers re-import this module, and ours would then import litdata and boto3 too)."""
    try:
        import litdata.streaming.downloader as lit_dl
    except ImportError:
        return
    lit_dl._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # type: ignore[index]


def _lit_worker_init(worker_id: int) -> None:
    _litdata_allow_http()


def upload(fs: Any, local: Path, remote: str, skip: tuple[str, ...] = ()) -> int:
    n = 0
    for p in sorted(local.rglob("*")):
        if p.is_file() and not any(part in skip for part in p.relative_to(local).parts):
            fs.pipe_file(f"{remote}/{p.relative_to(local).as_posix()}", p.read_bytes())
            n += p.stat().st_size
    return n


class _Servers:
    """moto and the counting proxy, in whichever process made this (see ``--server-process``)."""

    def __init__(self) -> None:
        from latentds.testing.loopback_s3 import FaultProxy, MotoS3

        self.moto = MotoS3().start()
        self.proxy = FaultProxy(self.moto.port).start()

    def endpoints(self) -> tuple[str, str]:
        return self.moto.endpoint, self.proxy.endpoint

    def reset_counts(self) -> None:
        self.proxy.reset_counts()

    def stats(self) -> dict[str, Any]:
        p = self.proxy
        return {"counts": dict(p.counts), "bytes_out": dict(p.bytes_out), "upstream_s": p.upstream_s}

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()


def _server_process() -> Any:
    """``_Servers`` in a forked child process behind a multiprocessing manager: real S3 never
    runs inside the training process, and in-process moto + proxy (Python threads serving 8 MiB
    bodies) take the main process's GIL from the DataLoader's batch loop while shards download."""
    import multiprocessing
    from multiprocessing.managers import BaseManager

    class Manager(BaseManager):
        pass

    Manager.register("Servers", _Servers)
    mgr = Manager(ctx=multiprocessing.get_context("fork"))
    mgr.start()
    return mgr, mgr.Servers()


def epoch(loader: Any, proxy: Any) -> dict[str, float]:
    proxy.reset_counts()
    t0 = time.perf_counter()
    n, first, n0, mb_first = 0, None, 0, 0.0
    for batch in loader:
        x = batch["latent"] if isinstance(batch, dict) else batch[0]
        n += len(x)
        if first is None:
            first, n0 = time.perf_counter() - t0, n
            # bytes the server had sent by the first batch: what is left is downloaded in the
            # steady phase, beside the decode (the test server's CPU is this machine's)
            mb_first = sum(proxy.stats()["bytes_out"].values()) / 1e6
    dt = time.perf_counter() - t0
    steady = (n - n0) / (dt - first) if first is not None and dt > first else 0.0
    st = proxy.stats()
    return {"rate": n / dt, "steady": steady, "wall": dt, "first": first or dt, "n": n,
            "gets": st["counts"].get("GET", 0), "requests": sum(st["counts"].values()),
            "mb": sum(st["bytes_out"].values()) / 1e6, "server": st["upstream_s"],
            "mb_steady": sum(st["bytes_out"].values()) / 1e6 - mb_first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shape", type=int, nargs="+", default=[4, 64, 52])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard-mib", type=int, default=8)
    ap.add_argument("--window", type=int, default=4, help="shards per window of the shard-aware sampler")
    ap.add_argument("--only", nargs="*", help="run only methods whose name contains one of these (+ LitData, streaming)")
    ap.add_argument("--exclude", nargs="*", default=[], help="leave out methods whose name contains one of these")
    ap.add_argument("--stream-only", action="store_true", help="LitData and LatentIterableDataset (prefetch default) only")
    ap.add_argument("--skip-per-sample", action="store_true", help="leave out the slow per-sample path")
    ap.add_argument("--start-method", choices=("default", "fork", "spawn", "forkserver"), default="default",
                    help="how DataLoader workers start on both sides (default: this platform's default)")
    ap.add_argument("--server-process", action="store_true",
                    help="run moto and the proxy in a child process (default: threads of this process, as before)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import s3fs
    import torch
    from torch.utils.data import DataLoader

    import litdata
    from latentds import LatentDataset, LatentIterableDataset
    from latentds.testing.loopback_s3 import storage_options

    torch.set_num_threads(1)
    _litdata_allow_http()
    import multiprocessing

    # litdata.optimize switches the whole process to "spawn" (set_start_method(force=True)); a
    # user streaming in a training job has not run it there, so both sides' workers start the
    # platform's way unless --start-method says otherwise (spawn: each worker imports torch)
    start_method = multiprocessing.get_start_method() if args.start_method == "default" else args.start_method
    mgr, proxy = _server_process() if args.server_process else (None, _Servers())
    moto_endpoint, proxy_endpoint = proxy.endpoints()
    opts = storage_options(proxy_endpoint)
    lit_opts = {"endpoint_url": proxy_endpoint, "aws_access_key_id": opts["key"],
                "aws_secret_access_key": opts["secret"], "region_name": "us-east-1"}
    shard_bytes = args.shard_mib << 20
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            fs = s3fs.S3FileSystem(**storage_options(moto_endpoint), skip_instance_cache=True)
            fs.call_s3("create_bucket", Bucket="bench")
            t0 = time.perf_counter()
            local, lat = build_cache(work / "data", str(work / "cache"), args.samples, tuple(args.shape),
                                     shard_bytes=shard_bytes)
            ns = local.namespace
            up = upload(fs, work / "cache" / ns, f"bench/latents/{ns}", skip=("staging",))
            npy = work / "latents.npy"
            np.save(npy, lat)
            targets = [int(t) for t in local.targets]
            litdata.optimize(fn=functools.partial(_lit_item, str(npy), targets), inputs=list(range(len(lat))),
                             output_dir=str(work / "lit"), chunk_bytes=f"{args.shard_mib}MB", num_workers=1,
                             verbose=False)
            multiprocessing.set_start_method(start_method, force=True)
            lit_up = upload(fs, work / "lit", "bench/lit")
            print(f"built {len(lat)} latents {tuple(args.shape)} float32: ours {up / 1e6:.1f} MB in "
                  f"{len(local.store.manifest().shards)} shards, LitData {lit_up / 1e6:.1f} MB in "
                  f"{len(list((work / 'lit').glob('*.bin')))} chunks ({time.perf_counter() - t0:.0f} s)", flush=True)

            def ours(local_cache: Any = None, **kw: Any) -> Any:
                ds = LatentDataset(work / "data", codec="bicubic-f4", cache="s3://bench/latents",
                                   cache_storage_options=opts, local_cache=local_cache)
                for k, v in kw.items():
                    setattr(ds, k, v)
                return ds

            dl = dict(batch_size=args.batch, num_workers=args.workers)

            def lit_loader(r: int) -> Any:
                sd = litdata.StreamingDataset("s3://bench/lit", cache_dir=str(work / f"litcache-{r}-{time.time_ns()}"),
                                              storage_options=lit_opts, shuffle=True, seed=r)
                return litdata.StreamingDataLoader(sd, worker_init_fn=_lit_worker_init, **dl)

            def lit_local(r: int) -> Any:  # LitData's chunks read from local disk: no S3 server beside it
                sd = litdata.StreamingDataset(str(work / "lit"), cache_dir=str(work / f"litcache-{r}-{time.time_ns()}"),
                                              shuffle=True, seed=r)
                return litdata.StreamingDataLoader(sd, **dl)

            def stream_loader(r: int, prefetch: int | None = None, late_plan: bool = False,
                              ship: str = "plan+signed", inline: bool = False, start: int | None = None,
                              batched: bool = False) -> Any:
                kw = {} if prefetch is None else {"prefetch": prefetch}
                if batched:  # the dataset batches (each worker its own stream), the DataLoader passes them on
                    kw["batch_size"] = args.batch
                it = LatentIterableDataset.from_dataset(ours(), shuffle=True, seed=r, **kw)
                if start is not None:  # GETs started at once (then ramped up to prefetch)
                    it.prefetch_start = start
                if late_plan:  # as before 2026-11-28: each worker reads the pointer and the manifest itself
                    it._pin = it._pinned = None
                # what a spawned worker receives (forked workers inherit the plan either way):
                # the pointer only (before 2026-11-28 03:00), the plan, the plan + signed shard URLs
                it.ship_plan, it.sign_urls = ship != "pointer", ship == "plan+signed"
                if not it.sign_urls:  # signed when planned: every reader (forked workers too) read them
                    it._signed = None
                it.ship_beside = not inline  # spawned workers: samples/plan beside the pickle, or inside it
                return DataLoader(it, **(dict(dl, batch_size=None) if batched else dl))

            methods: dict[str, Any] = {
                "LitData StreamingDataset (shuffle)": lit_loader,
                "LitData StreamingDataset (shuffle, local disk: no S3)": lit_local,
                "LatentIterableDataset (shuffle)": stream_loader,
                "LatentIterableDataset (shuffle, no prefetch)": lambda r: stream_loader(r, 0),
                "LatentIterableDataset (shuffle, workers plan)": lambda r: stream_loader(r, late_plan=True),
                "LatentIterableDataset (shuffle, spawn gets pointer)": lambda r: stream_loader(r, ship="pointer"),
                "LatentIterableDataset (shuffle, spawn gets plan, no URLs)": lambda r: stream_loader(r, ship="plan"),
                "LatentIterableDataset (shuffle, s3fs reads, no URLs)": lambda r: stream_loader(r, ship="plan"),
                "LatentIterableDataset (shuffle, spawn gets all in its pickle)": lambda r: stream_loader(r, inline=True),
                "LatentIterableDataset (shuffle, prefetch 4)": lambda r: stream_loader(r, 4, start=4),
                "LatentIterableDataset (shuffle, prefetch 4 from 2)": lambda r: stream_loader(r, 4, start=2),
                "LatentIterableDataset (shuffle, prefetch 2)": lambda r: stream_loader(r, 2),
                # no S3 at all: the same cache on local disk, the readers' decode/collate ceiling
                "LatentIterableDataset (shuffle, local disk: no S3)": lambda r: DataLoader(
                    LatentIterableDataset.from_dataset(local, shuffle=True, seed=r), **dl),
                "LatentIterableDataset (shuffle, batched)": lambda r: stream_loader(r, batched=True),
                "LatentIterableDataset (shuffle, batched, local disk: no S3)": lambda r: DataLoader(
                    LatentIterableDataset.from_dataset(local, shuffle=True, seed=r, batch_size=args.batch),
                    **dict(dl, batch_size=None)),
                "LatentDataset shuffled, batched (gap 2 MiB)": lambda r: DataLoader(ours(), shuffle=True, **dl),
                # the batch's ranges through s3fs' cat_ranges, as before the signed URLs (side by side)
                "LatentDataset shuffled, batched (gap 2 MiB, s3fs reads)": lambda r: DataLoader(
                    ours(batch_sign_urls=False), shuffle=True, **dl),
                "LatentDataset shuffled, batched (1 GET/shard)": lambda r: DataLoader(
                    ours(batch_gap_bytes=shard_bytes), shuffle=True, **dl),
            }
            from latentds.sampler import ShardAwareSampler

            def windowed(r: int) -> Any:
                ds = ours(batch_gap_bytes=shard_bytes)
                return DataLoader(ds, sampler=ShardAwareSampler(ds, window=args.window, seed=r), **dl)

            methods[f"LatentDataset shard-aware sampler (window {args.window})"] = windowed

            def fresh_dir(r: int) -> str:
                return str(work / f"copies-{r}-{time.time_ns()}")  # a fresh local cache per epoch, as LitData's

            from latentds.shard_cache import ShardCache

            # ds.shard_cache (what LatentDataset(local_cache=D) uses under D/shards) set directly:
            # the store's per-sample ReadThroughCache holds a lock that spawned workers cannot pickle
            methods["LatentDataset shuffled, batched + shard copies"] = lambda r: DataLoader(
                ours(shard_cache=ShardCache(fresh_dir(r))), shuffle=True, **dl)
            methods["LatentDataset shuffled, batched + shard copies (s3fs reads)"] = lambda r: DataLoader(
                ours(shard_cache=ShardCache(fresh_dir(r)), batch_sign_urls=False), shuffle=True, **dl)

            def windowed_copies(r: int) -> Any:
                ds = ours(shard_cache=ShardCache(fresh_dir(r)))
                return DataLoader(ds, sampler=ShardAwareSampler(ds, window=args.window, seed=r), **dl)

            methods[f"LatentDataset sampler (window {args.window}) + shard copies"] = windowed_copies

            def served(r: int) -> Any:  # manifest-only: no source tree
                from latentds.serve import CachedLatentDataset

                ds = CachedLatentDataset("s3://bench/latents", ns, storage_options=opts)
                ds.shard_cache = ShardCache(fresh_dir(r))
                return DataLoader(ds, shuffle=True, **dl)

            methods["CachedLatentDataset (manifest only) shuffled + shard copies"] = served
            if not args.skip_per_sample:
                methods["LatentDataset shuffled, per sample"] = lambda r: DataLoader(PerSample(ours()), shuffle=True,
                                                                                     **dl)
            if args.only:
                methods = {k: v for k, v in methods.items()
                           if k.startswith("LitData") or k.startswith("LatentIterable") or any(o in k for o in args.only)}
            if args.stream_only:
                methods = {k: v for k, v in methods.items() if k in (
                    "LitData StreamingDataset (shuffle)", "LatentIterableDataset (shuffle)",
                    "LitData StreamingDataset (shuffle, local disk: no S3)",
                    "LatentIterableDataset (shuffle, workers plan)", "LatentIterableDataset (shuffle, prefetch 4)",
                    "LatentIterableDataset (shuffle, prefetch 2)",
                    "LatentIterableDataset (shuffle, prefetch 4 from 2)",
                    "LatentIterableDataset (shuffle, spawn gets pointer)",
                    "LatentIterableDataset (shuffle, spawn gets plan, no URLs)",
                    "LatentIterableDataset (shuffle, s3fs reads, no URLs)",
                    "LatentIterableDataset (shuffle, local disk: no S3)",
                    "LatentIterableDataset (shuffle, spawn gets all in its pickle)",
                    "LatentIterableDataset (shuffle, batched)",
                    "LatentIterableDataset (shuffle, batched, local disk: no S3)")}
            methods = {k: v for k, v in methods.items() if not any(x in k for x in args.exclude)}
            res: dict[str, list[dict[str, float]]] = {k: [] for k in methods}
            for r in range(args.rounds):
                order = list(methods) if r % 2 == 0 else list(reversed(methods))
                for k in order:
                    t_setup = time.perf_counter()
                    loader = methods[k](r)  # dataset + loader construction (LitData reads its index here)
                    t_setup = time.perf_counter() - t_setup
                    res[k].append(epoch(loader, proxy))
                    res[k][-1]["setup"] = t_setup
                    res[k][-1]["with_setup"] = res[k][-1]["n"] / (res[k][-1]["wall"] + t_setup)
                    e = res[k][-1]
                    print(f"round {r}: {k:46s} {e['rate']:6.0f} samples/s (steady {e['steady']:6.0f})  first batch {e['first']:.2f} s  "
                          f"{e['gets']:5d} GETs  {e['mb']:7.1f} MB  server {e['server']:.2f} s of {e['wall']:.2f} s  "
                          f"setup {e['setup']:.2f} s",
                          flush=True)
            print(f"\n{len(lat)} latents {tuple(args.shape)} float32, {args.shard_mib} MiB shards/chunks, moto S3 + "
                  f"counting proxy on 127.0.0.1 ({'own process' if args.server_process else 'threads of this process'}), DataLoader {args.workers} workers, batch {args.batch}, "
                  f"{args.rounds} rounds (medians), workers by {start_method}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            lit = statistics.median(e["rate"] for e in res["LitData StreamingDataset (shuffle)"])
            lit_steady = statistics.median(e["steady"] for e in res["LitData StreamingDataset (shuffle)"])
            lit_ws = statistics.median(e["with_setup"] for e in res["LitData StreamingDataset (shuffle)"])
            for k, es in res.items():
                med = {f: statistics.median(e[f] for e in es) for f in es[0]}
                share = 100 * med["server"] / med["wall"]
                print(f"  {k:46s} {med['rate']:6.0f} samples/s ({med['rate'] / lit:4.2f}x LitData; steady "
                      f"{med['steady']:6.0f}, {med['steady'] / lit_steady:4.2f}x)  first batch "
                      f"{med['first']:.2f} s  {med['gets']:5.0f} GETs ({med['requests']:.0f} requests) "
                      f"{med['mb']:7.1f} MB per epoch ({med['mb_steady']:5.1f} after the first batch)  moto busy {share:3.0f} % of the wall time; setup "
                      f"{med['setup']:.2f} s, with setup {med['with_setup']:6.0f} samples/s "
                      f"({med['with_setup'] / lit_ws:4.2f}x)")
            print("  setup = dataset + loader construction (LitData's StreamingDataset reads its index there; "
                  "LatentIterableDataset pins its generation and plan there), not in 'samples/s'")
            glob = [k for k in methods if "shuffled" in k and "per sample" not in k]  # true global shuffles
            if glob:  # (none with --stream-only)
                best = max(glob, key=lambda k: statistics.median(e["steady"] for e in res[k]))
                b_rate = statistics.median(e["rate"] for e in res[best])
                b_steady = statistics.median(e["steady"] for e in res[best])
                print(f"goal shuffled random access (global shuffle) >= 0.5x LitData streaming: {best}: whole epoch "
                      f"{b_rate / lit:.2f}x, steady {b_steady / lit_steady:.2f}x "
                      f"({'met' if min(b_rate / lit, b_steady / lit_steady) >= 0.5 else 'NOT met'})")
            for k in ("LatentIterableDataset (shuffle)", "LatentIterableDataset (shuffle, batched)"):
                if k not in res:
                    continue
                st = statistics.median(e["rate"] for e in res[k])
                st_steady = statistics.median(e["steady"] for e in res[k])
                print(f"goal streaming >= 1.1x LitData, {k}: {st / lit:.2f}x whole epoch "
                      f"({'met' if st / lit >= 1.1 else 'NOT met'}), {st_steady / lit_steady:.2f}x steady "
                      f"({'met' if st_steady / lit_steady >= 1.1 else 'NOT met'})")
            ll = "LitData StreamingDataset (shuffle, local disk: no S3)"
            for k in ("LatentIterableDataset (shuffle, local disk: no S3)",
                      "LatentIterableDataset (shuffle, batched, local disk: no S3)"):
                if k in res and ll in res:  # both readers without the test server: the readers alone
                    r_w, r_s = (statistics.median(e[f] for e in res[k]) / statistics.median(e[f] for e in res[ll])
                                for f in ("rate", "steady"))
                    print(f"no S3 on either side, {k} vs {ll}: {r_w:.2f}x whole epoch, {r_s:.2f}x steady")
    finally:
        proxy.stop()
        if mgr is not None:
            mgr.shutdown()


if __name__ == "__main__":
    main()
