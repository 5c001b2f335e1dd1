"""Where does a spawned DataLoader worker's time go, ours vs LitData, in the same run? (issue 15 item 1)

Same setup as ``s3_vs_litdata.py --stream-only --start-method spawn --server-process`` (its
helpers: N latents, 8 MiB shards/chunks, moto + the counting proxy in their own process, 2
workers, batch 64, a fresh LitData cache each epoch): ``LatentIterableDataset.from_dataset``
(shuffle) vs LitData ``StreamingDataset(shuffle=True)`` through ``StreamingDataLoader``, both
with spawned workers, interleaved per round. Each worker reports, in seconds after the main
process called ``iter()`` on the loader (wall clock, shared by all processes):

* ``start``  the worker process began (``/proc``: 10 ms resolution);
* ``main``   the main module re-imported (multiprocessing's spawn runs it as ``__mp_main__``
  before it reads the worker's pickle);
* ``unpk``   its pickle loaded (dataset, collate and ``worker_init_fn``: the imports they need);
* ``init``   ``worker_init_fn`` called;
* ``get0``/``got0``  its first shard/chunk GET started / finished (ours: ``SignedRanges.get_range``;
  LitData: ``Downloader.download_chunk_from_index`` and its async prefetch's ``_adownload_chunk_index``;
  wrapped in the worker for this measurement);
* ``read0``  its first batch's samples all read (the first call of the collate function);
* ``recv0``  the main process received its first batch (batches come round-robin: batch i from
  worker i mod 2); ``last`` its last batch collated; ``rate`` its samples/s from its first
  collate to its last.

``--main`` picks what the re-imported main module costs: ``light`` (this module: nothing heavy at
its top; LitData's workers get its ``allow_http`` switch in ``worker_init_fn``), ``litdata``
(torch and litdata, on both sides: what ``s3_vs_litdata.py``'s main module imported until
2026-11-28 07:10), ``bench`` (what it imports now); several are interleaved. ``--imports N``
first times, in N fresh interpreters each, what a worker of each side imports and unpickles
before its first sample, and what its exit costs (``-X importtime`` output saved with
``--importtime-dir``). Per epoch it also reports CPU seconds (far less load-dependent than the
wall on a shared machine, though not free of it): the workers' (reaped before the loop ends:
their exit included), the main process's, and the whole machine's busy time.

    nice -n 10 python benchmarks/spawn_timeline.py --samples 2000 --rounds 3 --main light litdata --imports 3
"""

from __future__ import annotations

import time

_T_TOP = time.time()  # the first line a spawned worker runs of this module (re-imported as __mp_main__)

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__mp_main__" and os.environ.get("SPAWN_TIMELINE_MAIN") == "bench":
    # a worker of the benchmark's own run re-imports what s3_vs_litdata.py's top imports now
    sys.path.insert(0, HERE)
    import s3_vs_litdata  # noqa: E402,F401
elif __name__ == "__mp_main__" and os.environ.get("SPAWN_TIMELINE_MAIN") == "litdata":
    # ... what it imported until 2026-11-28 07:10 (torch through batched_reads; litdata for its
    # allow_http switch, run at import): every spawned worker of ours imported litdata too
    import litdata.streaming.downloader  # noqa: E402,F401
    import torch  # noqa: E402,F401
_T_MAIN = time.time()

from typing import Any  # noqa: E402

__all__ = ["main"]

#: modules a worker may or may not have imported (reported per worker)
HEAVY = ("torch", "numpy", "pyarrow", "fsspec", "s3fs", "aiohttp", "botocore", "boto3", "obstore", "litdata",
         "pandas", "torchvision", "pydicom", "PIL", "dask", "diffusers", "scipy", "latentds.codecs")


def _proc_start() -> float:
    """This process's start, wall clock (``/proc``: clock ticks since boot)."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return time.time() - (up - ticks / os.sysconf("SC_CLK_TCK"))


class Probe:
    """``worker_init_fn`` and collate function of one loader: records the worker's timeline."""

    def __init__(self, folder: str, side: str) -> None:
        self.folder, self.side = folder, side
        self.rec: dict[str, Any] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:  # unpickled in the worker, after the dataset
        self.__dict__.update(state)
        self.rec = {"unpk": time.time()}

    def __call__(self, worker_id: int) -> None:
        r = self.rec
        r.update(init=time.time(), cpu_init=time.process_time(), worker=worker_id, start=_proc_start(),
                 top=_T_TOP, main=_T_MAIN, gets=[], batches=[], n=0,
                 modules=[m for m in HEAVY if m in sys.modules], n_modules=len(sys.modules))
        gets = r["gets"]

        def timed(fn: Any) -> Any:
            def wrapper(*a: Any, **kw: Any) -> Any:
                t = time.time()
                try:
                    return fn(*a, **kw)
                finally:
                    gets.append((t, time.time()))
            return wrapper

        if self.side == "lit":
            import litdata.streaming.downloader as dl

            dl._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # type: ignore[index]  (as s3_vs_litdata's top)
            dl.Downloader.download_chunk_from_index = timed(dl.Downloader.download_chunk_from_index)
            import litdata.streaming.async_prefetch as ap  # its async prefetch path (obstore)

            adownload = ap._adownload_chunk_index

            async def timed_async(*a: Any, **kw: Any) -> Any:
                t = time.time()
                try:
                    return await adownload(*a, **kw)
                finally:
                    gets.append((t, time.time()))

            ap._adownload_chunk_index = timed_async
        else:
            from latentds.store.signed import SignedRanges

            SignedRanges.get_range = timed(SignedRanges.get_range)  # type: ignore[method-assign]

    def collate(self, items: list[Any]) -> Any:
        from torch.utils.data import default_collate

        t = time.time()
        out = default_collate(items)
        r = self.rec
        if "read0" not in r:
            r["read0"] = t
            r["modules_at_read0"] = [m for m in HEAVY if m in sys.modules]
        r["batches"].append(time.time())
        r["cpu_last"] = time.process_time()  # this worker's CPU seconds (all threads) since it started
        r["n"] += len(items)
        with open(os.path.join(self.folder, f"{self.side}-w{r['worker']}.json"), "w") as f:
            json.dump(r, f)
        return out


def _row(rec: dict[str, Any], t0: float, recv0: float) -> dict[str, float]:
    """One worker's marks relative to ``t0`` (seconds)."""
    b = rec["batches"]
    span = b[-1] - b[0] if len(b) > 1 else 0.0
    gets = sorted(rec["gets"])
    out = {k: rec[k] - t0 for k in ("start", "top", "main", "unpk", "init", "read0")}
    out.update(get0=gets[0][0] - t0 if gets else float("nan"), got0=gets[0][1] - t0 if gets else float("nan"),
               recv0=recv0, last=b[-1] - t0, rate=(rec["n"] - rec["n"] / len(b)) / span if span else 0.0,
               cpu_init=rec["cpu_init"], cpu_last=rec["cpu_last"])
    return out


MAINS = ("light", "litdata", "bench")
MARKS = ("start", "main", "unpk", "init", "get0", "got0", "read0", "recv0", "last", "rate", "cpu_init", "cpu_last")


def _busy() -> float:
    """CPU seconds this machine's cores have been busy since boot (``/proc/stat``), all processes."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _children_cpu() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def _epoch(loader: Any, folder: str, side: str, workers: int) -> dict[str, Any]:
    busy0, kids0, own0 = _busy(), _children_cpu(), time.process_time()
    t0 = time.time()
    recv: list[float] = []
    n = 0
    for batch in loader:
        x = batch["latent"] if isinstance(batch, dict) else batch[0]
        n += len(x)
        recv.append(time.time() - t0)
    wall = time.time() - t0
    # the workers were joined (reaped) before the loop ended: RUSAGE_CHILDREN holds their whole CPU,
    # interpreter shutdown included; the machine's busy time minus ours is everyone else's load
    kids, own, busy = _children_cpu() - kids0, time.process_time() - own0, _busy() - busy0
    steady = (n - n / len(recv)) / (wall - recv[0]) if len(recv) > 1 and wall > recv[0] else 0.0
    per = []
    for w in range(workers):
        with open(os.path.join(folder, f"{side}-w{w}.json")) as f:
            rec = json.load(f)
        per.append(_row(rec, t0, recv[w] if w < len(recv) else float("nan")))
        per[-1]["modules"] = rec["modules"]  # type: ignore[assignment]
    # tail: last batch received -> loop ended: the DataLoader joins its workers before its
    # StopIteration, so a spawned worker's interpreter shutdown is inside the epoch on both sides
    return {"rate": n / wall, "steady": steady, "wall": wall, "first": recv[0], "n": n, "workers": per,
            "tail": wall - recv[-1], "cpu_workers": kids, "cpu_main": own, "cpu_busy": busy,
            "cpu_exit": kids - sum(w["cpu_last"] for w in per)}


def _imports(args: Any, ours_pickle: str, lit_pickle: str, work: str) -> None:
    """Fresh interpreters: what each side's worker imports and unpickles before its first sample."""
    import resource
    import statistics
    import subprocess

    code = r"""
import sys, time, pickle, os
t0 = time.perf_counter()
if sys.argv[2] == "bench":
    import runpy; runpy.run_path(sys.argv[4], run_name="__mp_main__")  # the benchmark's main, as spawn runs it
elif sys.argv[2] == "litdata":
    import torch, litdata.streaming.downloader  # that main's imports until 2026-11-28 07:10
t1 = time.perf_counter()
import torch.utils.data._utils.worker  # what the worker loop's own unpickling imports
t2 = time.perf_counter()
if sys.argv[1] == "lit":
    import litdata.streaming.downloader as dl; dl._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
with open(sys.argv[3], "rb") as f:
    ds = pickle.load(f)
t3 = time.perf_counter()
next(iter(ds))
t4 = time.perf_counter()
heavy = [m for m in %r if m in sys.modules]
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f} {t4 - t3:.3f} {len(sys.modules)} {time.process_time():.3f} "
      f"{time.time():.6f} {','.join(heavy)}", flush=True)
""" % (HEAVY,)
    bench_main = os.path.join(HERE, "s3_vs_litdata.py")
    print(f"\nimport costs: {args.imports} fresh interpreters each (medians, s); load {os.getloadavg()[0]:.1f}",
          flush=True)
    print(f"  {'side':5s} {'main module':11s} {'main':>6s} {'torch worker':>12s} {'unpickle':>8s} "
          f"{'1st sample':>10s} {'total':>6s} {'exit':>6s} {'CPU':>6s} {'exitCPU':>6s} modules  heavy")
    for main_mode in args.main:
        for side, pk in (("ours", ours_pickle), ("lit", lit_pickle)):
            runs = []
            for i in range(args.imports):
                argv = [sys.executable]
                if args.importtime_dir and i == 0:
                    argv += ["-X", "importtime"]
                env = dict(os.environ, SPAWN_TIMELINE_MAIN="none", PYTHONPATH=HERE)
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                p = subprocess.run(argv + ["-c", code, side, main_mode, pk, bench_main], capture_output=True,
                                   text=True, env=env, cwd=work)
                t_exit, cpu1 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
                if p.returncode:
                    raise RuntimeError(f"import probe {side}/{main_mode} failed:\n{p.stderr[-3000:]}")
                if args.importtime_dir and i == 0:
                    with open(os.path.join(args.importtime_dir, f"importtime_{side}_{main_mode}.txt"), "w") as f:
                        f.write(p.stderr)
                    continue  # -X importtime's own cost: not timed
                parts = p.stdout.split()
                cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime  # the whole child, exit included
                # exit: from its last line to the parent seeing it gone (interpreter shutdown), wall and CPU
                runs.append([float(x) for x in parts[:4]] + [int(parts[4]), cpu, t_exit - float(parts[6]),
                                                              cpu - float(parts[5])])
                heavy = parts[7] if len(parts) > 7 else ""
            med = [statistics.median(r[j] for r in runs) for j in range(8)]
            print(f"  {side:5s} {main_mode:11s} {med[0]:6.2f} {med[1]:12.2f} {med[2]:8.2f} {med[3]:10.2f} "
                  f"{sum(med[:4]):6.2f} {med[6]:6.2f} {med[5]:6.2f} {med[7]:6.2f} {med[4]:7.0f}  {heavy}", flush=True)


def main() -> None:
    import argparse
    import functools
    import multiprocessing
    import pickle
    import statistics
    import tempfile
    import warnings
    from multiprocessing import context
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shape", type=int, nargs="+", default=[4, 64, 52])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--main", nargs="+", choices=MAINS, default=list(MAINS),
                    help="what the workers' main-module re-import costs (several: interleaved)")
    ap.add_argument("--imports", type=int, default=0, help="fresh interpreters per import probe (0: none)")
    ap.add_argument("--importtime-dir", help="save one -X importtime output per probe here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    sys.path.insert(0, HERE)
    import numpy as np
    import s3fs
    import torch
    from torch.utils.data import DataLoader

    import litdata
    from batched_reads import build_cache
    from latentds import LatentIterableDataset
    from latentds.testing.loopback_s3 import storage_options
    from s3_vs_litdata import _lit_item, _server_process, upload

    torch.set_num_threads(1)
    mgr, proxy = _server_process()
    moto_endpoint, proxy_endpoint = proxy.endpoints()
    opts = storage_options(proxy_endpoint)
    lit_opts = {"endpoint_url": proxy_endpoint, "aws_access_key_id": opts["key"],
                "aws_secret_access_key": opts["secret"], "region_name": "us-east-1"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            fs = s3fs.S3FileSystem(**storage_options(moto_endpoint), skip_instance_cache=True)
            fs.call_s3("create_bucket", Bucket="bench")
            local, lat = build_cache(work / "data", str(work / "cache"), args.samples, tuple(args.shape))
            upload(fs, work / "cache" / local.namespace, f"bench/latents/{local.namespace}", skip=("staging",))
            npy = work / "latents.npy"
            np.save(npy, lat)
            litdata.optimize(fn=functools.partial(_lit_item, str(npy), [int(t) for t in local.targets]),
                             inputs=list(range(len(lat))), output_dir=str(work / "lit"), chunk_bytes="8MB",
                             num_workers=1, verbose=False)
            upload(fs, work / "lit", "bench/lit")
            multiprocessing.set_start_method("spawn", force=True)
            spawn = multiprocessing.get_context("spawn")

            def ours_ds(r: int) -> Any:
                from latentds import LatentDataset

                ds = LatentDataset(work / "data", codec="bicubic-f4", cache="s3://bench/latents",
                                   cache_storage_options=opts)
                return LatentIterableDataset.from_dataset(ds, shuffle=True, seed=r)

            def lit_ds(r: int) -> Any:
                cache = str(work / f"litcache-{r}-{time.time_ns()}")  # fresh each epoch, as s3_vs_litdata
                return litdata.StreamingDataset("s3://bench/lit", cache_dir=cache,
                                                storage_options=lit_opts, shuffle=True, seed=r)

            keep = []
            if args.imports:
                if args.importtime_dir:
                    os.makedirs(args.importtime_dir, exist_ok=True)
                pk = {}
                for side, ds in (("ours", ours_ds(99)), ("lit", lit_ds(99))):
                    keep.append(ds)  # the side file lives as long as the dataset
                    context.set_spawning_popen(object())  # the pickle multiprocessing would write
                    try:
                        pk[side] = str(work / f"{side}.pkl")
                        Path(pk[side]).write_bytes(pickle.dumps(ds))
                    finally:
                        context.set_spawning_popen(None)
                _imports(args, pk["ours"], pk["lit"], str(work))

            mains = args.main
            res: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for r in range(args.rounds):
                runs = [(side, m) for m in mains for side in ("lit", "ours")]
                for side, m in (runs if r % 2 == 0 else runs[::-1]):
                    folder = work / f"marks-{r}-{side}-{m}"
                    folder.mkdir()
                    probe = Probe(str(folder), side)
                    dl = dict(batch_size=args.batch, num_workers=args.workers, multiprocessing_context=spawn,
                              worker_init_fn=probe, collate_fn=probe.collate)
                    loader = (litdata.StreamingDataLoader(lit_ds(r), **dl) if side == "lit"
                              else DataLoader(ours_ds(r), **dl))
                    os.environ["SPAWN_TIMELINE_MAIN"] = m  # what the workers' main-module re-import pays
                    e = _epoch(loader, str(folder), side, args.workers)
                    res.setdefault((side, m), []).append(e)
                    print(f"round {r}: {side:4s} main {m:5s} {e['rate']:5.0f} samples/s (steady {e['steady']:5.0f}) "
                          f"first batch {e['first']:.2f} s epoch {e['wall']:.2f} s (tail {e['tail']:.2f} s); "
                          f"CPU s: workers {e['cpu_workers']:.2f} (after their last batch {e['cpu_exit']:.2f}), "
                          f"main {e['cpu_main']:.2f}, "
                          f"machine busy {e['cpu_busy']:.2f} of {os.cpu_count() * e['wall']:.2f}", flush=True)
                    for w, row in enumerate(e["workers"]):
                        print("    w%d " % w + " ".join(f"{k} {row[k]:.2f}" if k != "rate" else f"rate {row[k]:.0f}"
                                                        for k in MARKS) + "  [" + ",".join(row["modules"]) + "]",
                              flush=True)
            print(f"\n{args.samples} latents {tuple(args.shape)} float32, 8 MiB shards/chunks, moto + proxy in their "
                  f"own process, {args.workers} spawned workers, batch {args.batch}, {args.rounds} rounds (medians); "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            print("  seconds after iter(): " + " ".join(f"{k:>6s}" for k in MARKS[:-2])
                  + "  CPU s: at init, at last batch")
            for m in mains:
                lit_rate = statistics.median(e["rate"] for e in res[("lit", m)])
                lit_steady = statistics.median(e["steady"] for e in res[("lit", m)])
                for side in ("lit", "ours"):
                    es = res[(side, m)]
                    rate = statistics.median(e["rate"] for e in es)
                    steady = statistics.median(e["steady"] for e in es)
                    print(f"  {side:4s} main {m:5s}: {rate:5.0f} samples/s ({rate / lit_rate:.2f}x LitData), steady "
                          f"{steady:5.0f} ({steady / lit_steady:.2f}x), first batch "
                          f"{statistics.median(e['first'] for e in es):.2f} s, epoch "
                          f"{statistics.median(e['wall'] for e in es):.2f} s, tail after the last batch "
                          f"{statistics.median(e['tail'] for e in es):.2f} s; CPU s: workers "
                          f"{statistics.median(e['cpu_workers'] for e in es):.2f} (after their last batch "
                          f"{statistics.median(e['cpu_exit'] for e in es):.2f}), main "
                          f"{statistics.median(e['cpu_main'] for e in es):.2f}, machine busy "
                          f"{statistics.median(e['cpu_busy'] for e in es):.2f}")
                    for w in range(args.workers):
                        med = {k: statistics.median(e["workers"][w][k] for e in es) for k in MARKS}
                        print(f"     worker {w}          " + " ".join(
                            f"{med[k]:6.2f}" if k != "rate" else f"{med[k]:6.0f}" for k in MARKS))
            del keep
    finally:
        proxy.stop()
        mgr.shutdown()


if __name__ == "__main__":
    main()
