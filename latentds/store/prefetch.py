"""Fetch whole objects ahead of their use on a small thread pool (shard prefetch).

A reader that walks shards in a known order (streaming, or a sampler's next shards) spends
most of its time waiting on one GET at a time; fetching the next ``depth`` shards while the
current one is decoded hides that wait, as LitData's chunk prefetch does. Results come back in
the given order, and a failed fetch raises at its own turn, exactly where a sequential read
would have raised it, so callers keep their error behaviour.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["DEFAULT_DEPTH", "fetch_ahead"]

T = TypeVar("T")
R = TypeVar("R")

#: objects in flight beyond the one in use: two 8 MiB shards per reader process keep a GET
#: running while the current shard is decoded (LitData's default prefetch is of the same size)
DEFAULT_DEPTH = 2


def fetch_ahead(fetch: Callable[[T], R], names: Iterable[T], depth: int = DEFAULT_DEPTH,
                start: int | None = None) -> Iterator[tuple[T, R]]:
    """``(name, fetch(name))`` for each name, in order, with up to ``depth`` later fetches
    running meanwhile on ``depth`` threads (``depth <= 0``: sequential, no thread). ``start``
    (default ``depth``) fetches begin at once and each result taken adds up to two more until
    ``depth`` are pending: a ramp, so the first object does not share the link with ``depth - 1``
    others (its reader waits for it alone) while later ones still overlap deeply. Closing the
    iterator early cancels fetches not started; ones already running finish in the background
    and are dropped."""
    it = iter(names)
    if depth <= 0:
        for n in it:
            yield n, fetch(n)
        return
    pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="latentds-prefetch")
    pending: deque[tuple[T, Future[R]]] = deque()

    def submit_next() -> None:
        for n in it:
            pending.append((n, pool.submit(fetch, n)))
            return

    try:
        for _ in range(max(1, min(depth, depth if start is None else start))):
            submit_next()
        while pending:
            n, fut = pending.popleft()
            data = fut.result()  # raises the fetch's own error, at this name's turn
            for _ in range(2):  # refill, ramping up towards depth
                if len(pending) < depth:
                    submit_next()
            yield n, data
            del data  # the consumer holds its own reference while it needs one
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
