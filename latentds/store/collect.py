"""``latentds gc``: remove what no committed manifest needs, safely beside running writers."""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import LatentdsError, ManifestError
from . import layout
from .records import partition_problem, records
from .sharded import ShardedStore

__all__ = ["MIN_GRACE_S", "GcReport", "gc", "min_grace_s"]


#: The least grace gc gives what may be work in flight: temp files of live writers, shards not
#: named by the manifest yet (a compaction or bulk job commits them after writing them all),
#: superseded manifest generations (a reader may be loading one). With grace 0, gc running beside
#: a compaction deleted the generation the pointer had just moved to and the shards it named
#: (issue 11, item 5). Raise the grace above the longest compaction / bulk partition you run.
#: ``LATENTDS_GC_MIN_GRACE_S`` lowers it (tests on a quiet store only; at your own risk).
MIN_GRACE_S = 300.0


def min_grace_s() -> float:
    env = os.environ.get("LATENTDS_GC_MIN_GRACE_S")
    return float(env) if env else MIN_GRACE_S


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    kept_young: int = 0
    bytes_freed: int = 0
    #: the grace applied to temp files, uncommitted shards and superseded generations
    #: (``max(grace_s, MIN_GRACE_S)``): say so when it is more than was asked for
    in_flight_grace_s: float = 0.0
    #: objects that became referenced (or younger) between the listing and their deletion
    rescued: int = 0
    #: staging objects kept because the committed copy of their sample fails its checks: they
    #: are the last good copy (`latentds repair` drops the bad row; the next compaction packs them)
    kept_last_copy: list[str] = field(default_factory=list)
    #: one entry per object removed: what it was, why it went and on what evidence (the
    #: generation the decision was made against, its age in the listing and, for work that may
    #: be in flight, on the store right before the DELETE) -- an audit trail for a deletion
    #: that is questioned later (the soak keeps it and prints it on failure)
    log: list[dict[str, Any]] = field(default_factory=list)


def _age_s(info: dict[str, Any], now: float) -> float:
    for k in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(k)
        if v is None:
            continue
        if isinstance(v, _dt.datetime):
            # S3 listings and HEAD give whole seconds (truncated): an object written at 10.9 s
            # shows 10 s. Count it as written at the end of that second, so an age is never
            # overstated and nothing younger than the grace goes.
            return now - v.timestamp() - (1.0 if v.microsecond == 0 else 0.0)
        try:
            return now - float(v)
        except (TypeError, ValueError):
            continue
    return 0.0  # unknown age counts as young: never delete what we cannot date


def _young(info: dict[str, Any], now: float, grace: float) -> bool:
    """Whether an object is younger than ``grace``; with no grace (0: committed staging objects
    at ``gc --grace 0``) nothing is."""
    return grace > 0 and _age_s(info, now) < grace


class _View:
    """What is committed, re-read whenever the pointer moves (see :func:`gc`).

    ``shards`` is every shard any generation loaded during this pass named, not only the last:
    generations only ever add rows (merges keep the base's), so a re-read that names fewer shards
    than an earlier one is an old answer from the store, and a shard once seen named stays until
    the next pass looks again. A pointer that reads as missing after it named a generation is
    refused the same way: latentds never removes it, and a view of "nothing committed" would
    make every old shard look unnamed."""

    def __init__(self, store: ShardedStore) -> None:
        self.store = store
        self.generation: str | None = None
        self.shards: set[str] = set()
        self.committed: set[str] = set()
        self.ptr: dict[str, Any] | None = None
        self.manifest: Any = None
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        ptr = self.store.manifests.read_pointer()
        gen = ptr["generation"] if ptr else None
        if ptr is None and self.generation is not None:
            raise ManifestError(f"{self.store.manifests.pointer_path}: read as missing during gc after it named "
                                f"generation {self.generation} (the store answered inconsistently; latentds never "
                                f"removes it); gc stopped, nothing more removed; run it again")
        if force or gen != self.generation:
            # no pointer: nothing committed (load(None) would read the pointer a second time)
            m = self.store.manifests.load(ptr) if ptr is not None else None  # ManifestError: nothing deleted
            self.ptr, self.generation, self.manifest = ptr, gen, m
            self.shards |= set(m.shards) if m is not None else set()
            self.committed = m.keys() if m is not None else set()


def gc(store: ShardedStore, *, grace_s: float = 3600.0, dry_run: bool = False) -> GcReport:
    """Remove, once older than ``grace_s``: temp files of interrupted writers, shards (and their
    indexes) no committed manifest names, superseded manifest generations, staging objects
    whose sample is committed in a shard, bulk partition records that stand for no committed
    work (their samples are not in the manifest, or the record is unreadable: a re-run would skip
    them) and unreadable failure records. Sound partition records (a bulk re-run needs them to
    skip committed partitions) and failure records (``--retry-failed``, the exit code) are kept.

    Safe beside running compactions, bulk jobs and readers: temp files, unnamed shards and
    superseded generations get at least :data:`MIN_GRACE_S` whatever ``grace_s`` says (they may
    be work in flight); a generation at or after the committed one is never removed (a commit
    may be replacing the pointer); and right before each deletion the pointer is read again (the
    manifest reloaded if it moved) and the object's membership and age are checked again, so
    what a commit made since the listing named, or a writer rewrote, is kept. Refuses to run on
    a corrupt manifest (it could not tell what is referenced)."""
    rep = GcReport()
    be = store.backend
    view = _View(store)
    in_flight_grace = max(float(grace_s), min_grace_s())
    rep.in_flight_grace_s = in_flight_grace
    # bulk partition records that stand for no committed work (see _partition_problem) and failure
    # records nobody can read: a re-run needs the sound ones (resume, --retry-failed, exit code)
    stale: set[str] = set()
    for path, rec in records(store, "bulk"):
        if partition_problem(store, path, rec, view.committed, view.shards) is not None:
            stale.add(path)
    for path, rec in records(store, "failures"):
        stem = path.rsplit("/", 1)[-1][: -len(".json")]
        if not isinstance(rec, dict) or rec.get("relpath_hash") != stem or "error_type" not in rec:
            stale.add(path)

    def doomed(rel: str, path: str) -> tuple[float, bool] | None:
        """(grace this object needs before it may go, whether it may be work in flight), or None
        if it must stay."""
        kind = layout.kind_of(rel)  # only names latentds writes are ever deleted (invariant 10)
        if kind == "temp":
            return in_flight_grace, True
        base = rel.rsplit("/", 1)[-1]
        if kind == "shard":
            return None if layout.shard_of_index(base) in view.shards else (in_flight_grace, True)
        if kind == "generation":
            gen = layout.generation_of(base)
            # the committed one, and any newer one (a commit in progress), always stay
            return None if view.generation is None or gen >= view.generation else (in_flight_grace, True)
        if kind == "staging":
            return (float(grace_s), False) if layout.staging_key(rel) in view.committed else None
        if kind in ("bulk", "failure"):
            return (float(grace_s), False) if path in stale else None
        return None

    now = time.time()
    files = be.list("", recursive=True)
    for rel, info in sorted(files.items()):
        path = be.path(rel)
        verdict = doomed(rel, path)
        if verdict is None:
            continue
        need, in_flight = verdict
        if _young(info, now, need):
            rep.kept_young += 1
            continue
        fresh = info
        if in_flight:
            # right before deleting what may be work in flight: the pointer again (a compaction
            # may have committed since the listing) and the object's own age again (a writer may
            # have rewritten it). Staging objects and records need no re-check: the committed set
            # only grows, so the listing-time view can only keep more of them, never fewer.
            view.refresh()
            if doomed(rel, path) is None:
                rep.rescued += 1
                continue
            try:
                fresh = be.info(rel)
            except FileNotFoundError:
                continue
            if _young(fresh, time.time(), need):
                rep.rescued += 1
                continue
        # a committed staging object (not a writer's temp file, which is in flight) is kept when
        # its committed copy no longer reads back: it is then the last good data
        if not in_flight and rel.startswith("staging/") and not _committed_copy_ok(store, view, rel.rsplit("/", 1)[-1][:-len(".npz")]):
            rep.kept_last_copy.append(path)  # the committed copy is bad: this one is the last good data
            continue
        if not dry_run:
            try:
                be.delete(rel)
            except FileNotFoundError:
                continue
        rep.removed.append(path)
        rep.log.append(_entry(rel, info, fresh if in_flight else None, view.generation, need))
        rep.bytes_freed += int(fresh.get("size") or info.get("size") or 0)
    return rep


_WHY = {"temp": "temp file of a writer", "shard": "shard no committed generation names",
        "generation": "superseded generation", "staging": "staging object of a committed sample",
        "bulk": "bulk record that stands for no committed work", "failure": "unreadable failure record"}


def _stamp(info: dict[str, Any]) -> str | float | None:
    v = next((info[k] for k in ("mtime", "LastModified", "last_modified", "created") if info.get(k) is not None), None)
    return v.isoformat() if isinstance(v, _dt.datetime) else v


def _entry(rel: str, listed: dict[str, Any], fresh: dict[str, Any] | None, generation: str | None,
           grace: float) -> dict[str, Any]:
    """One line of :attr:`GcReport.log` (JSON-ready)."""
    t = time.time()
    return {"t": round(t, 3), "object": rel, "why": _WHY.get(layout.kind_of(rel), "?"), "against": generation,
            "grace_s": grace, "listed": _stamp(listed), "age_listed_s": round(_age_s(listed, t), 1),
            "rechecked": _stamp(fresh) if fresh is not None else None,
            "age_rechecked_s": round(_age_s(fresh, t), 1) if fresh is not None else None}


def _committed_copy_ok(store: ShardedStore, view: _View, key: str) -> bool:
    """Whether the committed row of ``key`` reads back intact (its member header, sha256): gc
    deletes a staging object only then (issue 11, item 6: after a shard was lost or corrupted, gc
    had deleted the staging copies that were the last good data). One ranged read per object."""
    m = view.manifest
    row = m.find(key) if m is not None else -1
    if row < 0:
        return False
    try:
        store.read_row(m, row, key)
    except (LatentdsError, OSError, ValueError):
        return False
    return True
