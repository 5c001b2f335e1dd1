"""When does each spawned DataLoader worker start? (issue 15 item 1: the 64 KiB spawn pipe)

multiprocessing writes a spawned worker's pickle into a pipe the child drains only after it
imported torch; a pickle over the pipe (64 KiB on Linux) holds the parent until then, so the
next worker starts one torch import late. This streams N samples of a local cache (no S3: only
the start matters) through ``LatentIterableDataset(samples=...)`` (what ``from_dataset`` makes)
with 2 spawned workers, with what grows with the dataset beside the pickle (default) or inside
it (``ship_beside = False``, as before), alternating, and prints per epoch the pickle size, each
worker's ``worker_init_fn`` time after ``iter()``, the first batch and the epoch.

    nice -n 10 python benchmarks/spawn_start.py --samples 2000 --rounds 4
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import pickle
import statistics
import tempfile
import time
from multiprocessing import context
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _mark(folder: str, worker_id: int) -> None:
    Path(folder, f"w{worker_id}").write_text(repr(time.time()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    import torch
    from torch.utils.data import DataLoader

    from latentds import LatentIterableDataset
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"{tmp}/cache"
        s = ShardedStore(LatentCache(url, "ns"))
        rng = np.random.default_rng(0)
        for i in range(args.samples):
            k = f"{i:040x}"
            s.cache.put(k, rng.standard_normal((4, 8, 8)).astype(np.float32), None, {"key": k, "target": i % 10})
        s.compact(shard_samples=max(1, args.samples // 14))
        samples = {f"{i:040x}": i % 10 for i in range(args.samples)}
        res: dict[str, list[dict[str, float]]] = {"beside": [], "inside": []}
        for r in range(args.rounds):
            for mode in (("beside", "inside") if r % 2 == 0 else ("inside", "beside")):
                it = LatentIterableDataset(url, "ns", samples=samples, shuffle=True, seed=r)
                it.ship_beside = mode == "beside"
                context.set_spawning_popen(object())  # the size of what multiprocessing will write
                try:
                    size = len(pickle.dumps(it))
                finally:
                    context.set_spawning_popen(None)
                marks = Path(tmp, f"marks-{r}-{mode}")
                marks.mkdir()
                loader = DataLoader(it, batch_size=64, num_workers=2, worker_init_fn=functools.partial(_mark, str(marks)),
                                    multiprocessing_context=multiprocessing.get_context("spawn"))
                t0 = time.time()
                first = None
                n = 0
                for x, _ in loader:
                    n += len(x)
                    if first is None:
                        first = time.time() - t0
                wall = time.time() - t0
                w = sorted(float((marks / f"w{i}").read_text()) - t0 for i in range(2))
                e = {"pickle": size, "w0": w[0], "w1": w[1], "first": first or wall, "wall": wall, "n": n}
                res[mode].append(e)
                print(f"round {r}: {mode:6s} pickle {size / 1024:6.1f} KiB  workers started {w[0]:.2f} s, {w[1]:.2f} s  "
                      f"first batch {e['first']:.2f} s  epoch {wall:.2f} s ({n} samples)", flush=True)
        print(f"\n{args.samples} samples, 2 spawned workers, {args.rounds} rounds (medians); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for mode, es in res.items():
            med = {f: statistics.median(e[f] for e in es) for f in es[0]}
            print(f"  {mode:6s} pickle {med['pickle'] / 1024:6.1f} KiB  second worker started {med['w1'] - med['w0']:.2f} s "
                  f"after the first  first batch {med['first']:.2f} s  epoch {med['wall']:.2f} s")


if __name__ == "__main__":
    main()
