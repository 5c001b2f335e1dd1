"""The list ``LatentDataset.__getitems__`` returns for a batch read as one tensor.

``__getitems__`` must return ``[(latent, target), ...]`` (``DataLoader`` hands it to its
``collate_fn``), but a batched read already holds the whole batch as one contiguous tensor, and
making 256 per-sample views of it plus 256 tuples costs about a tenth of the read itself.
:class:`Samples` is a real ``list`` whose items are made only when first used (indexed,
iterated, compared, changed, pickled); :func:`latentds.batch_read.collate` takes the batch
tensor and the targets straight from an untouched one, with no views at all.

Python code cannot tell it from the eager list (every ``list`` method makes the items first,
``len`` and ``bool`` never need them); C code that reads a ``list``'s storage directly without
calling its methods (e.g. ``torch.tensor(samples)``, ``json.dumps``) sees it empty until an
item was used once: call :meth:`Samples.made` (or ``list(samples)``) before handing it there.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["Samples"]


class Samples(list):  # type: ignore[type-arg]
    """``[(latents[k], targets[k]) for k in range(len(targets))]``, made on first use."""

    __slots__ = ("latents", "targets", "_made")

    def __init__(self, latents: torch.Tensor, targets: list[Any]) -> None:
        super().__init__()
        self.latents, self.targets, self._made = latents, targets, False

    @property
    def pristine(self) -> bool:
        """True until an item was made: then ``latents`` and ``targets`` are still the batch."""
        return not self._made

    def made(self) -> "Samples":
        """Make the items now (views of ``latents``, as the eager path returns them); returns self."""
        if not self._made:
            self._made = True
            list.extend(self, zip(self.latents.unbind(0), self.targets))
        return self

    def __len__(self) -> int:
        return list.__len__(self) if self._made else len(self.targets)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self.made()),))  # a plain list on the other side


def _making(name: str) -> Callable[..., Any]:
    base = getattr(list, name)

    def method(self: Samples, *args: Any, **kwargs: Any) -> Any:
        self.made()
        for a in args:  # list's own code reads the other operand's storage directly
            if type(a) is Samples:
                a.made()
        return base(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = base.__doc__
    return method


for _name in ("__getitem__", "__iter__", "__reversed__", "__contains__", "__repr__", "__eq__", "__ne__", "__lt__",
              "__le__", "__gt__", "__ge__", "__add__", "__mul__", "__rmul__", "__iadd__", "__imul__", "__setitem__",
              "__delitem__", "__sizeof__", "append", "extend", "insert", "pop", "remove", "index", "count", "sort",
              "reverse", "copy", "clear"):
    setattr(Samples, _name, _making(_name))
del _name
