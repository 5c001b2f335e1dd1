"""Bulk partition records and failure records of a namespace: read, and judged against what is
committed (shared by verify and gc, which must agree on what a sound record is)."""

from __future__ import annotations

import json
from typing import Any

from . import layout
from .layout import SHARD_NAME
from .sharded import ShardedStore

__all__ = ["CORRUPT", "partition_problem", "records"]

CORRUPT = object()


def records(store: ShardedStore, sub: str) -> list[tuple[str, Any]]:
    """``(path, parsed JSON or CORRUPT)`` of each record under ``<ns>/<sub>/`` (bulk partition
    records, failure records), temp files of interrupted writers left out."""
    be = store.backend
    out: list[tuple[str, Any]] = []
    for rel in sorted(be.list(sub)):
        name = rel.rsplit("/", 1)[-1]
        if not name.endswith(".json") or layout.is_temp(rel):
            continue
        p = be.path(rel)
        try:
            out.append((p, json.loads(be.get(rel))))
        except FileNotFoundError:
            continue  # removed meanwhile (a retry that succeeded, gc)
        except ValueError:
            out.append((p, CORRUPT))
    return out


def partition_problem(store: ShardedStore, path: str, rec: Any, committed: set[str] | None, shards: set[str]
                       ) -> str | None:
    """Why the bulk partition record at ``path`` does not stand for committed work, or None.

    A record tells a bulk job that its partition is done, so a re-run skips it. It is sound while
    every sample it encoded is in the committed manifest: records written by this version list those
    keys. Older records (no ``keys``) are judged by their shard: named by the manifest, or its index
    lists only committed keys (the manifest kept earlier rows of the same samples).
    ``committed=None`` (the manifest itself is unreadable): only the record's own form is checked."""
    stem = path.rsplit("/", 1)[-1][: -len(".json")]
    if rec is CORRUPT or not isinstance(rec, dict) or rec.get("partition") != stem:
        return ("corrupt partition record (unreadable, or not this partition's record); a re-run would skip "
                "the partition; `latentds gc` removes it")
    if committed is None:
        return None
    keys = rec.get("keys")
    if isinstance(keys, list):
        missing = [k for k in keys if k not in committed]
        if missing:
            return (f"partition record lists {len(missing)} of {len(keys)} samples that the committed manifest "
                    f"does not hold (e.g. {missing[0]}); a re-run would skip them; `latentds gc` removes the "
                    f"record, then re-run the job")
        return None
    shard = rec.get("shard")
    if not shard or shard in shards:
        return None
    if not isinstance(shard, str) or not SHARD_NAME.fullmatch(shard):  # never made into a path
        return (f"partition record names {str(shard)[:80]!r}, which is not a shard name (corrupt or crafted); "
                f"a re-run would skip the partition; `latentds gc` removes the record, then re-run the job")
    try:
        idx = json.loads(store.backend.get(layout.shard(layout.index_of(shard))))
        keys = [r["key"] for r in idx.get("samples", [])]
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        keys = None
    if keys and all(k in committed for k in keys):
        return None
    return (f"partition record names shard {shard}, which the committed manifest does not name; a re-run "
            f"would skip the partition; `latentds gc` removes the record, then re-run the job")
