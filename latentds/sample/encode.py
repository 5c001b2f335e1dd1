"""From images to cache entries: encoding grouped by image shape, the zero-std rule, the entry
metadata, and how a failed source is reported (what a cache may store about a failure is
:func:`latentds.identity.stored_reason`).

``LatentDataset`` (one sample, or ``fill()``) and the Dask bulk task both encode through
:class:`ShapeBatches` and build entries with :func:`make_entry`, so their bytes agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

import numpy as np

from ..store.entries import Entry, array_digest

__all__ = ["Failure", "ShapeBatches", "adopted_entry", "make_entry"]

P = TypeVar("P")

#: recomputed from the arrays for every entry; never carried over from another entry's metadata
_ARRAY_FIELDS = ("sha256", "shape", "dtype", "shard")


@dataclass
class Failure:
    """A source that could not be encoded: recorded by bulk work, never silently skipped."""

    path: str
    error_type: str
    message: str


def make_entry(key: str, target: int, mean: np.ndarray, std: np.ndarray | None, src_meta: dict[str, Any]) -> Entry:
    """The cache entry of one encoded sample, metadata complete (what the staging object and
    the shard member store: key, target, source metadata, array digest, shape, dtype)."""
    meta = {"key": key, "target": int(target), **src_meta}
    meta.update(sha256=array_digest(mean, std), shape=list(mean.shape), dtype=str(mean.dtype))
    return Entry(mean, std, meta)


def adopted_entry(key: str, target: int, mean: np.ndarray, std: np.ndarray | None, old_meta: dict[str, Any]
                  ) -> Entry:
    """An entry of an old cache (pre-issue-11 key) taken under the sample's current key: its
    source metadata kept, key and target made current, array fields recomputed."""
    src = {k: v for k, v in old_meta.items() if k not in _ARRAY_FIELDS and k not in ("key", "target")}
    return make_entry(key, target, np.asarray(mean), None if std is None else np.asarray(std), src)


class ShapeBatches(Generic[P]):
    """Encode images in batches of equal shape (a batch must stack), ``batch_size`` at most.

    ``add(img, payload)`` returns the samples encoded by it (a full batch), ``drain()`` the
    rest, each as ``(payload, mean, std | None)`` in float32 numpy, ``std`` ``None`` where the
    codec gives no spread (a deterministic codec: nothing worth storing). ``encode_seconds``
    sums the forward passes (host<->device copies included)."""

    def __init__(self, codec: Any, batch_size: int = 8) -> None:
        self.codec = codec
        self.batch_size = max(1, int(batch_size))
        self.encode_seconds = 0.0
        self._pending: dict[tuple[int, ...], list[tuple[np.ndarray, P]]] = {}

    def add(self, img: np.ndarray, payload: P) -> list[tuple[P, np.ndarray, np.ndarray | None]]:
        group = self._pending.setdefault(img.shape, [])
        group.append((img, payload))
        return self._flush(img.shape) if len(group) >= self.batch_size else []

    def drain(self) -> Iterator[tuple[P, np.ndarray, np.ndarray | None]]:
        for shape in sorted(self._pending):
            yield from self._flush(shape)

    def _flush(self, shape: tuple[int, ...]) -> list[tuple[P, np.ndarray, np.ndarray | None]]:
        import torch

        group = self._pending.pop(shape, [])
        if not group:
            return []
        t = time.perf_counter()
        x = torch.from_numpy(np.stack([g[0] for g in group]))[:, None].to(self.codec.device)
        with torch.inference_mode():
            mean, std = self.codec.encode_dist(x)
        mean = mean.detach().to("cpu", torch.float32).contiguous().numpy()
        std = std.detach().to("cpu", torch.float32).contiguous().numpy()
        self.encode_seconds += time.perf_counter() - t
        out = []
        for j, (_, payload) in enumerate(group):
            s: np.ndarray | None = np.ascontiguousarray(std[j])
            if not s.any():  # type: ignore[union-attr]
                s = None
            out.append((payload, np.ascontiguousarray(mean[j]), s))
        return out
