"""The epoch (and pinned generation) a streaming dataset's main process set, for its persistent
DataLoader workers.

``DataLoader(persistent_workers=True)`` keeps each worker's copy of the dataset across epochs,
so ``set_epoch(e)`` in the main process never reaches them: every epoch would repeat the first
one's shard order, shuffle and views. The dataset therefore keeps its epoch and the pointer of
the generation it pinned for that epoch in a few bytes of shared memory, made in the main
process (forked workers inherit it, spawned ones receive it as torch sends any shared tensor).
A worker reads it when an epoch starts (``__iter__``, after the DataLoader resumed it) and, if
the main process moved on, plans that epoch from that very generation, so all workers still
split one shard list. A worker never writes it.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch

__all__ = ["EpochBox"]

#: bytes of the box: an 12-byte header (epoch, pointer length) and the pointer as JSON (~230 bytes)
_BYTES = 2048
_HEAD = struct.Struct("<qi")
#: pointer length values: never written; written without a pointer (workers read it themselves)
_UNSET, _NO_POINTER = 0, -1


class EpochBox:
    """``put(epoch, pointer)`` in the main process; ``news(epoch, pin)`` in a worker."""

    __slots__ = ("_t",)

    def __init__(self) -> None:
        self._t = torch.zeros(_BYTES, dtype=torch.uint8)
        try:
            self._t.share_memory_()
        except (RuntimeError, OSError):  # no shared memory here (a sandbox): DataLoader workers would
            pass  # need it for every batch anyway; a process without workers must not fail for it

    def put(self, epoch: int, pointer: dict[str, Any] | None) -> None:
        body = json.dumps(pointer, sort_keys=True).encode() if pointer is not None else b""
        if len(body) > _BYTES - _HEAD.size:  # not a pointer this library writes: workers read it themselves
            body, pointer = b"", None
        buf = self._t.numpy()
        buf[_HEAD.size:_HEAD.size + len(body)] = list(body)
        buf[:_HEAD.size] = list(_HEAD.pack(int(epoch), len(body) if pointer is not None else _NO_POINTER))

    def news(self, epoch: int, pin: tuple[int, dict[str, Any]] | None) -> tuple[int, dict[str, Any] | None] | None:
        """``(epoch, pointer)`` the main process set, if it differs from this copy's ``epoch``
        and ``pin`` (``(epoch, pointer)``); ``None`` when nothing changed (or nothing was set)."""
        buf = self._t.numpy()
        e, n = _HEAD.unpack(buf[:_HEAD.size].tobytes())
        if n == _UNSET:
            return None
        pointer = json.loads(buf[_HEAD.size:_HEAD.size + n].tobytes()) if n > 0 else None
        mine = pin[1] if pin is not None and pin[0] == epoch else None
        if e == epoch and (pointer is None or pointer == mine):
            return None
        return e, pointer
