"""Exports of committed latents: webdataset shards (+ a shard list) or one zarr array.

Shards already are webdataset tars, so the webdataset export copies the committed shards and
writes ``shardlist.json`` (names, sample counts, sizes, sha256) for streaming readers. The zarr
export needs one latent shape (use ``image_size=`` when encoding) and writes ``latents``
(N×C×h×w), ``targets`` and ``keys`` arrays, in manifest order, for dask.array analysis.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CacheError
from . import layout
from .backend import Backend
from .sharded import ShardedStore

__all__ = ["ExportReport", "class_names", "export_webdataset", "export_zarr"]


@dataclass
class ExportReport:
    samples: int
    files: int
    destination: str


def _require_manifest(store: ShardedStore) -> Any:
    m = store.refresh()
    if m is None or len(m) == 0:
        raise CacheError(f"{store.manifests.pointer_path}: nothing committed to export; run `latentds compact` first")
    return m


def class_names(store: ShardedStore) -> list[str]:
    """The class name of each target (``classes[target]``), as recorded by the writer of the
    namespace (``info.json``); empty for caches written before class names were recorded."""
    return [str(c) for c in store.cache.read_info().get("classes") or []]


def export_webdataset(store: ShardedStore, dest: str, storage_options: dict[str, Any] | None = None) -> ExportReport:
    m = _require_manifest(store)
    out = Backend(dest, storage_options)
    counts: dict[str, int] = {}
    for s in m.table.column("shard").to_pylist():
        counts[s] = counts.get(s, 0) + 1
    entries = []
    for shard in m.shards:
        data = store.backend.get(layout.shard(shard))  # the name was checked when the manifest loaded
        out.put(shard, data)
        entries.append({"url": shard, "nsamples": counts[shard], "filesize": len(data)})
    # ``classes``: the name of each ``<key>.cls`` value, so a stock reader gets "benign", not 0
    doc = {"__kind__": "wids-shard-index-v1", "name": store.cache.namespace, "wids_version": 1,
           "shardlist": entries, "stats": m.stats, "classes": class_names(store)}
    out.put("shardlist.json", json.dumps(doc, indent=1).encode())
    return ExportReport(len(m), len(entries) + 1, out.url)


def export_zarr(store: ShardedStore, dest: str, storage_options: dict[str, Any] | None = None) -> ExportReport:
    import zarr

    m = _require_manifest(store)
    shapes = {tuple(s) for s in m.table.column("shape").to_pylist()}
    if len(shapes) != 1:
        raise CacheError(f"{store.manifests.pointer_path}: latents have {len(shapes)} different shapes "
                         f"(e.g. {sorted(shapes)[:3]}); zarr needs one: encode with image_size=(H, W)")
    shape = shapes.pop()
    keys = m.table.column("key").to_pylist()
    n = len(keys)
    if "://" in dest and not dest.startswith("file://"):
        from zarr.storage import FsspecStore

        root = zarr.open_group(FsspecStore.from_url(dest, storage_options=storage_options or {}), mode="w")
    else:
        root = zarr.open_group(os.path.abspath(dest), mode="w")
    arr = root.create_array("latents", shape=(n, *shape), chunks=(min(n, 256), *shape), dtype="float32")
    targets = np.asarray(m.table.column("target").to_numpy(), dtype=np.int64)
    batch: list[np.ndarray] = []
    start = 0
    for i, key in enumerate(keys):
        batch.append(store.read_row(m, i, key).mean.astype(np.float32))
        if len(batch) == 256 or i == n - 1:
            arr[start:start + len(batch)] = np.stack(batch)
            start += len(batch)
            batch = []
    root.create_array("targets", shape=(n,), dtype="int64")[:] = targets
    root.create_array("keys", shape=(n,), dtype=str)[:] = np.asarray(keys, dtype=object)
    root.attrs.update({"namespace": store.cache.namespace, "generation": m.generation, "stats": m.stats,
                       "classes": class_names(store)})  # targets[i] names classes[targets[i]]
    return ExportReport(n, 3, dest)
