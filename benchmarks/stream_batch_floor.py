"""Batched streaming vs per sample, no S3 (issue 15 item 1, sixth pass): ``LatentIterableDataset``
on a local cache, per sample under ``DataLoader(batch_size=B)`` and batched in the dataset
(``batch_size=B``, ``DataLoader(batch_size=None)``), beside the two floors: an IterableDataset
yielding ready tensors per sample (collate + worker IPC + the main loop only, as
``dataloader_floor.py``) and one yielding ready shared-memory batches. Rows alternate per
round, medians. ``--workers 0`` times the main process alone (the per-sample DataLoader
overhead in microseconds a sample).

    python benchmarks/stream_batch_floor.py --workers 2 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batched_reads import build_cache  # noqa: E402

__all__ = ["main"]

SHAPE = (4, 64, 52)


class Ready(IterableDataset):
    """``n`` samples (or batches of ``batch``) that cost nothing to make."""

    def __init__(self, n: int, batch: int | None) -> None:
        self.n, self.batch = n, batch

    def __iter__(self) -> Any:
        info = get_worker_info()
        n = self.n // (info.num_workers if info else 1)
        if self.batch is None:
            for _ in range(n):
                yield torch.empty(SHAPE), 1
            return
        from latentds.stream_batch import _allocate  # as the batched mode allocates (shared in a worker)

        for a in range(0, n, self.batch):
            x = _allocate((min(self.batch, n - a), *SHAPE), np.dtype(np.float32), info is not None)
            yield x, torch.ones(len(x), dtype=torch.int64)


def epoch(loader: Any) -> tuple[float, float]:
    t0 = time.perf_counter()
    n, n0, first = 0, 0, None
    for x, _ in loader:
        n += len(x)
        if first is None:
            first, n0 = time.perf_counter(), n
    t1 = time.perf_counter()
    return n / (t1 - t0), (n - n0) / (t1 - first) if first is not None and t1 > first else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from latentds import LatentIterableDataset

    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp()
    ds0, _ = build_cache(Path(tmp) / "t", tmp + "/c", args.samples, SHAPE)
    per = dict(batch_size=args.batch, num_workers=args.workers)
    whole = dict(batch_size=None, num_workers=args.workers)
    rows = {
        "ours, per sample": lambda r: DataLoader(LatentIterableDataset.from_dataset(ds0, shuffle=True, seed=r), **per),
        "ours, batched": lambda r: DataLoader(
            LatentIterableDataset.from_dataset(ds0, shuffle=True, seed=r, batch_size=args.batch), **whole),
        "ready tensors, per sample (floor)": lambda r: DataLoader(Ready(args.samples, None), **per),
        "ready batches (floor)": lambda r: DataLoader(Ready(args.samples, args.batch), **whole),
    }
    load0 = os.getloadavg()[0]
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for r in range(args.rounds):
        for k in (list(rows) if r % 2 == 0 else list(reversed(rows))):
            res[k].append(epoch(rows[k](r)))
    print(f"{args.samples} latents {SHAPE} float32, local disk, batch {args.batch}, {args.workers} workers "
          f"({'fork' if args.workers else 'main process'}), {args.rounds} rounds (medians); load {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in res.items()}
    for k, (a, b) in med.items():
        print(f"  {k:36s} whole {a:7.0f} samples/s ({1e6 / a:5.1f} us/sample)  steady {b:7.0f}")
    ps, bt = med["ours, per sample"], med["ours, batched"]
    print(f"batched / per sample: whole {bt[0] / ps[0]:.2f}x, steady {bt[1] / ps[1]:.2f}x; per sample saved "
          f"{1e6 / ps[0] - 1e6 / bt[0]:.1f} us (whole epoch)")


if __name__ == "__main__":
    main()
