"""The latent store: one contract over local disk, ``memory://`` and object stores.

``open_store(url, namespace, storage_options)`` gives a :class:`ShardedStore` over a
:class:`~latentds.store.backend.Backend` (get / get_range / put / list / delete / put_if, with
:class:`~latentds.store.backend.Capabilities`). Modules, each with one job:

* :mod:`.layout` - every path in a namespace, and the exact-name checks of names read back
* :mod:`.backend` - the contract over fsspec; :mod:`.fsio` - retries, redaction, atomic writes
* :mod:`.entries` - sample entries, keys and namespaces; the staging tier (``LatentCache``)
* :mod:`.shards` - shard writer (``write_shard``) and readers; :mod:`.manifest` - generations
* :mod:`.sharded` - the store: reads (``plan`` / ``read``), compaction, commits
* :mod:`.ops` (verify, inspect), :mod:`.collect` (gc), :mod:`.repairs`, :mod:`.export` - built on the contract

Names are imported lazily, so ``import latentds.store`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> submodule that defines it
_NAMES: dict[str, str] = {
    "Backend": "backend", "Capabilities": "backend", "CommitConflict": "backend", "capabilities": "backend",
    "Location": "fsio", "RETRY_STATS": "fsio", "call": "fsio", "redact": "fsio", "redact_options": "fsio",
    "write_atomic": "fsio",
    "FORMAT_VERSION": "entries", "Entry": "entries", "LatentCache": "entries", "canonical_json": "entries",
    "decode_entry": "entries", "encode_entry": "entries", "list_namespaces": "entries", "namespace_id": "entries",
    "sample_key": "entries", "sha256_hex": "entries",
    "Row": "shards", "WrittenShard": "shards", "build_shard": "shards", "channel_sums": "shards",
    "write_shard": "shards", "shard_name": "shards",
    "Manifest": "manifest", "ManifestStore": "manifest", "combine_stats": "shards",
    "ReadPlan": "plan", "ReadThroughCache": "readthrough",
    "DEFAULT_SHARD_BYTES": "sharded", "DEFAULT_SHARD_SAMPLES": "sharded", "MAX_SAMPLE_BYTES": "sharded",
    "CompactReport": "sharded", "ShardedStore": "sharded",
    "VerifyReport": "ops", "describe": "ops", "verify": "ops", "verify_sources": "ops",
    "GcReport": "collect", "MIN_GRACE_S": "collect", "gc": "collect",
    "RepairReport": "repairs", "repair": "repairs",
    "ExportReport": "export", "export_webdataset": "export", "export_zarr": "export",
}

if TYPE_CHECKING:
    from .backend import Backend, Capabilities, CommitConflict, capabilities
    from .entries import Entry, LatentCache, namespace_id, sample_key
    from .sharded import CompactReport, ShardedStore


def open_store(url: Any, namespace: str, storage_options: dict[str, Any] | None = None, *,
               local_cache: Any = None, local_cache_bytes: int = 4 << 30,
               refresh_interval: float = 5.0) -> "ShardedStore":
    """The store of one namespace under the cache ``url`` (a local path or any fsspec URL).

    ``local_cache``: a local directory for bounded read-through copies of remote sample bytes.
    Nothing is read or created until the first operation (filesystems are made per process)."""
    from .entries import LatentCache
    from .sharded import ShardedStore

    return ShardedStore(LatentCache(str(url), namespace, storage_options=storage_options),
                        local_cache=local_cache, local_cache_bytes=local_cache_bytes,
                        refresh_interval=refresh_interval)


def __getattr__(name: str) -> Any:
    mod = _NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module 'latentds.store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


__all__ = sorted(["open_store", *_NAMES])
