"""A shard-aware shuffling sampler for ``LatentDataset`` on object stores (issue 15).

A true global shuffle makes every batch touch most shards; on S3 that is a ranged GET (or a
coalesced span) per shard per batch. Shuffling shards and then samples within a window of
``window`` open shards bounds that to ``window`` shards per batch, and with a shard cache
(``LatentDataset(local_cache=...)``: whole shards are fetched once, then read locally) it
moves each shard over the network once per epoch, as a streaming loader does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

if TYPE_CHECKING:
    from .dataset import LatentDataset

__all__ = ["ShardAwareSampler", "mixing"]


class ShardAwareSampler(torch.utils.data.Sampler[int]):
    """A shuffling sampler that keeps each stretch of batches inside a few shards.

    Per epoch (``set_epoch``; ``seed + epoch`` seeds it, as ``DistributedSampler`` does): the
    committed shards are put in a random order, cut into windows of ``window`` shards, and the
    samples of each window are shuffled together and yielded before the next window's. Samples
    not committed yet form one more group, shuffled the same way. A batch then touches at most
    ``window`` shards (two when it straddles windows), so with ``__getitems__`` it costs at most
    that many coalesced ranges per shard instead of up to ``batch_size``.

    Shuffle quality: every sample is still seen exactly once per epoch and the window order is
    random, but two samples from different windows never meet in one batch, and a sample's
    position is tied to its shard's. Shards are packed in key order and keys are hashes of the
    source identity, so shard membership carries no class or path information; what is lost is
    only the mixing across windows. ``window = number of shards`` is a true global shuffle.
    """

    def __init__(self, dataset: "LatentDataset", *, window: int = 4, seed: int = 0) -> None:
        if int(window) < 1:
            raise ValueError(f"window must be >= 1 shard, not {window!r}")
        self.dataset, self.window, self.seed, self.epoch = dataset, int(window), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def groups(self) -> list[np.ndarray]:
        """Dataset indices per committed shard (manifest order), then the uncommitted ones."""
        ds = self.dataset
        m = ds.store.manifest()
        n = len(ds)
        if m is None:
            return [np.arange(n)]
        rows = _committed_rows(ds, m, np.arange(n))
        plan, _ = m.read_plan()
        shard = np.where(rows >= 0, plan[np.maximum(rows, 0), 0], -1)
        order = np.argsort(shard, kind="stable")
        cuts = np.flatnonzero(np.diff(shard[order])) + 1
        parts = np.split(order, cuts)
        return sorted(parts, key=lambda p: (shard[p[0]] < 0, int(shard[p[0]])))

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        parts = self.groups()
        ds = self.dataset
        m = ds.store.manifest()
        # groups() put the uncommitted samples (if any) in one last group
        last_committed = m is not None and len(parts) and bool(
            _committed_rows(ds, m, parts[-1][:1])[0] >= 0)
        committed = parts if last_committed else parts[:-1]
        rest = [] if last_committed else parts[-1:]
        committed = [committed[i] for i in rng.permutation(len(committed))]
        for w in range(0, len(committed), self.window):
            pool = np.concatenate(committed[w: w + self.window])
            yield from pool[rng.permutation(len(pool))].tolist()
        for p in rest:
            yield from p[rng.permutation(len(p))].tolist()


def _committed_rows(ds: "LatentDataset", m: object, idx: np.ndarray) -> np.ndarray:
    """Manifest rows of ``idx`` (-1: not committed), as the batched read path resolves them."""
    from .batch_read import _rows  # batch_read never imports this module: no circle

    return _rows(ds, m, idx)  # type: ignore[arg-type]

def mixing(order: list[int] | np.ndarray, groups: list[np.ndarray], batch_size: int) -> dict[str, float]:
    """How well ``order`` (one epoch of indices) mixes the shards ``groups`` (indices per shard),
    against what a uniform global shuffle would give:

    * ``shards_per_batch``: mean distinct shards in a batch (a global shuffle touches nearly all);
    * ``pair_coverage``: the share of shard pairs that ever meet in one batch (1.0 for a global
      shuffle of any useful size; windows of w shards reach about w / number of shards);
    * ``position_corr``: |Spearman correlation| between a sample's epoch position and its
      shard's mean position, i.e. how much where a sample lands is tied to its shard
      (about 0 for a global shuffle, near 1 for shard-by-shard reading)."""
    order = np.asarray(order, np.int64)
    shard_of = np.empty(int(max(int(g.max()) for g in groups if len(g))) + 1, np.int64)
    for s, g in enumerate(groups):
        shard_of[g] = s
    sh = shard_of[order]
    ns = len(groups)
    met = np.zeros((ns, ns), bool)
    per = []
    for b in range(0, len(sh), batch_size):
        u = np.unique(sh[b: b + batch_size])
        per.append(len(u))
        met[np.ix_(u, u)] = True
    pos = np.arange(len(order), dtype=np.float64)
    mean_pos = np.bincount(sh, weights=pos, minlength=ns) / np.maximum(np.bincount(sh, minlength=ns), 1)
    rank = lambda x: np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64)  # noqa: E731
    r1, r2 = rank(pos), rank(mean_pos[sh])
    corr = float(np.corrcoef(r1, r2)[0, 1]) if ns > 1 else 1.0
    pairs = ns * (ns - 1) / 2
    return {"shards_per_batch": float(np.mean(per)),
            "pair_coverage": float((met.sum() - ns) / 2 / pairs) if pairs else 1.0,
            "position_corr": abs(corr)}

