"""The list ``LatentDataset.__getitems__`` returns for a batch read as one tensor.

``__getitems__`` must return ``[(latent, target), ...]`` (``DataLoader`` hands it to its
``collate_fn``), but a batched read already holds the whole batch as one contiguous tensor.
:class:`Samples` is an ordinary, fully built ``list`` of per-sample views of that tensor (what
``default_collate`` and any user code expect; C code that reads a list's storage directly sees
every item) that also remembers the tensor, so :func:`latentds.batch_read.collate` returns it
without the stack's copy. The list's own mutating methods mark it changed, and a changed list
is collated from its items like any other.

Why the items are made eagerly: making 256 views costs ~0.2 ms per batch (measured,
benchmarks/RESULTS.md "Batched reads", fifth pass: 66 % vs 70 % of the memmap gather), and a
list that made them lazily would look empty to C code that reads the storage of a ``list``
without calling its methods (``json.dumps``, ``torch`` argument parsing). Correct everywhere
beats 4 points.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["Samples"]


class Samples(list):  # type: ignore[type-arg]
    """``[(latents[k], targets[k]) for k in range(len(targets))]``, remembering ``latents``."""

    __slots__ = ("latents", "targets", "_changed")

    def __init__(self, latents: torch.Tensor, targets: list[Any]) -> None:
        super().__init__(zip(latents.unbind(0), targets))
        self.latents, self.targets, self._changed = latents, targets, False

    @property
    def pristine(self) -> bool:
        """True while the list holds exactly the items it was made with (none set, added,
        removed or reordered through its methods): ``latents`` and ``targets`` are the batch."""
        return not self._changed and list.__len__(self) == len(self.targets)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))  # a plain list on the other side


def _changing(name: str) -> Callable[..., Any]:
    base = getattr(list, name)

    def method(self: Samples, *args: Any, **kwargs: Any) -> Any:
        self._changed = True
        return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
              "sort", "reverse", "clear"):
    setattr(Samples, _name, _changing(_name))
del _name
