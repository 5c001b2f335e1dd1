"""A forked child must never disturb its parent's pooled S3 connections (latentds/store/forksafe.py).

Before the fix, a DataLoader worker that dropped the inherited s3fs client closed the parent's
keep-alive sockets through the epoll instance parent and child share: the parent's loop stopped
hearing them and its next request waited out s3fs' 15 s read timeout (the 16 s setups of
benchmarks/s3_vs_litdata.py). Checked here two ways: the kernel's list of watched descriptors of
the parent's epoll (/proc/self/fdinfo, exact and instant), and the time of the next request.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc/self/fdinfo")


def _unwatched(loop) -> set[int]:
    """Descriptors ``loop`` believes it watches that its kernel epoll instance no longer has."""
    epfd = loop._selector._selector.fileno()
    with open(f"/proc/self/fdinfo/{epfd}") as f:
        kernel = {int(line.split()[1]) for line in f if line.startswith("tfd:")}
    return {key.fd for key in loop._selector.get_map().values()} - kernel


def _fs_loop():
    import fsspec.asyn

    return fsspec.asyn.get_loop()


def test_child_closing_inherited_connections_leaves_the_parents_alone(s3_env) -> None:
    """The bare mechanism: a child closes the parent's aiohttp connection pool outright."""
    import fsspec

    from latentds.store import fsio  # installs the fork hooks

    assert fsio.Location  # (imported for its side effect)
    bucket = s3_env.new_bucket()
    fs = fsspec.filesystem("s3", **s3_env.options(), skip_instance_cache=True)
    fs.pipe(f"{bucket}/x", b"hello")
    assert fs.cat_file(f"{bucket}/x") == b"hello"  # a pooled keep-alive connection now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            for session in fs._s3._endpoint.http_session._sessions.values():
                session._connector._close()  # what aiohttp does when the child drops the client
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _unwatched(_fs_loop()) == set()
    t0 = time.perf_counter()
    assert fs.cat_file(f"{bucket}/x") == b"hello"
    assert time.perf_counter() - t0 < 10  # 15 s read timeout + retry before the fix


def test_forked_epoch_then_set_epoch_is_not_stalled(s3_env) -> None:
    """The reported pattern: dataset made in the parent, an epoch with 2 forked workers, then
    ``set_epoch`` in the parent (before the fix: 15.4-16.0 s, every time)."""
    from torch.utils.data import DataLoader

    from latentds import LatentIterableDataset
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache

    url, opts = f"s3://{s3_env.new_bucket()}/latents", s3_env.options()
    s = ShardedStore(LatentCache(url, "ns", storage_options=opts))
    for i in range(6):
        k = f"{i:040x}"
        s.cache.put(k, np.full((2, 3, 3), i, np.float32), None, {"key": k, "target": i})
    s.compact(shard_samples=2)
    del s  # the dataset's own filesystem is then the only holder: a worker re-creating it drops
    # the parent's client, which is what closed the parent's sockets (held elsewhere, it lingers)
    it = LatentIterableDataset(url, "ns", storage_options=opts)  # pointer + manifest read here
    # workers read through the backend's s3fs (what drops the inherited client), not the signed
    # shard URLs that every reader uses by default since 2026-11-28 and that never touch s3fs
    it.sign_urls, it._signed = False, None
    ctx = multiprocessing.get_context("fork")
    for epoch in range(2):
        got = sorted(int(t) for _, t in DataLoader(it, batch_size=None, num_workers=2, multiprocessing_context=ctx))
        assert got == list(range(6))
        assert _unwatched(_fs_loop()) == set()
        t0 = time.perf_counter()
        it.set_epoch(epoch + 1)  # a pointer GET on the parent's pooled connection
        assert time.perf_counter() - t0 < 10
