"""The one per-sample path, used alike by ``LatentDataset`` (lazily, per sample, and by
``fill()``) and by the Dask bulk task (``latentds.encode``)::

    source   root_identity, relative_path, identity -> sample_key  (which sample; the cache key)
             read_bytes                                             (one read, and its sha256)
    image    Pipeline.prepare: preprocess | loader -> fit_image    (the pixels the codec sees)
             Pipeline.spec                                          (the namespace's preprocessing)
    encode   ShapeBatches -> make_entry                             (latents, zero-std rule, metadata)
             Failure                                                (a file that failed)
             stored_identity                                        (what an entry says of its file)
    worker   get_codec                                              (one codec per worker process)

A cache filled by one caller is read by the other without encoding because there is nothing
for them to disagree on: each step exists once, here.

Names are imported lazily (``import latentds.sample.source`` needs no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES: dict[str, str] = {
    "etag": "source", "identity": "source", "legacy_key": "source", "read_bytes": "source",
    "read_local": "source", "relative_path": "source", "relpath_hash": "source", "root_identity": "source",
    "sample_key": "source",
    "Fit": "image", "Pipeline": "image", "fit_image": "image", "to_float_image": "image",
    "Failure": "encode", "ShapeBatches": "encode", "adopted_entry": "encode", "make_entry": "encode",
    "stored_identity": "source",
    "get_codec": "worker", "restore_malloc_thresholds": "worker",
}


def __getattr__(name: str) -> Any:
    mod = _NAMES.get(name)
    if mod is None:
        raise AttributeError(f"module 'latentds.sample' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


__all__ = sorted(_NAMES)
