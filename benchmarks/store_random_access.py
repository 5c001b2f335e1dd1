"""Warm random-access reads/s: LatentDataset (committed shards) vs MONAI PersistentDataset
caching the same latents vs an np.memmap of the same bytes (the ceiling). One process, same
latents, interleaved rounds; prints per-round rates and median ratios. SYNTHETIC DICOMs. A bare
``os.pread`` of the same byte ranges (no checksum, no tensor) shows the syscall + copy floor.

    python benchmarks/store_random_access.py --images 256 --height 512 --width 416 --codec bicubic-f4
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from latentds import LatentDataset
from latentds.testing import synthetic


def rate(fn, order: list[int]) -> float:
    t0 = time.perf_counter()
    for i in order:
        fn(i)
    return len(order) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=416)
    ap.add_argument("--codec", default="bicubic-f4")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from monai.data import PersistentDataset
    from monai.transforms import Transform

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        synthetic.make_dataset(work / "data", n_per_class=args.images // 2, shape=(args.height, args.width), seed=0)
        kw = dict(codec=args.codec, cache=work / "cache", image_size=(args.height, args.width))
        LatentDataset(work / "data", **kw).fill(batch_size=16, progress=False)
        ds = LatentDataset(work / "data", **kw)
        ds.compact()
        ds = LatentDataset(work / "data", **kw)
        n = len(ds)
        lat = [ds[i][0].numpy().copy() for i in range(n)]

        class Latent(Transform):  # deterministic: PersistentDataset caches its output
            def __call__(self, d: dict) -> dict:
                return {"z": torch.from_numpy(lat[d["i"]]), "y": int(ds.targets[d["i"]])}

        monai = PersistentDataset([{"i": i} for i in range(n)], transform=Latent(), cache_dir=work / "monai")
        for i in range(n):
            monai[i]  # fill its cache (one torch.save file per item)

        blob = work / "memmap.bin"
        offs = np.cumsum([0] + [a.nbytes for a in lat])
        with open(blob, "wb") as fh:
            for a in lat:
                fh.write(a.tobytes())
        mm = np.memmap(blob, dtype=np.uint8, mode="r")
        shape = lat[0].shape

        fd = os.open(blob, os.O_RDONLY)
        offl = offs.tolist()

        def pread_only(i: int) -> bytes:  # the syscall + copy alone: no checksum, no tensor
            return os.pread(fd, offl[i + 1] - offl[i], offl[i])

        def memmap_read(i: int):
            z = torch.from_numpy(np.array(mm[offs[i]:offs[i + 1]]).view(np.float32).reshape(shape))
            return z, ds.targets[i]

        rng = np.random.default_rng(0)
        r_ours, r_monai, r_mm, r_pr = [], [], [], []
        for r in range(args.rounds):
            order = rng.permutation(n).tolist()
            r_ours.append(rate(lambda i: ds[i], order))
            r_monai.append(rate(lambda i: monai[i], order))
            r_mm.append(rate(memmap_read, order))
            r_pr.append(rate(pread_only, order))
            print(f"round {r}: LatentDataset {r_ours[-1]:9.0f}/s   MONAI PersistentDataset {r_monai[-1]:8.0f}/s   "
                  f"np.memmap {r_mm[-1]:9.0f}/s   bare os.pread {r_pr[-1]:9.0f}/s")
        o, m, c = statistics.median(r_ours), statistics.median(r_monai), statistics.median(r_mm)
        p = statistics.median(r_pr)
        print(f"\nmachine: {platform.machine()} python {platform.python_version()} torch {torch.__version__}")
        print(f"{n} SYNTHETIC DICOMs {args.height}x{args.width}; codec {args.codec}; latent {shape} float32 "
              f"({lat[0].nbytes} bytes); local disk, committed shards; ranged reads {ds.store.reads}")
        print(f"median reads/s: LatentDataset {o:.0f}, MONAI PersistentDataset {m:.0f}, np.memmap {c:.0f}, "
              f"bare os.pread {p:.0f}")
        print(f"median us/read: LatentDataset {1e6 / o:.1f}, np.memmap {1e6 / c:.1f}, bare os.pread {1e6 / p:.1f}")
        print(f"LatentDataset / MONAI = {o / m:.2f}x (goal >= 3x);  LatentDataset / memmap = {100 * o / c:.0f}% "
              f"(goal >= 50%)")
        # The machine may be shared: a burst of someone else's work can hit one reader's pass in
        # a round. The median of per-round ratios is a second, burst-robust view of the same runs.
        rm = statistics.median(a / b for a, b in zip(r_ours, r_monai))
        rc = statistics.median(a / b for a, b in zip(r_ours, r_mm))
        print(f"median of per-round ratios: / MONAI {rm:.2f}x, / memmap {100 * rc:.0f}%")


if __name__ == "__main__":
    main()
