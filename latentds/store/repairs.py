"""``latentds repair``: drop exactly the committed rows that fail verify, re-pack or re-encode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import LatentdsError, ManifestError
from . import layout
from .entries import Entry
from .ops import verify
from .sharded import ShardedStore
from .shards import write_shard

__all__ = ["RepairReport", "repair"]


@dataclass
class RepairReport:
    """:func:`repair`: what was wrong and what was done about it, by object and sample key."""

    checked: int = 0                       # committed rows verified
    generation: str | None = None          # the generation committed without the bad rows (None: none)
    dropped: list[tuple[str, str]] = field(default_factory=list)   # (sample key, what was wrong)
    reencoded: list[str] = field(default_factory=list)   # dropped keys encoded again from the sources
    restored: list[str] = field(default_factory=list)    # dropped keys re-packed from a good staging copy
    #: good rows of a shard damaged as a whole, moved to a fresh shard (same latents, nothing re-encoded)
    repacked: list[str] = field(default_factory=list)
    staging_removed: list[tuple[str, str]] = field(default_factory=list)  # corrupt staging objects removed
    pointer_recovered: bool = False        # CURRENT.json was unreadable and was re-pointed
    #: damage repair does not fix (records: `latentds gc`; a shard index that no row depends on)
    remaining: list[tuple[str, str]] = field(default_factory=list)
    packed_generation: str | None = None   # the compaction that committed re-encoded samples


def repair(store: ShardedStore, *, reencode_from: Any = None) -> RepairReport:
    """Find exactly the committed rows whose bytes fail :func:`verify` (missing or truncated
    shard, sha256/CRC32C mismatch, another sample's tar member at the offset) and commit a new
    manifest generation without them; remove corrupt staging objects. A dropped row is a miss
    again: ``dataset[i]`` and ``fill()`` re-encode it (or read a good staging copy).

    ``reencode_from``: a :class:`~latentds.LatentDataset` over the sources of this namespace;
    the dropped samples it holds are encoded again (or taken from their staging copy) and
    committed by a compaction, so the store is whole again. Samples it does not hold stay dropped.
    An empty or garbage ``CURRENT.json`` is re-pointed first at the newest readable generation
    (generations are written before their pointer, so it holds every committed row)."""
    rep = RepairReport()
    try:
        store.manifests.read_pointer()
    except ManifestError:
        found = store.manifests.newest_readable()
        if found is None:
            raise
        ptr, m = found
        store.manifests.commit(m.table, dict(m.meta, parent=m.generation))  # nobody can read the old pointer
        store.refresh()
        rep.pointer_recovered = True
    v = verify(store, staging=True)
    rep.checked = v.samples
    staging_dir = store.backend.path(layout.STAGING).rstrip("/") + "/"
    row_msgs = {why for _, why in v.bad_rows.values()} | set(v.bad_shards.values())
    lost_shards = {store.shard_path(shard) for shard, why in v.bad_rows.values() if why.endswith("shard is missing")}
    for name, why in v.bad:
        if name.startswith(staging_dir) and name.endswith(".npz"):
            try:  # a corrupt staging object is never packed or served: remove it (a miss again)
                store.backend.delete(name[len(store.backend.path()) + 1:])
            except FileNotFoundError:
                pass
            rep.staging_removed.append((name, why))
        elif why not in row_msgs and name not in lost_shards:
            # e.g. a shard whose bytes no longer match its index: its good rows stay (each is
            # checked on its own), so verify keeps naming the shard; records: `latentds gc`
            rep.remaining.append((name, why))
    # good rows of a shard that is damaged as a whole (bytes differ from its index: the damage may
    # sit in a metadata member or a tar header no row check covers) move to a fresh shard in the
    # same commit that drops the bad rows: nothing good is lost and verify comes back clean
    m = store.manifests.load()
    added: list[tuple[str, Any]] = []
    shard_stats: dict[str, dict[str, list[float]]] = {}
    drop = {k: shard for k, (shard, _) in v.bad_rows.items()}
    bad_rows = dict(v.bad_rows)
    if m is not None and v.bad_shards:
        keys = m.table.column("key").to_pylist()
        shards = m.table.column("shard").to_pylist()
        for shard in sorted(v.bad_shards):
            group = []
            for r, (key, s_) in enumerate(zip(keys, shards)):
                if s_ != shard or key in bad_rows:
                    continue
                try:
                    e = store.read_row(m, r, key)
                    meta = store.read_meta(key)
                except (LatentdsError, OSError, ValueError) as exc:  # e.g. its metadata member is corrupt
                    bad_rows[key] = (shard, str(exc))
                    drop[key] = shard
                    continue
                group.append((key, Entry(e.mean, e.std, meta)))
                drop[key] = shard
            if group:
                w = write_shard(store.backend, group)
                added.extend((w.name, row) for row in w.rows)
                shard_stats[w.name] = w.stats
                rep.repacked.extend(k for k, _ in group)
    if drop:
        rep.generation, dropped = store.commit_without(drop, added, shard_stats)
        moved = set(rep.repacked)
        rep.dropped = [(k, bad_rows[k][1]) for k in dropped if k not in moved]
        rep.repacked = [k for k in rep.repacked if k in set(dropped)]
    if reencode_from is not None and rep.dropped:
        ds = reencode_from
        if ds.store.cache.namespace != store.cache.namespace:
            return rep  # the sources were encoded into another namespace: nothing of theirs here
        ds.store.refresh()
        index = {ds.key(i): i for i in range(len(ds))}
        todo = [index[k] for k, _ in rep.dropped if k in index]
        had = {k for k, _ in rep.dropped if k in index and store.cache.get(k) is not None}
        if todo:
            ds.fill(indices=todo, progress=False)
            rep.packed_generation = store.compact().generation
            for k, _ in rep.dropped:
                if k in had:
                    rep.restored.append(k)
                elif k in index:
                    rep.reencoded.append(k)
    return rep
