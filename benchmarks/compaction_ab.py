"""Compaction timed in a fresh process with the code of a given tree, for old/new comparisons
taken side by side (issue 15, item 3): ``git archive <commit> latentds benchmarks | tar -x -C
/tmp/old``, then alternate ``--code /tmp/old`` and ``--code .`` runs over one staging cache.

Each run: a plain copy of the staging bytes (``scale_sim.plain_copy``), a compaction from
scratch (shards and manifest removed first), repeated ``--runs`` times; prints one JSON line
with the best and median wall and CPU times, the copy's, the load, and a digest of the shard
files (equal digests: byte-identical shards).

    python benchmarks/compaction_ab.py --code . --dir /tmp/stage [--samples 8192] [--runs 3] [--no-read-ahead]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", required=True, help="tree whose latentds/ and benchmarks/ are used")
    ap.add_argument("--dir", required=True, help="staging cache (written with --samples objects if absent)")
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-read-ahead", action="store_true", help="read staging on the calling thread (new code)")
    args = ap.parse_args(argv)
    root = os.path.abspath(args.code)
    sys.path[:0] = [root, os.path.join(root, "benchmarks")]
    import scale_sim as ss

    if args.no_read_ahead:
        import latentds.store.entries as entries

        entries.READ_AHEAD = False
    from latentds.store.entries import sample_key

    ns = os.path.join(args.dir, ss.NAMESPACE)
    if not os.path.isdir(os.path.join(ns, "staging")):
        st = ss.store_at(args.dir)
        st.cache.write_info({"simulation": "benchmarks/compaction_ab.py"})
        ss.write_staging(st, [sample_key({"sim": i}) for i in range(args.samples)], (4, 16, 13), seed=1)
    wall, cpu, cwall, ccpu = [], [], [], []
    for _ in range(args.runs):
        for sub in ("shards", "manifest"):
            shutil.rmtree(os.path.join(ns, sub), ignore_errors=True)
        st = ss.store_at(args.dir)
        c = ss.plain_copy(st, os.path.join(args.dir, "copy"), 4096)
        cwall.append(c[0])
        ccpu.append(c[1])
        t, u = time.perf_counter(), time.process_time()
        rep = st.compact()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - u)
    h = hashlib.sha256()
    for dp, _, names in sorted(os.walk(os.path.join(ns, "shards"))):
        for n in sorted(names):
            h.update(n.encode())
            with open(os.path.join(dp, n), "rb") as fh:
                h.update(fh.read())
    print(json.dumps({"code": root, "packed": rep.packed, "min_wall": min(wall), "med_wall": statistics.median(wall),
                      "min_cpu": min(cpu), "med_cpu": statistics.median(cpu), "copy_min_wall": min(cwall),
                      "copy_min_cpu": min(ccpu), "ratio_min": min(cwall) / min(wall),
                      "ratio_cpu_min": min(ccpu) / min(cpu), "shards_sha256": h.hexdigest()[:16],
                      "load": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
