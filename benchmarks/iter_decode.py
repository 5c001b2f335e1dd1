"""Per-sample decode cost of ``LatentIterableDataset`` on a local cache (no S3, no DataLoader).

H2 measured (RESULTS.md, issue 15 item 1, fifth pass) that LitData's steady streaming rate
equals ours reading the same cache from local disk: the ceiling is the per-sample work of a
worker (member-name and CRC32C checks, ``.npy`` parse, tensor creation, target), not the GET.
This iterates the dataset in-process over one built cache and reports samples/s (median of
``--rounds`` epochs), optionally with a cProfile of one epoch. ``--old DIR`` also times the
library found in DIR (e.g. ``git archive`` of an earlier commit), interleaved round by round,
over the same cache.

    python benchmarks/iter_decode.py --samples 2000 --rounds 7 [--profile] [--old /tmp/old]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))

__all__ = ["main"]

_EPOCHS = r"""
import json, sys, time
import numpy as np
from latentds import LatentDataset, LatentIterableDataset
root, cache, rounds, prof = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
import latentds
assert latentds.__file__.startswith(sys.argv[5]), (latentds.__file__, sys.argv[5])
ds = LatentIterableDataset.from_dataset(LatentDataset(root, codec="bicubic-f4", cache=cache), shuffle=True)
out, chk = [], 0.0
for e in range(rounds):
    ds.set_epoch(e)
    t0 = time.perf_counter(); n = 0
    for z, t in ds:
        n += 1
    out.append(n / (time.perf_counter() - t0))
ds.set_epoch(0)
for z, t in ds:  # a fingerprint of epoch 0's samples (must match between versions)
    chk += float(z[0, 0, :4].sum()) * (t + 1)
if prof:
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable()
    for z, t in ds:
        pass
    pr.disable()
    pstats.Stats(pr, stream=sys.stderr).sort_stats("tottime").print_stats(14)
print(json.dumps({"rates": out, "check": chk}))
"""


def _run(src: str, root: str, cache: str, rounds: int, prof: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    # cwd=src too: ``python -c`` puts the working directory first on sys.path
    p = subprocess.run([sys.executable, "-c", _EPOCHS, root, cache, str(rounds), "1" if prof else "0",
                        os.path.realpath(src)],
                       env=env, cwd=src, capture_output=True, text=True, check=True)
    if prof:
        print(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7, help="epochs per process and pair")
    ap.add_argument("--pairs", type=int, default=3, help="old/new process pairs, alternating")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--old", help="a source tree of an earlier commit to compare with")
    a = ap.parse_args()
    sys.path.insert(0, HERE)
    from batched_reads import build_cache

    new = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "tree", Path(tmp) / "cache"
        build_cache(root, str(cache), a.samples, (4, 64, 52))
        print(f"load {os.getloadavg()[0]:.2f}; {a.samples} samples 4x64x52 float32, 8 MiB shards")
        res: dict[str, list[float]] = {"new": [], "old": []}
        checks = {}
        for p in range(a.pairs):
            order = [("new", new), ("old", a.old)] if p % 2 == 0 else [("old", a.old), ("new", new)]
            for name, src in order:
                if src is None:
                    continue
                r = _run(src, str(root), str(cache), a.rounds, a.profile and p == 0)
                res[name] += r["rates"]
                checks[name] = r["check"]
        for name, rates in res.items():
            if rates:
                print(f"{name}: median {statistics.median(rates):,.0f} samples/s "
                      f"(min {min(rates):,.0f}, max {max(rates):,.0f}, n={len(rates)}); check {checks[name]!r}")
        print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
