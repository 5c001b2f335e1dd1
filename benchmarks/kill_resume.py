"""Kill-and-resume check for bulk encoding, repeated over random kill points.

A Dask scheduler + worker processes (LocalCluster, processes=True) stay up; each trial runs the
CLI client (`python -m latentds encode ... --scheduler ADDR`) as a subprocess, SIGKILLs it at a
random moment (1-3 times), re-runs it to completion, and compares the cache with an uninterrupted
run: shard bytes, shard indexes, partition records, manifest rows, failure records, and no temp
files. Synthetic data only.

    python benchmarks/kill_resume.py --trials 20 --n-per-class 12 --shard-samples 2
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CODEC = "bicubic-f4"


def snapshot(cache: Path) -> dict[str, Any]:
    from latentds.store.entries import LatentCache
    from latentds.store import ShardedStore

    (ns,) = [p for p in cache.iterdir() if p.is_dir()]
    out: dict[str, Any] = {"ns": ns.name}
    for sub in ("shards", "bulk"):
        d = ns / sub
        out[sub] = {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}
    out["failures"] = {p.name: (lambda r: (r["error_type"], r["reason"]))(json.loads(p.read_bytes()))
                       for p in sorted((ns / "failures").iterdir())} if (ns / "failures").exists() else {}
    m = ShardedStore(LatentCache(str(cache), ns.name)).refresh()
    out["manifest"] = m.table.to_pylist() if m is not None else None
    out["temps"] = sorted(str(p) for p in ns.rglob(".tmp-*"))
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    bad = [k for k in ("ns", "shards", "bulk", "failures", "manifest") if a[k] != b[k]]
    if a["temps"] or b["temps"]:
        bad.append(f"temps {a['temps'] + b['temps']}")
    return bad


def client_cmd(src: Path, cache: Path, addr: str, shard_samples: int) -> list[str]:
    return [sys.executable, "-m", "latentds", "encode", str(src), "--codec", CODEC, "--cache", str(cache),
            "--scheduler", addr, "--shard-samples", str(shard_samples), "--quiet"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--n-per-class", type=int, default=12)
    ap.add_argument("--shard-samples", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--task-delay", type=float, default=0.4,
                    help="seconds each encoder batch sleeps (widens the window)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    from dask.distributed import LocalCluster

    from latentds.testing.synthetic import make_dataset

    # each task sleeps in the encoder: the test codec (tests/dying_codec.py), preloaded into the
    # workers as bicubic-f4 (same bytes), reads its delay from the environment they inherit
    os.environ["DYING_CODEC_DELAY_S"] = str(args.task_delay)
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    os.environ["PYTHONPATH"] = os.pathsep.join([tests, *filter(None, [os.environ.get("PYTHONPATH")])])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lds-kill-"))
    src = work / "src"
    make_dataset(src, n_per_class=args.n_per_class, shape=(64, 48))
    bad = src / "negative" / "zz-garbage.dcm"  # one broken file: the failure report must match too
    bad.write_bytes(b"not a dicom" * 20)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           preload=["dying_codec"])
    addr = cluster.scheduler_address
    rng = random.Random(args.seed)
    try:
        t0 = time.perf_counter()
        ref = work / "clean"
        p = subprocess.run(client_cmd(src, ref, addr, args.shard_samples), capture_output=True)
        clean_s = time.perf_counter() - t0
        assert p.returncode == 1, p.stderr.decode()[-2000:]  # exit 1: one file failed
        clean = snapshot(ref)
        nparts = len(clean["bulk"])
        print(f"clean run: {2 * args.n_per_class + 1} files, {nparts} partitions, {clean_s:.1f} s (client incl. "
              f"startup); exit code {p.returncode}; failures {len(clean['failures'])}")
        failures = crashes = 0
        for t in range(args.trials):
            cache = work / f"trial-{t:02d}"
            kills = []
            for _ in range(rng.choice([1, 1, 2, 3])):
                # kill point: once a random number k of partitions is committed, plus a random jitter
                k, jitter = rng.randrange(0, nparts), rng.uniform(0.0, 0.4)
                errf = open(work / "client-stderr.txt", "w+b")  # read back if the client dies on its own
                q = subprocess.Popen(client_cmd(src, cache, addr, args.shard_samples), stdout=subprocess.DEVNULL,
                                     stderr=errf, start_new_session=True)
                while q.poll() is None and len(list(cache.glob("*/bulk/*.json"))) < k:
                    time.sleep(0.01)
                time.sleep(jitter)
                done_before = len(list(cache.glob("*/bulk/*.json")))
                finished = q.poll() is not None
                if not finished:
                    os.kill(q.pid, signal.SIGKILL)
                q.wait()
                if finished and q.returncode not in (0, 1):  # died by itself (e.g. SIGABRT): not our kill
                    crashes += 1
                    errf.seek(0)
                    print(f"  client exited on its own with {q.returncode} before the kill:\n"
                          f"{errf.read().decode(errors='replace')[-3000:]}")
                errf.close()
                kills.append(f"k>={k}+{jitter:.2f}s -> {done_before}/{nparts} committed"
                             f"{f' (had finished, exit {q.returncode})' if finished else ''}")
            r = subprocess.run(client_cmd(src, cache, addr, args.shard_samples), capture_output=True)
            d = diff(snapshot(cache), clean)
            ok = not d and r.returncode == 1  # any other exit code of the resumed client (e.g. -6) fails
            failures += not ok
            if r.returncode != 1:
                print(r.stderr.decode()[-3000:])
            print(f"trial {t:02d}: killed at {', '.join(kills)} -> resume exit {r.returncode}: "
                  f"{'IDENTICAL' if ok else 'DIFFERENT ' + str(d)}")
            shutil.rmtree(cache, ignore_errors=True)
        print(f"{args.trials - failures}/{args.trials} trials bit-identical to the uninterrupted run; "
              f"{crashes} clients died on their own before their kill")
        return 1 if failures or crashes else 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
