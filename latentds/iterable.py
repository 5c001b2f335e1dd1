"""``LatentIterableDataset``: sequential epochs over committed shards, for multi-node training.

Each shard is read whole (one GET) and its samples yielded in order, which is what object
stores do best. Shards are split first across ranks (``rank::world_size``), then across the
DataLoader workers of each rank, so every committed sample is read exactly once per epoch
across the whole job. With ``shuffle=True`` the shard order is permuted per epoch from
``seed + epoch`` (the same on every rank, so the split stays a partition) and samples are
shuffled within each shard.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .cache import LatentCache
from .errors import CacheError
from .shards import decode_sample, iter_tar_samples
from .storage import call
from .store import ShardedStore


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class LatentIterableDataset(IterableDataset):
    """Stream ``(latent tensor, target)`` from the committed shards of one cache namespace.

    Args:
        cache: the cache URL (as given to ``LatentDataset``).
        namespace: the namespace (``LatentDataset.namespace``); or use :meth:`from_dataset`.
        rank, world_size: default from ``torch.distributed`` or the ``RANK``/``WORLD_SIZE`` env.
        shuffle, seed: per-epoch shard order and within-shard order; call :meth:`set_epoch`.
        transform: applied to the latent tensor.
    """

    def __init__(self, cache: str, namespace: str, *, storage_options: dict[str, Any] | None = None,
                 rank: int | None = None, world_size: int | None = None, shuffle: bool = False, seed: int = 0,
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        super().__init__()
        self.store = ShardedStore(LatentCache(cache, namespace, storage_options=storage_options))
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.transform = transform

    @classmethod
    def from_dataset(cls, ds: Any, **kwargs: Any) -> "LatentIterableDataset":
        loc = ds.cache.root
        return cls(loc.url, ds.namespace, storage_options=loc.storage_options, transform=ds.transform, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shards(self) -> list[str]:
        m = self.store.refresh()
        if m is None:
            raise CacheError(f"{self.store.manifests.pointer_path}: no committed shards; run compact first")
        names = sorted(m.shards)
        if self.shuffle:
            names = [names[i] for i in np.random.default_rng(self.seed + self.epoch).permutation(len(names))]
        return names

    def my_shards(self) -> list[str]:
        rank, world = _dist_rank_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        mine = self.shards()[rank::world]
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id::info.num_workers]
        return mine

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        m = self.store.manifest()
        assert m is not None
        fs, so = self.store.location.fs, self.store.location.storage_options
        rng = np.random.default_rng([self.seed, self.epoch, self.rank or 0])
        for shard in self.my_shards():
            path = self.store.shard_path(shard)
            data = call(lambda: fs.cat_file(path), path, storage_options=so)
            samples = list(iter_tar_samples(data, path))
            if self.shuffle:
                samples = [samples[i] for i in rng.permutation(len(samples))]
            for key, fields in samples:
                row = m.find(key)
                if row < 0:  # in the shard but not committed (a merged-away duplicate): skip
                    continue
                owner, off, length, mlen, soff, sha, target = m.locate(row)
                if owner != shard:  # committed from another shard: yield it there, once
                    continue
                mean, _ = decode_sample(data[off:off + length], mean_length=mlen, std_offset=soff, sha256=sha,
                                        name=f"{path} (sample {key})")
                z = torch.tensor(mean)
                yield (self.transform(z) if self.transform else z), target


__all__ = ["LatentIterableDataset"]
