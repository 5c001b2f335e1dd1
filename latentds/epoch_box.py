"""The epoch (and pinned generation) a streaming dataset's main process set, for its persistent
DataLoader workers.

``DataLoader(persistent_workers=True)`` keeps each worker's copy of the dataset across epochs,
so ``set_epoch(e)`` in the main process never reaches them: every epoch would repeat the first
one's shard order, shuffle and views. The dataset therefore keeps its epoch and the pointer of
the generation it pinned for that epoch in a small piece of shared memory (forked workers
inherit it, spawned ones receive it as torch sends any shared tensor). A worker reads it when an
epoch starts (``__iter__``, after the DataLoader resumed it) and plans that epoch from that very
generation, so all workers still split one shard list.

Rules that keep it from changing what it should not (review R3, 2026-11-28):

* **Only news is taken.** Every write bumps a sequence number; a copy remembers the last one it
  wrote, adopted or saw when its own ``set_epoch`` ran (``seen``). A worker adopts the box only
  when the sequence moved since, so an epoch set in the worker itself (a wrapper's ``__iter__``,
  a ``worker_init_fn``, ``ds.epoch = e`` before the workers start) is never undone.
* **One writer per box: the process that owns it.** A box is owned by the process that made it.
  Another process that is not a DataLoader worker (a ``Pool`` child, a rank given the dataset by
  ``mp.spawn``, a ``pickle``/``deepcopy`` copy, whose tensor is no longer shared) takes a box of
  its own, with the same contents, before it writes or starts workers: on ``set_epoch``, when
  its spawned workers are pickled, and before any ``fork`` (``os.register_at_fork``), so its
  workers share the box it writes and no other process's ``set_epoch`` reaches them.
* **No torn reads.** The writer makes the sequence odd while it writes (a seqlock); a reader
  retries until it read one even sequence before and after the contents.
"""

from __future__ import annotations

import json
import os
import struct
import time
import weakref
from typing import Any

import numpy as np
import torch

from .errors import CacheError, ConfigError

__all__ = ["EpochBox"]

#: bytes of the box: a header (sequence, epoch, pointer length) and the pointer as JSON (~230
#: bytes as latentds writes it; room for fields other versions add). Kept under torch's parallel
#: grain (32,768 elements): a parallel fill or copy in a process forked from one that used
#: OpenMP threads (a ``Pool`` child) deadlocks, and the box is filled and copied there
_BYTES = 4096
_HEAD = struct.Struct("<qqi")
#: the header after the sequence number: epoch, pointer length
_TAIL = struct.Struct("<qi")
#: pointer length value: written without a pointer (workers then read the pointer themselves)
_NO_POINTER = -1
#: boxes of this process, so that a fork gives the children boxes this process owns
_LIVE: "weakref.WeakSet[EpochBox]" = weakref.WeakSet()


def _shared(nbytes: int) -> torch.Tensor:
    t = torch.from_numpy(np.zeros(nbytes, np.uint8))  # numpy: no torch kernel in a forked child
    try:
        t.share_memory_()
    except (RuntimeError, OSError):  # no shared memory here (a sandbox): DataLoader workers would
        pass  # need it for every batch anyway; a process without workers must not fail for it
    return t


class EpochBox:
    """``put(epoch, pointer)`` in the owning process; ``news()`` in a DataLoader worker."""

    __slots__ = ("_t", "_owner", "_seen", "__weakref__")

    def __init__(self) -> None:
        self._t = _shared(_BYTES)
        self._owner = os.getpid()
        self._seen = 0  # the sequence number this copy last wrote, adopted or saw
        _LIVE.add(self)

    def __getstate__(self) -> dict[str, Any]:
        return {"_t": self._t, "_owner": self._owner, "_seen": self._seen}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._t, self._owner, self._seen = state["_t"], state["_owner"], state["_seen"]
        _LIVE.add(self)

    def own(self) -> None:
        """Make sure this process owns the box (and that it is shared) before it writes it or
        starts workers: a copy in another process, or one whose tensor is no longer shared,
        gets a box of its own with the same contents, whose last write is not news to this copy
        (it is the other process's epoch, not this one's: review R4)."""
        if self._owner == os.getpid() and self._t.is_shared():
            return
        self._t, self._owner = self._copied(), os.getpid()
        self._seen = self._read()[0]

    def clone(self) -> "EpochBox":
        """A box of this process with the same contents and the same news seen (``copy.copy`` of a
        dataset: the copy's ``set_epoch`` must not reach the original's workers)."""
        box = EpochBox.__new__(EpochBox)
        box._t, box._owner, box._seen = self._copied(), os.getpid(), self._seen
        _LIVE.add(box)
        return box

    def _copied(self) -> torch.Tensor:
        t = _shared(_BYTES)
        t.numpy()[:] = self._t.numpy()
        return t

    def put(self, epoch: int, pointer: dict[str, Any] | None, name: object = "the generation pointer") -> None:
        """Write ``epoch`` and the pointer pinned for it (the owning process only)."""
        self.own()
        body = json.dumps(pointer, sort_keys=True).encode() if pointer is not None else b""
        if len(body) > _BYTES - _HEAD.size:
            raise CacheError(f"{name}: {len(body)} bytes, over the {_BYTES - _HEAD.size} a streaming dataset "
                             f"shares with its DataLoader workers; latentds writes ~230, so this pointer was "
                             f"written by something else: restore it (`latentds verify` checks the cache)")
        try:  # everything packed before anything is written: a bad epoch leaves the box as it was
            head = _TAIL.pack(int(epoch), len(body) if pointer is not None else _NO_POINTER)
        except struct.error:
            raise ConfigError(f"epoch must fit in 64 bits, not {epoch!r}") from None
        buf, seqs = self._t.numpy(), self._t.numpy().view(np.int64)
        seq = int(seqs[0])
        odd = seq + 1 + (seq & 1)
        seqs[0] = odd  # one aligned 8-byte store: a reader never sees half of it; odd: readers retry
        try:
            buf[_HEAD.size:_HEAD.size + len(body)] = np.frombuffer(body, np.uint8)
            buf[8:_HEAD.size] = np.frombuffer(head, np.uint8)
        except BaseException:  # interrupted mid-write: no pointer (workers read it themselves)
            buf[8:_HEAD.size] = np.frombuffer(_TAIL.pack(int(epoch), _NO_POINTER), np.uint8)
            raise
        finally:
            seqs[0] = odd + 1
            self._seen = odd + 1

    def seen(self) -> None:
        """This copy set its own epoch (in a worker): what the box holds now is not news to it."""
        self._seen = self._read()[0]

    def news(self) -> tuple[int, dict[str, Any] | None] | None:
        """``(epoch, pointer)`` the owning process wrote since this copy last wrote, adopted or
        saw the box; ``None`` when nothing was written since."""
        seq, epoch, pointer = self._read()
        if seq == self._seen:
            return None
        self._seen = seq
        return epoch, pointer

    def _read(self) -> tuple[int, int, dict[str, Any] | None]:
        buf = self._t.numpy()
        seqs = buf.view(np.int64)
        for attempt in range(10000):
            seq = int(seqs[0])
            epoch, n = _TAIL.unpack(buf[8:_HEAD.size].tobytes())
            body = buf[_HEAD.size:_HEAD.size + n].tobytes() if n > 0 else b""
            if not seq & 1 and int(seqs[0]) == seq:
                return seq, epoch, (json.loads(body) if n > 0 else None) if seq else None
            time.sleep(0 if attempt < 100 else 0.001)  # the owner is writing: a few microseconds
        raise CacheError("the epoch shared with DataLoader workers stayed half-written for over 10 s "
                         "(its process died while writing?); start the DataLoader again")


def _own_live_boxes() -> None:
    """Before a fork: the children (DataLoader workers) must share boxes this process owns."""
    try:
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None:  # a worker forking on: its boxes are its parent's to write
            return
        for box in list(_LIVE):
            box.own()
    except Exception:  # noqa: BLE001 - a fork must never fail for this; the box is then as before
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_own_live_boxes)
