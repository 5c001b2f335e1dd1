"""Training sets that change with the epoch: a ``LatentDataset(views=K)`` serves another cached
view of each sample every epoch (docs/views.md). :class:`EpochSubset` is a ``Subset`` that passes
``set_epoch`` on; :class:`~latentds.train.probe.module.ProbeModule` calls ``set_epoch`` on its
training set at the start of every epoch (before the epoch's DataLoader iterator is made)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["EpochSubset", "changes_with_epoch", "set_dataset_epoch"]


class EpochSubset(Dataset):
    """``dataset[indices[j]]`` as item ``j``, latents as float tensors; :meth:`set_epoch` is
    passed to ``dataset`` (a ``LatentDataset`` with ``views=K``: the epoch's views)."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.epochs_set: list[int] = []  # every epoch set, in order (what a run actually trained on)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, Any]:
        x, y = self.dataset[self.indices[j]]
        return torch.as_tensor(x).float(), y

    def set_epoch(self, epoch: int) -> None:
        self.epochs_set.append(int(epoch))
        self.dataset.set_epoch(int(epoch))


def set_dataset_epoch(dataset: Any, epoch: int) -> bool:
    """Call ``set_epoch(epoch)`` on ``dataset`` if it has one (a Subset-like wrapper without one is
    looked through via ``.dataset``); True if a dataset took it. With DataLoader workers, only
    non-persistent ones see it (they copy the dataset when the epoch's iterator is made)."""
    seen: set[int] = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        fn = getattr(dataset, "set_epoch", None)
        if callable(fn):
            fn(int(epoch))
            return True
        dataset = getattr(dataset, "dataset", None)
    return False


def changes_with_epoch(dataset: Any) -> bool:
    """Whether ``dataset`` serves something else after ``set_epoch`` (a ``LatentDataset`` with
    ``views > 1``, or any other dataset with a ``set_epoch``; wrappers that only pass it on, such
    as :class:`EpochSubset`, are looked through). Such a training set must not be loaded by
    persistent DataLoader workers: ``set_epoch`` runs in the main process, and a persistent
    worker keeps the copy of the dataset it was started with, so every epoch would silently
    serve epoch 0's views."""
    seen: set[int] = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        views = getattr(dataset, "views", None)
        if isinstance(views, int) and not isinstance(views, bool):
            return views > 1  # a LatentDataset: only its views change with the epoch
        if callable(getattr(dataset, "set_epoch", None)) and not isinstance(dataset, EpochSubset):
            return True  # someone else's epoch-dependent dataset: assume it changes
        dataset = getattr(dataset, "dataset", None)
    return False
