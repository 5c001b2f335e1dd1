"""Warm ``LatentDataset[i]`` reads per second against reading and preprocessing the DICOM.

Both sides run in one process, on the same SYNTHETIC DICOM files, interleaved over several
rounds; the script prints per-round rates and the median ratio (the machine is shared and
noisy, so medians and ratios are what to quote).

    python benchmarks/warm_reads.py --images 64 --height 2048 --width 1664 --codec bicubic-f8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from latentds import LatentDataset
from latentds.testing import synthetic


def rate(fn, indices: list[int]) -> float:
    t0 = time.perf_counter()
    for i in indices:
        fn(i)
    return len(indices) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="number of DICOM files (default: %(default)s)")
    ap.add_argument("--height", type=int, default=2048)
    ap.add_argument("--width", type=int, default=1664)
    ap.add_argument("--codec", default="bicubic-f8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=None, help="keep data here (default: a temp dir)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        data = work / "data"
        if not (data / "README.txt").exists():
            synthetic.make_dataset(data, n_per_class=args.images // 2, shape=(args.height, args.width), seed=0,
                                   progress=True)
        ds = LatentDataset(data, codec=args.codec, cache=work / "cache")
        ds.fill(batch_size=4, progress=True)
        n = len(ds)
        rng = np.random.default_rng(0)
        warm, cold = [], []
        for r in range(args.rounds):
            order = rng.permutation(n).tolist()
            warm.append(rate(lambda i: ds[i], order))
            cold.append(rate(lambda i: ds.load_source(i), order))
            print(f"round {r}: warm LatentDataset[i] {warm[-1]:9.1f}/s   read+preprocess DICOM {cold[-1]:7.2f}/s")
        w, c = statistics.median(warm), statistics.median(cold)
        lat_shape = tuple(ds[0][0].shape)
        print(f"\nmachine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}")
        print(f"images: {n} SYNTHETIC DICOMs {args.height}x{args.width}; codec {args.codec}; latent {lat_shape}")
        print(f"median warm reads/s {w:.1f}; median DICOM read+preprocess/s {c:.2f}; ratio {w / c:.1f}x")


if __name__ == "__main__":
    main()
