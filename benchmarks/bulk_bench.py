"""Bulk-encoding benchmarks, side by side in one run (SYNTHETIC data; CPU):

1. pipeline efficiency: `latentds.encode` images/s on a 1-worker LocalCluster against the bare
   encoder forward (`codec.encode_dist`) on the same batch size, image size, device and torch
   threads (goal >= 85 %);
2. scaling: the same job on 1 vs 2 worker processes (1 torch thread each; CPU-bound codec;
   goal >= 1.7x on 2 cores; the machine is shared, so read it with the load printed);
3. epoch time of a DataLoader over a warm LatentDataset (f=8) against the same epoch reading and
   preprocessing the DICOMs at full size (goal >= 30x).

    python benchmarks/bulk_bench.py [--n 48] [--size 256 208] [--epoch-n 64]
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


def bare_forward(images: np.ndarray, batch: int, reps: int = 2) -> float:
    from latentds.bulk import get_codec

    torch.set_num_threads(1)
    codec = get_codec(KL[0], "cpu", KL[1])
    x = torch.from_numpy(images)[:, None]
    with torch.inference_mode():
        codec.encode_dist(x[:batch])  # warm-up
        best = 1e9
        for _ in range(reps):
            t = time.perf_counter()
            for s in range(0, len(x), batch):
                codec.encode_dist(x[s:s + batch])
            best = min(best, time.perf_counter() - t)
    return len(x) / best


def bulk_rate(src: Path, work: Path, workers: int, batch: int, size: tuple[int, int], part: int, tag: str
              ) -> tuple[float, float]:
    from dask.distributed import Client, LocalCluster

    from latentds.bulk import encode, get_codec

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    try:
        client.run(torch.set_num_threads, 1)
        client.run(get_codec, KL[0], "cpu", KL[1])  # codec loaded once per worker, before timing
        best, busy = 1e9, 0.0
        for rep in range(2):
            cache = work / f"cache-{tag}-{rep}"
            t = time.perf_counter()
            r = encode(src, KL[0], cache, client=client, codec_kwargs=KL[1], batch_size=batch, shard_samples=part,
                       image_size=size, fit="pad", torch_threads=1, prefetch=2, progress=False)
            dt = time.perf_counter() - t
            assert r.ok and r.encoded == r.total, r
            best = min(best, dt)
            shutil.rmtree(cache, ignore_errors=True)
        return r.total / best, best
    finally:
        client.close()
        cluster.close()


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
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from latentds.bulk import _load, Spec
    from latentds.sources import list_sources
    from latentds.synthetic import make_dataset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lds-bulk-bench-"))
    size = tuple(args.size)
    src = work / "src"
    make_dataset(src, n_per_class=args.n // 2, shape=size)
    print(f"SYNTHETIC data; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; torch "
          f"{torch.__version__}; codec {KL[0]} (untrained, reduced width) on CPU, 1 torch thread per process")

    spec = Spec(KL[0], KL[1], "cpu", str(work / "x"), {}, {}, "x", True, None, size, "pad", args.batch, 1, 1)
    images = np.stack([_load(spec, it)[0] for it in list_sources(src).items])
    bare = bare_forward(images, args.batch)
    one, t1 = bulk_rate(src, work, 1, args.batch, size, 16, "w1")
    two, t2 = bulk_rate(src, work, 2, args.batch, size, 8, "w2")
    print()
    print(f"{'measure':58s} {'value':>12s}  goal")
    print(f"{'bare encoder forward, ' + str(args.n) + ' imgs ' + str(size) + ', batch ' + str(args.batch):58s} "
          f"{bare:9.2f} img/s")
    print(f"{'bulk encode, 1 worker (read+preprocess+encode+shard+commit)':58s} {one:9.2f} img/s")
    print(f"{'pipeline efficiency (bulk 1 worker / bare forward)':58s} {100 * one / bare:10.1f} %   >= 85 %")
    print(f"{'bulk encode, 2 workers':58s} {two:9.2f} img/s")
    print(f"{'scaling 1 -> 2 workers':58s} {two / one:10.2f} x   >= 1.7x")
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
