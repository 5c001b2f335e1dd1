"""The 16 s S3 stall after a forked epoch (latentds/store/forksafe.py), as a repeatable count.

A ``LatentIterableDataset`` is made in this process on S3 (moto + the counting proxy on
127.0.0.1), iterated by a DataLoader with 2 forked workers, then ``set_epoch`` is called here;
repeated ``--rounds`` times, each step timed. ``--nofix`` skips registering the fork hooks (the
code before the fix). Each worker starts by closing the connection pool of the S3 client it
inherited, which is what s3fs' finalizer does when a child drops that client while an asyncio
loop runs in its thread (LitData's workers); left to the child's garbage collector
(``--natural``) whether and where that happens depends on allocation timing: before the fix it
stalled every ``set_epoch`` in one harness and none in this one.

    python benchmarks/fork_pool_stall.py --rounds 20 [--nofix]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time

import numpy as np

__all__: list[str] = []


def _close_inherited_pools(_worker: int) -> None:
    """In a forked worker: close every inherited s3fs client's aiohttp pool, as aiohttp does
    when the client is dropped (``ClientSession.close`` -> ``connector._close``)."""
    import gc
    import warnings

    import s3fs

    # fsspec empties its instance cache in a forked child: the parent's clients are reachable
    # only through the objects that hold them (the dataset's store), so find them by type
    with warnings.catch_warnings():  # isinstance() on torch's deprecated aliases warns
        warnings.simplefilter("ignore")
        found = [o for o in gc.get_objects() if isinstance(o, s3fs.S3FileSystem)]
    for fs in found:
        s3 = getattr(fs, "_s3", None)
        if s3 is not None:
            for session in s3._endpoint.http_session._sessions.values():
                session._connector._close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--nofix", action="store_true", help="do not register the fork hooks (before the fix)")
    ap.add_argument("--natural", action="store_true", help="workers do not close the inherited pool themselves")
    args = ap.parse_args()
    if args.nofix:
        import latentds.store.forksafe as forksafe

        forksafe._installed[0] = True  # install() becomes a no-op: nothing registered at fork
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import s3fs
    from torch.utils.data import DataLoader

    from latentds import LatentIterableDataset
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache
    from latentds.testing.loopback_s3 import FaultProxy, MotoS3, storage_options

    moto = MotoS3().start()
    proxy = FaultProxy(moto.port).start()
    try:
        opts = storage_options(proxy.endpoint)
        s3fs.S3FileSystem(**storage_options(moto.endpoint), skip_instance_cache=True).call_s3(
            "create_bucket", Bucket="stall")
        url = "s3://stall/latents"
        store = ShardedStore(LatentCache(url, "ns", storage_options=opts))
        for i in range(6):
            k = f"{i:040x}"
            store.cache.put(k, np.full((2, 3, 3), i, np.float32), None, {"key": k, "target": i})
        store.compact(shard_samples=2)
        del store  # the dataset's filesystem is then the only holder (as in a training script)
        ctx = multiprocessing.get_context("fork")
        init = None if args.natural else _close_inherited_pools
        slow, worst = 0, 0.0
        for r in range(args.rounds):
            t0 = time.perf_counter()
            it = LatentIterableDataset(url, "ns", storage_options=opts)
            made = time.perf_counter() - t0
            n = sum(1 for _ in DataLoader(it, batch_size=None, num_workers=2, multiprocessing_context=ctx,
                                           worker_init_fn=init))
            t0 = time.perf_counter()
            it.set_epoch(1)
            again = time.perf_counter() - t0
            slow += (made > 5) + (again > 5)
            worst = max(worst, made, again)
            print(f"round {r}: made {made:.2f} s, {n} samples, set_epoch {again:.2f} s", flush=True)
        print(f"{'before the fix' if args.nofix else 'with the fix'}: {slow} of {2 * args.rounds} steps over 5 s "
              f"(slowest {worst:.2f} s); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        proxy.stop()
        moto.stop()


if __name__ == "__main__":
    main()
