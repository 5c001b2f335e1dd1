"""Batches built inside ``LatentIterableDataset`` (``batch_size=B``), for ``DataLoader(batch_size=None)``.

With ``DataLoader(ds, batch_size=B)`` every sample travels alone through the worker's fetcher as
a tuple and a tensor of its own, and ``default_collate`` then stacks them: a second copy and
~10 us of Python per sample, which with 2 workers on 2 cores is most of what the stream costs
once the shard walk is vectorised (RESULTS.md, issue 15 item 1, fifth pass part 2: a dataset
that decodes nothing is only 1.3-1.45x our rate). Here a worker fills one batch tensor itself
and hands the DataLoader whole batches (as webdataset's ``.batched()`` does), so that overhead
is paid per batch.

What comes out is exactly what ``DataLoader(per-sample dataset, batch_size=B, drop_last=...)``
gives for the same stream: the same samples in the same order, cut into batches of ``B`` per
worker (each worker batches its own stream; its last, partial batch is kept unless
``drop_last``), latents of the mean's dtype, targets as ``default_collate`` makes them. Without
a transform the batch is allocated once (in a DataLoader worker in shared memory, as
``default_collate`` allocates it there, so sending it to the main process copies nothing) and
each checked mean is copied straight from the shard's bytes into its slot. With a transform the
per-sample contract is kept as it is: each latent tensor is transformed, then the batch is
``default_collate``d.

Errors come where the per-sample stream raises them: a corrupt sample raises its typed error
(``ShardError`` ...) when its turn comes, and samples of different shapes in one batch raise
``ConfigError`` (naming both samples) once the batch is complete, where ``default_collate``
would have failed (a batch ``drop_last`` drops is never collated, so it raises nothing). Means
of one shape but different dtypes are collated by ``default_collate``, as per sample.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate

from .errors import ConfigError

__all__ = ["ShardItems", "check_batch_size", "stream_batches"]

#: what the dataset hands over per shard: its checked walk (``.mean(i)``, ``.keys``), the order
#: its rows are served in, and their targets (before ``target_transform``)
ShardItems = tuple[Any, Sequence[int], Sequence[Any]]


def check_batch_size(batch_size: Any, drop_last: Any) -> tuple[int | None, bool]:
    """``(batch_size, drop_last)`` validated: a positive int or None, and a bool."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive int (the dataset yields whole batches; use "
                          f"DataLoader(ds, batch_size=None)) or None (one sample at a time), not {batch_size!r}")
    if not isinstance(drop_last, bool):
        raise ConfigError(f"drop_last must be True or False, not {drop_last!r}")
    if drop_last and batch_size is None:  # as DataLoader refuses drop_last without a batch_size
        raise ConfigError("drop_last=True needs batch_size= (it drops each worker's last, partial batch); "
                          "without batch_size the dataset yields single samples")
    return batch_size, drop_last


def stream_batches(shards: Iterable[ShardItems], count: int, batch_size: int, drop_last: bool,
                   transform: Callable[[torch.Tensor], Any] | None,
                   target_transform: Callable[[Any], Any] | None) -> Iterator[tuple[Any, Any]]:
    """``(latents, targets)`` batches of the ``count`` samples that ``shards`` yields."""
    if transform is None:
        return _fast(shards, count, batch_size, drop_last, target_transform)
    return _transformed(shards, batch_size, drop_last, transform, target_transform)


def _fast(shards: Iterable[ShardItems], count: int, batch_size: int, drop_last: bool,
          ttf: Callable[[Any], Any] | None) -> Iterator[tuple[Any, Any]]:
    shared = get_worker_info() is not None  # a DataLoader worker: the batch goes to shared memory
    left = count  # samples of the stream not yet in a batch: the last batch is allocated to size
    out: torch.Tensor | None = None
    dst: np.ndarray | None = None
    n = j = 0
    first: tuple[bytes, tuple[int, ...], np.dtype] = (b"", (), np.dtype(np.float32))
    # a batch whose samples differ in shape or dtype: its means (and keys), collated at its end as
    # default_collate collates them (dtypes promoted or cast; other shapes: ConfigError)
    odd: list[np.ndarray] | None = None
    odd_keys: list[bytes] = []
    tg: list[Any] = []
    ready: list[tuple[Any, Any]] = []
    for walk, order, targets in shards:
        keys, mean_of = walk.keys, walk.mean
        for i in order:
            mean = mean_of(i)  # checked here, in stream order: a corrupt sample raises its own error now
            if out is None:
                n = min(batch_size, left)
                out = _allocate((n, *mean.shape), mean.dtype, shared)
                dst = out.numpy()
                first = (keys[i], mean.shape, mean.dtype)
            if odd is None and (mean.shape != first[1] or mean.dtype != first[2]):
                odd, odd_keys = list(dst[:j]), [first[0]] * j  # the samples so far, exactly as they came
            if odd is None:
                dst[j] = mean  # type: ignore[index]  # the one copy: from the shard's bytes into the batch
            else:
                odd.append(mean)
                odd_keys.append(keys[i])
            tg.append(targets[i] if ttf is None else ttf(targets[i]))
            j += 1
            if j == n:
                left -= n
                if n == batch_size or not drop_last:  # a dropped batch is never collated, as per sample
                    # the targets as default_collate makes them from the per-sample tuples (a tuple)
                    ready.append((out if odd is None else _collate_odd(odd, odd_keys), default_collate(tuple(tg))))
                out, dst, odd, odd_keys, j, tg = None, None, None, [], 0, []
                if ready:
                    yield ready.pop()  # nothing of this frame keeps the batch while the consumer holds it


def _transformed(shards: Iterable[ShardItems], batch_size: int, drop_last: bool,
                 tf: Callable[[torch.Tensor], Any], ttf: Callable[[Any], Any] | None) -> Iterator[tuple[Any, Any]]:
    items: list[tuple[Any, Any]] = []
    keys: list[bytes] = []
    for walk, order, targets in shards:
        for i in order:
            mean = walk.mean(i)
            target = targets[i] if ttf is None else ttf(targets[i])
            z = torch.from_numpy(mean.copy())  # the per-sample contract: a writable tensor of its own
            items.append((tf(z), target))
            keys.append(walk.keys[i])
            if len(items) == batch_size:
                ready = [_collate(items, keys)]
                items, keys = [], []  # not held while the consumer holds the batch
                yield ready.pop()
    if items and not drop_last:
        ready = [_collate(items, keys)]
        items, keys = [], []
        yield ready.pop()


def _collate(items: list[tuple[Any, Any]], keys: list[bytes]) -> tuple[Any, Any]:
    try:
        latents, targets = default_collate(items)
    except RuntimeError as exc:  # torch.stack of transformed tensors of different shapes
        xs = [x for x, _ in items]
        if all(isinstance(x, torch.Tensor) for x in xs):
            a = xs[0]
            for k, x in zip(keys, xs):
                if x.shape != a.shape:
                    raise _mixed((keys[0], tuple(a.shape), a.dtype), (k, tuple(x.shape), x.dtype)) from exc
        raise
    return latents, targets


def _collate_odd(means: list[np.ndarray], keys: list[bytes]) -> Any:
    """A batch whose means differ in shape or dtype: other shapes are a ConfigError naming the
    first two that differ; other dtypes are collated by default_collate (promoted in the main
    process, cast to the first's dtype in a worker), as the per-sample loader collates them."""
    for k, m in zip(keys, means):
        if m.shape != means[0].shape:
            raise _mixed((keys[0], means[0].shape, means[0].dtype), (k, m.shape, m.dtype))
    return default_collate([torch.from_numpy(np.array(m)) for m in means])


def _allocate(shape: tuple[int, ...], dtype: np.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised batch tensor; in a DataLoader worker in shared memory, as
    ``default_collate`` allocates it (torch's ``_new_shared``): a tensor already there is sent to
    the main process as a handle, where any other would first be copied into shared memory."""
    elem = torch.from_numpy(np.empty(0, dtype))  # numpy dtype -> torch dtype, as from_numpy maps it
    if not shared:
        return torch.empty(shape, dtype=elem.dtype)
    numel = int(np.prod(shape))
    storage = elem._typed_storage()._new_shared(numel, device=elem.device)
    return elem.new(storage).resize_(*shape)


def _mixed(a: tuple[bytes, tuple[int, ...], Any], b: tuple[bytes, tuple[int, ...], Any]) -> ConfigError:
    return ConfigError(
        f"samples {a[0].decode()} ({tuple(a[1])}, {a[2]}) and {b[0].decode()} ({tuple(b[1])}, {b[2]}) fall in one "
        f"batch but their latents differ in shape, so they cannot be stacked; use batch_size=None "
        f"(one sample at a time) and DataLoader(ds, batch_size=B, collate_fn=...) with a collate_fn that handles "
        f"them (e.g. pads or keeps a list)")
