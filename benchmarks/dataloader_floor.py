"""DataLoader floor: ``LatentIterableDataset`` on a local cache vs an IterableDataset that yields
ready tensors of the same shape (no read, no check, no decode: collate, worker IPC and the
main process's batch loop only), 2 workers, batch 64, medians of 5 alternating epochs. Run with
``PYTHONPATH=<older tree>`` from outside the repo to time an older library.

    python benchmarks/dataloader_floor.py
"""
import sys, time, tempfile, statistics, os
from pathlib import Path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batched_reads import build_cache
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from latentds import LatentIterableDataset
tmp = tempfile.mkdtemp()
ds0, _ = build_cache(Path(tmp)/"t", tmp+"/c", 2000, (4,64,52))
class Fake(IterableDataset):
    def __iter__(self):
        info = get_worker_info(); n = 2000 // info.num_workers
        for i in range(n):
            yield torch.empty(4,64,52), 1
def ep(ds):
    dl = DataLoader(ds, batch_size=64, num_workers=2)
    t0 = time.perf_counter(); n = 0; first = None
    for x, t in dl:
        n += len(x)
        if first is None: first = time.perf_counter(); n0 = n
    t1 = time.perf_counter()
    return n/(t1-t0), (n-n0)/(t1-first)
ours = LatentIterableDataset.from_dataset(ds0, shuffle=True)
print("load", os.getloadavg()[0], "latentds", __import__("latentds").__file__)
res = {"ours": [], "fake": []}
for r in range(5):
    for name, d in (("ours", ours), ("fake", Fake())):
        res[name].append(ep(d))
for k, v in res.items():
    print(k, "whole", round(statistics.median(a for a, b in v)), "steady", round(statistics.median(b for a, b in v)))
print("load", os.getloadavg()[0])
