"""Bulk-encoding benchmarks, side by side in one run (SYNTHETIC data; CPU):

1. pipeline efficiency: `latentds.encode` images/s on a 1-worker LocalCluster against the bare
   encoder forward (`codec.encode_dist` on the already-preprocessed tensors, in a plain spawned
   process without Dask, and again as a task in the bulk worker) on
   the same images, batch size, device and torch threads (goal >= 85 %). The bare forward and
   both bulk jobs are measured interleaved, ``--reps`` times, and medians are reported, so that
   load from other jobs on a shared machine hits all of them alike;
2. scaling: the same job on 1 vs 2 worker processes (1 torch thread each; CPU-bound codec;
   goal >= 1.7x on 2 cores; the machine is shared, so read it with the load printed);
3. epoch time of a DataLoader over a warm LatentDataset (f=8) against the same epoch reading and
   preprocessing the DICOMs at full size (goal >= 30x).

    python benchmarks/bulk_bench.py [--n 48] [--size 256 208] [--reps 3] [--epoch-n 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# CPU-bound KL codec (untrained weights: speed only), sent to workers as kwargs, not tensors.
KL = ("kl-f8c4", {"weights": "random", "arch": {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1,
                                                 "norm_num_groups": 16}})


def bare_forward(codec, x: torch.Tensor, batch: int) -> float:
    """One timed pass of the bare forward over already-preprocessed images: img/s."""
    torch.set_num_threads(1)
    with torch.inference_mode():
        t = time.perf_counter()
        for s in range(0, len(x), batch):
            codec.encode_dist(x[s:s + batch])
        return len(x) / (time.perf_counter() - t)


def bare_forward_in_worker(images: np.ndarray, batch: int) -> float:
    """The same bare forward, run as a task in a bulk worker (same process, threads, allocator)."""
    from latentds.bulk import get_codec

    return bare_forward(get_codec(KL[0], "cpu", KL[1]), torch.from_numpy(images)[:, None], batch)


def bare_forward_plain_process(images: np.ndarray, batch: int) -> float:
    """The bare forward in a plain Python process (spawned once, no Dask in it): what a script that
    only runs the encoder gets. Not in this process: the LocalClusters' schedulers run here, and
    their event-loop threads take the GIL between the encoder's ops."""
    from latentds.bulk import get_codec

    return bare_forward(get_codec(KL[0], "cpu", KL[1]), torch.from_numpy(images)[:, None], batch)


def start_cluster(workers: int, env: dict[str, str] | None = None):
    from dask.distributed import Client, LocalCluster

    from latentds.bulk import get_codec

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           env=env or {})
    client = Client(cluster)
    client.run(torch.set_num_threads, 1)
    client.run(get_codec, KL[0], "cpu", KL[1])  # codec loaded once per worker, before timing
    return cluster, client


def bulk_run(client, src: Path, cache: Path, batch: int, size: tuple[int, int], part: int):
    """One timed bulk job into a fresh cache: (img/s, report)."""
    from latentds.bulk import encode

    t = time.perf_counter()
    r = encode(src, KL[0], cache, client=client, codec_kwargs=KL[1], batch_size=batch, shard_samples=part,
               image_size=size, fit="pad", torch_threads=1, prefetch=2, progress=False)
    dt = time.perf_counter() - t
    assert r.ok and r.encoded == r.total, r
    shutil.rmtree(cache, ignore_errors=True)
    return r.total / dt, r


def epoch_times(root: Path, work: Path, size: tuple[int, int], epochs: int = 3) -> tuple[float, float]:
    from torch.utils.data import DataLoader, Dataset

    from latentds import LatentDataset
    from latentds.dataset import fit_image
    from latentds.preprocess import Preprocess

    torch.set_num_threads(1)
    ds = LatentDataset(root, codec="bicubic-f8", cache=work / "epoch-cache", image_size=size)
    ds.fill(progress=False)
    ds.compact()
    ds.refresh()

    class FullSize(Dataset):
        def __init__(self) -> None:
            self.samples, self.pre = ds.samples, Preprocess()

        def __len__(self) -> int:
            return len(self.samples)

        def __getitem__(self, i: int):
            path, t = self.samples[i]
            img = fit_image(self.pre(path, name=path), size, "pad")
            return torch.from_numpy(img)[None], t

    def epoch(d) -> float:
        t = time.perf_counter()
        n = 0
        for x, _ in DataLoader(d, batch_size=16, shuffle=False, num_workers=0):
            n += x.shape[0]
        return time.perf_counter() - t

    warm = LatentDataset(root, codec="bicubic-f8", cache=work / "epoch-cache", image_size=size)
    epoch(warm)
    lat = statistics.median(epoch(warm) for _ in range(epochs))
    full = statistics.median(epoch(FullSize()) for _ in range(epochs))
    return lat, full


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="images for the encode benchmarks")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 208))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epoch-n", type=int, default=64, help="images for the epoch benchmark")
    ap.add_argument("--epoch-size", type=int, nargs=2, default=(1024, 832), help="full-size DICOM shape")
    ap.add_argument("--part", type=int, default=16, help="files per partition, 1 worker (half for 2 workers)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians reported)")
    ap.add_argument("--compare-malloc", action="store_true",
                    help="also time 1-worker jobs whose workers keep Dask's malloc thresholds (before the fix)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from latentds.bulk import Spec, _load
    from latentds.sources import list_sources
    from latentds.testing.synthetic import make_dataset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lds-bulk-bench-"))
    size = tuple(args.size)
    src = work / "src"
    make_dataset(src, n_per_class=args.n // 2, shape=size)
    print(f"SYNTHETIC data; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; torch "
          f"{torch.__version__}; codec {KL[0]} (untrained, reduced width) on CPU, 1 torch thread per process; "
          f"{args.reps} interleaved repetitions, medians")

    torch.set_num_threads(1)
    spec = Spec(KL[0], KL[1], "cpu", str(work / "x"), {}, {}, "x", True, None, size, "pad", args.batch, 1, 1)
    items = list_sources(src).items
    t = time.perf_counter()
    images = np.stack([_load(spec, it)[0] for it in items])  # read + preprocess, one thread
    prep = len(items) / (time.perf_counter() - t)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    plain = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    plain.submit(bare_forward_plain_process, images, args.batch).result()  # codec load + warm-up
    c1, cl1 = start_cluster(1)
    c2, cl2 = start_cluster(2)
    c0 = cl0 = None
    if args.compare_malloc:  # workers that keep the nanny's MALLOC_TRIM_THRESHOLD_ (the behaviour before)
        c0, cl0 = start_cluster(1, {"LATENTDS_KEEP_MALLOC_THRESHOLDS": "1"})
        bulk_run(cl0, src, work / "warm-0", args.batch, size, args.part)
    bare, one, two, eff, fwd_in_task, task_eff, kept, kept_fwd = [], [], [], [], [], [], [], []
    try:
        bulk_run(cl1, src, work / "warm-1", args.batch, size, args.part)  # warm-up runs, not timed
        bulk_run(cl2, src, work / "warm-2", args.batch, size, max(1, args.part // 2))
        imgs_on_worker = cl1.scatter(images)
        cl1.submit(bare_forward_in_worker, imgs_on_worker, args.batch, pure=False).result()  # warm-up
        in_worker = []
        for rep in range(args.reps):  # interleaved, so that load from other jobs hits all alike
            b = plain.submit(bare_forward_plain_process, images, args.batch).result()
            o, r1 = bulk_run(cl1, src, work / f"c1-{rep}", args.batch, size, args.part)
            w, _ = bulk_run(cl2, src, work / f"c2-{rep}", args.batch, size, max(1, args.part // 2))
            in_worker.append(o / cl1.submit(bare_forward_in_worker, imgs_on_worker, args.batch, pure=False).result())
            if cl0 is not None:
                k, r0 = bulk_run(cl0, src, work / f"c0-{rep}", args.batch, size, args.part)
                kept.append(k / b)
                kept_fwd.append(r0.total / r0.encode_seconds)
            bare.append(b)
            one.append(o)
            two.append(w)
            eff.append(o / b)
            fwd_in_task.append(r1.total / r1.encode_seconds)
            task_eff.append(r1.encode_seconds / r1.task_seconds)
            print(f"  rep {rep}: bare {b:6.2f} img/s, bulk 1 worker {o:6.2f} img/s ({100 * o / b:5.1f} %), "
                  f"2 workers {w:6.2f} img/s ({w / o:4.2f}x); load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        plain.shutdown()
        for cl, c in ((cl1, c1), (cl2, c2), (cl0, c0)):
            if cl is not None:
                cl.close()
                c.close()
    med = statistics.median
    print()
    print(f"{'measure':58s} {'value':>12s}  goal")
    print(f"{'bare encoder forward (plain process), ' + str(args.n) + ' imgs, batch ' + str(args.batch):58s} "
          f"{med(bare):9.2f} img/s")
    print(f"{'bulk encode, 1 worker (read+preprocess+encode+shard+commit)':58s} {med(one):9.2f} img/s")
    print(f"{'pipeline efficiency (bulk 1 worker / bare forward)':58s} {100 * med(eff):10.1f} %   >= 85 %"
          f"  (reps {', '.join(f'{100 * e:.1f}' for e in eff)})")
    print(f"{'  same, against the bare forward run as a task on that worker':58s} {100 * med(in_worker):10.1f} %"
          f"  (reps {', '.join(f'{100 * e:.1f}' for e in in_worker)})")
    if kept:
        print(f"{'  same, workers keep the nanny malloc thresholds (before)':58s} {100 * med(kept):10.1f} %"
              f"  (reps {', '.join(f'{100 * e:.1f}' for e in kept)})")
    print(f"{'bulk encode, 2 workers':58s} {med(two):9.2f} img/s")
    print(f"{'scaling 1 -> 2 workers':58s} {med(two) / med(one):10.2f} x   >= 1.7x"
          f"  (reps {', '.join(f'{w / o:.2f}' for w, o in zip(two, one))})")
    print("where the 1-worker time goes:")
    print(f"{'  read + preprocess alone (1 thread, client)':58s} {prep:9.1f} img/s")
    serial = 1.0 / (1.0 / med(bare) + 1.0 / prep)  # no free core: read+preprocess adds to the forward
    print(f"{'  bound if read+preprocess cannot overlap (no free core)':58s} {serial:9.2f} img/s "
          f"({100 * serial / med(bare):.1f} % of bare; bulk reaches {100 * med(one) / serial:.1f} % of it)")
    print(f"{'  encoder forward inside the bulk tasks':58s} {med(fwd_in_task):9.2f} img/s")
    if kept_fwd:
        print(f"{'  the same, workers keep the nanny malloc thresholds (before)':58s} {med(kept_fwd):9.2f} img/s")
    print(f"{'  forward share of task time (rest: load wait, shard, index)':58s} {100 * med(task_eff):10.1f} %")
    print(f"(load average now {os.getloadavg()[0]:.2f})")

    eroot = work / "epoch-src"
    es = tuple(args.epoch_size)
    make_dataset(eroot, n_per_class=args.epoch_n // 2, shape=es)
    lat, full = epoch_times(eroot, work, es)
    print(f"{'epoch, DataLoader over full-size DICOMs ' + str(es) + ', ' + str(args.epoch_n) + ' imgs':58s} "
          f"{full:9.3f} s")
    print(f"{'epoch, DataLoader over warm LatentDataset (bicubic-f8)':58s} {lat:9.3f} s")
    print(f"{'speed-up':58s} {full / lat:10.1f} x   >= 30x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
