"""Batched warm reads (issue 15 item 2): ``LatentDataset.__getitems__`` for a batch of 256
random samples vs an ``np.memmap`` fancy-index gather of the same rows, side by side in one
run (interleaved rounds, medians). Local disk, page cache warm on both sides.

The cache is written directly (random latents of C×h×w float32 under the keys of a tree of
small placeholder files, then ``compact``), so the benchmark measures reads, not encoding.

    python benchmarks/batched_reads.py --samples 2000 --batch 256 --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["build_cache"]


def build_cache(root: Path, cache: str, n: int, shape: tuple[int, ...], *, shard_bytes: int = 8 << 20,
                seed: int = 0, **kw: Any) -> tuple[Any, np.ndarray]:
    """A committed cache of ``n`` random float32 latents of ``shape`` for a tree of ``n`` small
    files under ``root`` (two classes); returns ``(dataset, latents in dataset order)``."""
    from latentds import LatentDataset
    try:
        from latentds.sample.encode import make_entry
    except ImportError:
        make_entry = None

    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / ("a" if i % 2 else "b") / f"{i:06d}.png").write_bytes(rng.bytes(64))
    ds = LatentDataset(root, codec="bicubic-f4", cache=cache, **kw)
    lat = rng.standard_normal((len(ds), *shape), dtype=np.float32)
    for i in range(len(ds)):
        meta = {"content_sha256": f"{i:064x}", "content_shape": [1, 1], "image_shape": [1, 1],
                "relpath_hash": f"{i:016x}"}
        if hasattr(ds, "_put"):
            ds._put(make_entry(ds.key(i), ds.targets[i], lat[i], None, meta))
        else:  # the dataset before latentds.sample (same entry)
            ds._store(i, ds.key(i), torch.from_numpy(lat[i]), torch.zeros(1), meta)
    per = max(1, shard_bytes // (lat[0].nbytes + 2048))
    ds.compact(shard_samples=per, shard_bytes=shard_bytes)
    return LatentDataset(root, codec="bicubic-f4", cache=cache, **kw), lat


def timed(fn: Any, reps: int) -> float:
    """Median seconds of ``reps`` calls (one call per batch)."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shape", type=int, nargs="+", default=[4, 64, 52])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=10, help="batches per method per round")
    args = ap.parse_args()
    torch.set_num_threads(1)  # DataLoader workers run one thread each; the memmap gather is one thread too
    from torch.utils.data import default_collate

    from latentds.batch_read import collate

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ds, lat = build_cache(work / "data", str(work / "cache"), args.samples, tuple(args.shape))
        mm_path = work / "latents.npy"
        np.save(mm_path, lat)
        mm = np.load(mm_path, mmap_mode="r")
        m = ds.store.manifest()
        print(f"built {len(ds)} latents {tuple(args.shape)} float32 in {len(m.shards)} shards "
              f"({time.perf_counter() - t0:.0f} s)")
        rng = np.random.default_rng(1)
        batches = [rng.choice(len(ds), args.batch, replace=False) for _ in range(args.reps)]
        # warm both sides: page cache, descriptors, read plan, row memo
        for b in batches:
            ds.__getitems__(b.tolist())
            mm[b]
        it = {k: iter(()) for k in ("a",)}

        def cycle() -> np.ndarray:
            try:
                return next(it["a"])
            except StopIteration:
                it["a"] = iter(batches)
                return next(it["a"])

        def memmap() -> None:
            torch.from_numpy(mm[cycle()])

        def variant(mmap: bool, verify: str, own: bool | str | None) -> Any:
            def run() -> None:
                ds.batch_mmap, ds.batch_verify = mmap, verify
                got = ds.__getitems__(cycle().tolist())
                if own == "items":
                    list(got)  # every per-sample (latent, target) made, as an eager list holds them
                elif own is not None:
                    (collate if own else default_collate)(got)
            return run

        def per_sample_collate() -> None:
            default_collate([ds[i] for i in cycle().tolist()])

        # the floor of a pread design: one bare os.preadv per sample of its latent bytes into a
        # preallocated batch (no tar/npy header, no CRC, no checks, no Python bookkeeping)
        plan, layouts = m.read_plan()
        fds = {p: os.open(ds.store.shard_path(p), os.O_RDONLY) for p in m.shards}
        shard_fd = [fds[p] for p in m.shards]
        rows_of = np.array([m.find(ds.key(i)) for i in range(len(ds))])
        nbytes = lat[0].nbytes

        def bare_preadv() -> None:
            rows = plan[rows_of[cycle()]]
            out = np.empty((len(rows), *lat.shape[1:]), np.float32)
            mv = memoryview(out.reshape(-1).view(np.uint8))
            for j, (s, o, md) in enumerate(rows[:, [0, 1, 3]].tolist()):
                os.preadv(shard_fd[s], [mv[j * nbytes:(j + 1) * nbytes]], o + md)
            torch.from_numpy(out)

        # the floor of the mapped design: the same maps the batched path reads, one np.concatenate
        # of each sample's latent bytes into a fresh batch (no headers, no CRC, no checks)
        from latentds.batch_read import _store_fd
        from latentds.mapped import MAPS

        maps = [MAPS.get(_store_fd(ds.store, ds.store.shard_path(p)), 0)[1] for p in m.shards]
        a_of = plan[rows_of][:, 1] + plan[rows_of][:, 3]

        def bare_maps() -> None:
            i = cycle()
            out = np.empty((len(i), *lat.shape[1:]), np.float32)
            np.concatenate([maps[s][a:a + nbytes] for s, a in zip(plan[rows_of[i], 0].tolist(), a_of[i].tolist())],
                           out=out.reshape(-1).view(np.uint8))
            torch.from_numpy(out)

        mvs = [MAPS.get(_store_fd(ds.store, ds.store.shard_path(p)), 0)[0] for p in m.shards]

        def bare_loop() -> None:
            # the floor of the batched path's copy: one slice assignment per sample from the same
            # maps into a fresh batch (no rows lookup, no fstat, no headers, no CRC, no checks)
            i = cycle()
            out = np.empty((len(i), *lat.shape[1:]), np.float32)
            dv = memoryview(out.reshape(-1).view(np.uint8))
            for d, s, a in zip(range(0, len(i) * nbytes, nbytes), plan[rows_of[i], 0].tolist(), a_of[i].tolist()):
                dv[d:d + nbytes] = mvs[s][a:a + nbytes]
            torch.from_numpy(out)

        # idea: a shard whose members all have one size is a strided array inside its map, so one
        # numpy fancy index per shard gathers its rows (the memmap gather's own operation); but a
        # batch's rows of one shard sit at scattered batch positions, so the gather needs a
        # temporary and a second copy to put them in batch order (scatter), or leaves the batch
        # in shard order (sorted: one copy, NOT what __getitems__ may return; shown as the bound)
        arrs = [MAPS.get(_store_fd(ds.store, ds.store.shard_path(p)), 0)[1] for p in m.shards]
        strided = []
        for sh in range(len(m.shards)):
            offs = np.sort(plan[plan[:, 0] == sh, 1])
            step = np.unique(np.diff(offs))
            assert len(step) <= 1, "a non-regular shard: the strided gather does not apply"
            md = int(plan[plan[:, 0] == sh, 3][0])
            strided.append((int(offs[0]), np.lib.stride_tricks.as_strided(
                arrs[sh][int(offs[0]) + md:], (len(offs), nbytes), (int(step[0]) if len(step) else nbytes, 1))))
        st_step = [int(v.strides[0]) for _, v in strided]

        def strided_gather(scatter: bool) -> Any:
            def run() -> torch.Tensor | None:
                i = cycle()
                p = plan[rows_of[i]]
                out = np.empty((len(i), nbytes), np.uint8) if scatter else np.empty((0, nbytes), np.uint8)
                shard_, off_ = p[:, 0], p[:, 1]
                parts = []
                for sh in np.unique(shard_).tolist():
                    j = np.flatnonzero(shard_ == sh)
                    o0, view = strided[sh]
                    r = (off_[j] - o0) // st_step[sh]
                    if scatter:
                        out[j] = view[r]
                    else:  # one array per shard, one copy each (np.take(out=) copies the whole view)
                        parts.append(view[r])
                if scatter:
                    return torch.from_numpy(out.view(np.float32).reshape(len(i), *lat.shape[1:]))
                return None
            return run

        it["a"] = iter(batches)
        assert torch.equal(strided_gather(True)(), torch.from_numpy(mm[batches[0]]))
        it["a"] = iter(())

        b = batches[0].tolist()
        got = default_collate(ds.__getitems__(b))[0]
        assert torch.equal(got, torch.from_numpy(mm[batches[0]])), "batched read differs from the memmap rows"
        assert torch.equal(collate(ds.__getitems__(b))[0], got)
        for mmap, verify in ((False, "always"), (True, "once"), (True, "always")):
            ds.batch_mmap, ds.batch_verify = mmap, verify
            for bb in batches:
                assert torch.equal(collate(ds.__getitems__(bb.tolist()))[0], torch.from_numpy(mm[bb])), (mmap, verify)
                assert torch.equal(default_collate(ds.__getitems__(bb.tolist()))[0], torch.from_numpy(mm[bb]))
                assert all(torch.equal(x, torch.from_numpy(mm[i])) and t == ds.targets[i]
                           for (x, t), i in zip(ds.__getitems__(bb.tolist()), bb.tolist())), (mmap, verify)
        methods = {"memmap gather": memmap, "bare preadv per sample (floor)": bare_preadv,
                   "bare concatenate from maps (floor)": bare_maps,
                   "bare slice-copy loop from maps (floor)": bare_loop,
                   "bare strided gather per shard + scatter (floor)": strided_gather(True),
                   "bare strided gather per shard, 1 array per shard (no batch)": strided_gather(False),
                   "__getitems__ preadv (before)": variant(False, "always", None),
                   "__getitems__": variant(True, "always", None),
                   "__getitems__ + default_collate": variant(True, "always", False),
                   "__getitems__ + batch_read.collate": variant(True, "always", True),
                   "__getitems__ + per-sample items made": variant(True, "always", "items"),
                   "__getitems__ CRC once": variant(True, "once", None),
                   "__getitems__ CRC once + batch_read.collate": variant(True, "once", True),
                   "__getitems__ CRC once + default_collate": variant(True, "once", False),
                   "__getitems__ CRC once + per-sample items made": variant(True, "once", "items"),
                   "per-sample + default_collate": per_sample_collate}
        res: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(args.rounds):
            order = list(methods)
            if r % 2:
                order.reverse()  # interleaved, alternating order: drift in machine load hits both
            for k in order:
                res[k].append(timed(methods[k], args.reps))
            print(f"round {r}: " + "  ".join(f"{k} {1e3 * res[k][-1]:.2f} ms" for k in methods), flush=True)
        med = {k: statistics.median(v) for k, v in res.items()}
        mb = args.batch * lat[0].nbytes / 1e6
        print(f"\nbatch {args.batch} random of {len(ds)} latents {tuple(args.shape)} float32 ({mb:.1f} MB), "
              f"{len(m.shards)} shards of <= 8 MiB, local disk, page cache warm, 1 thread; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        base = med["memmap gather"]
        for k, v in med.items():
            print(f"  {k:62s} {1e3 * v:7.2f} ms/batch  {args.batch / v:9.0f} samples/s  "
                  f"{100 * base / v:5.0f} % of memmap")
        g = {k: 100 * base / med[k] for k in med}
        print(f"goal: batch of {args.batch} >= 100 % of the memmap gather: __getitems__ (CRC every read) "
              f"{g['__getitems__']:.0f} %, + batch_read.collate {g['__getitems__ + batch_read.collate']:.0f} %; "
              f"CRC once per process {g['__getitems__ CRC once']:.0f} %, + collate "
              f"{g['__getitems__ CRC once + batch_read.collate']:.0f} %; before (preadv) "
              f"{g['__getitems__ preadv (before)']:.0f} %; the pread floor {g['bare preadv per sample (floor)']:.0f} %, "
              f"the map floors {g['bare concatenate from maps (floor)']:.0f} % (concatenate) / "
              f"{g['bare slice-copy loop from maps (floor)']:.0f} % (slice loop)")

if __name__ == "__main__":
    main()
