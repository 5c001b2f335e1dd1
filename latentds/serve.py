"""Random access to a committed cache from its manifest alone (issue 15).

``LatentDataset`` needs the source tree at read time: a sample's key is a hash of its source
identity, so the tree is listed (and, for samples not resolved yet, stat'ed) to find the row.
A training node that only has the cache URL can instead serve every committed sample of a
namespace (or a chosen set of keys) as a map-style dataset, with the same warm path
(``dataset[i]``: one checked ranged read) and the same batched path (``__getitems__``: mapped or
coalesced reads, whole-shard copies with ``local_cache``), as :class:`LatentIterableDataset`
streams them.

The sample list and targets are those of one manifest generation, taken when the dataset is
made (the targets are the ones stored at encode time, ``class_to_idx`` order of that run). A
later generation is followed by key: a sample that a newer generation no longer holds is a
:class:`CacheError` naming it, never a silently different sample.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import batch_read
from .errors import CacheError, ConfigError
from .sample.views import choose_view, view_key
from .store import open_store
from .store.plan import ReadPlan

__all__ = ["CachedLatentDataset"]


class _ViewKeys(Sequence[str]):
    """The keys the read plan reads with ``views > 1``: sample i's view of the current epoch."""

    def __init__(self, ds: "CachedLatentDataset") -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds._keys)

    def __getitem__(self, i: Any) -> Any:
        i = int(i)
        return view_key(self.ds._keys[i], choose_view(i, self.ds.epoch, self.ds.views))


class CachedLatentDataset(torch.utils.data.Dataset):
    """``(latent, target)`` for every committed sample of ``namespace`` under ``cache``.

    Args:
        cache, namespace, storage_options: as ``LatentIterableDataset`` (``ds.namespace`` of the
            ``LatentDataset`` that wrote the cache; ``latentds inspect`` lists namespaces).
        keys: serve only these sample keys, in this order (default: every row of the
            generation, in manifest order).
        transform, target_transform, normalize: as ``LatentDataset`` (``normalize`` uses the
            generation's committed per-channel statistics).
        local_cache, local_cache_bytes: as ``LatentDataset``; batched reads from an object store
            then fetch whole shards into ``<local_cache>/shards`` once and read them locally.
        views: ``keys`` are the samples' own keys (view 0, in the order of the ``LatentDataset``
            that wrote them with ``views=K``); sample i serves that dataset's view of the current
            epoch (:meth:`set_epoch`), every view must be committed. Needs ``keys``.
    """

    #: as ``LatentDataset.batch_gap_bytes`` (None: ``latentds.batch_read``'s defaults)
    batch_gap_bytes: int | None = None
    sample_posterior = False  # the served mean only (as the iterable dataset streams it)

    def __init__(self, cache: str | os.PathLike[str], namespace: str, *,
                 storage_options: dict[str, Any] | None = None, keys: Sequence[str] | None = None,
                 transform: Callable[[torch.Tensor], Any] | None = None,
                 target_transform: Callable[[int], Any] | None = None, normalize: bool = False,
                 local_cache: str | os.PathLike[str] | None = None, local_cache_bytes: int = 4 << 30,
                 views: int = 1) -> None:
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"views must be a positive int (1: no augmented views), not {views!r}")
        if views > 1 and keys is None:
            # the generation's rows are every view of every sample: none is "the view of this epoch"
            raise ConfigError(f"{os.fspath(cache)}: views={views} needs keys= (the samples' own keys, e.g. "
                              f"[ds.key(i) for i in range(len(ds))] of the LatentDataset that wrote them)")
        self.views, self.epoch = views, 0
        self.store = open_store(os.fspath(cache), namespace, storage_options, local_cache=local_cache,
                                local_cache_bytes=local_cache_bytes)
        self.namespace = namespace
        m = self.store.refresh()
        if m is None:
            raise CacheError(f"{self.store.manifests.pointer_path}: no committed shards in namespace {namespace}; "
                             f"run `latentds compact` (or dataset.compact()) first")
        self.generation = m.generation
        all_keys = [str(k) for k in m.column("key").to_pylist()]
        stored = [int(t) for t in m.column("target").to_pylist()]
        if keys is None:
            self._keys, self.targets = all_keys, stored
        else:
            self._keys = [str(k) for k in keys]
            wanted = [view_key(k, v) for v in range(views) for k in self._keys]  # view 0 first
            rows = m.find_many(wanted)
            missing = np.flatnonzero(rows < 0)
            if len(missing):
                raise CacheError(f"{self.store.manifests.pointer_path}: {len(missing)} of {len(wanted)} keys are "
                                 f"not committed in generation {m.generation} (e.g. {wanted[int(missing[0])]}); "
                                 f"encode and compact them first" + (f" (with views={views})" if views > 1 else ""))
            self.targets = [stored[int(r)] for r in rows[:len(self._keys)]]
        self.samples = list(zip(self._keys, self.targets))
        self.transform, self.target_transform, self.normalize = transform, target_transform, normalize
        self.plan = ReadPlan(self._keys if views == 1 else _ViewKeys(self))
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, index: int) -> str:
        return self._keys[index]

    def set_epoch(self, epoch: int) -> None:
        """Serve the views of ``epoch`` (``views > 1``), as ``LatentDataset.set_epoch``."""
        self.epoch = int(epoch)
        if self.views > 1:  # other views, other keys: resolved again
            self.plan.forget()

    def _normalizer(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._norm is None:
            m = self.store.manifest()
            st = m.stats if m is not None else {}
            if not st.get("mean"):
                raise CacheError(f"{self.store.manifests.pointer_path}: normalize=True needs latent statistics; "
                                 f"the generation has none; run `latentds compact CACHE`")
            mean = torch.tensor(st["mean"], dtype=torch.float32)
            std = torch.tensor(st["std"], dtype=torch.float32).clamp_min(1e-12)
            self._norm = (mean, std)
        return self._norm

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        got = self.store.read(self.plan, index)
        if got is None:
            raise CacheError(f"{self.store.manifests.pointer_path}: sample {self._keys[index]} is not in the current "
                             f"generation {self.store.manifest().generation} (it was in {self.generation}); make the "
                             f"dataset again to serve the new generation")
        return got

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        # the same construction as LatentDataset.__getitem__, so batches and samples agree bit for bit
        target = self.targets[index]
        mean, _ = self.arrays(index)
        latent = torch.from_numpy(mean if mean.flags.writeable else mean.copy())
        if self.normalize:
            mu, sd = self._normalizer()
            shape = (-1,) + (1,) * (latent.ndim - 1)
            latent = (latent - mu.view(shape)) / sd.view(shape)
        if self.transform is not None:
            latent = self.transform(latent)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return latent, target

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Any, Any]]:
        """A whole batch, equal to ``[self[i] for i in indices]`` (see :mod:`latentds.batch_read`)."""
        return batch_read.getitems(self, indices)
