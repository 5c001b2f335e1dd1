"""Latents already in the cache for a sample, taken instead of encoding it again.

A bulk job over a cache that ``LatentDataset`` filled (staged or compacted), or that an earlier
run committed, re-reads those latents instead of encoding: the shard it writes holds the same
bytes as a fresh encode would (the entry metadata is rebuilt by
:func:`latentds.sample.encode.adopted_entry`), with zero encodes. A copy under a sample's
pre-issue-11 key (no source root in it) is taken only when its stored content hash equals the
file's, so another tree's file with the same relative path, size and mtime is never served.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import LatentdsError
from ..identity import IdentityKey, content_matches
from ..store.entries import LatentCache
from ..store.fsio import call
from ..store.shards import decode_sample

__all__ = ["cached_copies", "take_copy"]


def cached_copies(store: Any, todo: list[tuple[str, list[Any]]]) -> dict[str, dict[int, tuple]]:
    """Per partition: item index -> where a copy of its latent already is, so the task takes it
    instead of encoding: committed or staged under its key (a ``LatentDataset`` filled this cache:
    zero encodes), or committed under its pre-issue-11 key (no source root; taken after checking
    the content hash, so an old cache is re-keyed without encoding again)."""
    if not todo:
        return {}
    try:
        m = store.refresh()
        staged = set(store.cache.keys())
    except LatentdsError:
        return {}  # a broken manifest is reported by the commit; no shortcut then
    out: dict[str, dict[int, tuple]] = {}
    content = meta_off = meta_len = None
    for pid, chunk in todo:
        for i, it in enumerate(chunk):
            own = m.find(it.key) if m is not None else -1
            if own < 0 and it.key in staged:
                out.setdefault(pid, {})[i] = ("staging",)
                continue
            r = own if own >= 0 else (m.find(it.legacy_key) if m is not None else -1)
            if r < 0:
                continue
            if content is None:
                content = m.column("content_sha256")
                meta_off, meta_len = m.column("meta_offset"), m.column("meta_length")
            shard, off, length, mlen, soff, sha, _ = m.locate(r)
            check = None if own >= 0 else str(content[r].as_py())
            out.setdefault(pid, {})[i] = (store.shard_path(shard), off, length, mlen, soff, sha, check,
                                          int(meta_off[r].as_py()), int(meta_len[r].as_py()))
    return out


def take_copy(cache: LatentCache, key: str, where: tuple, digest: str | None, identity_key: IdentityKey | None = None
              ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]] | None:
    """A latent already in the cache for this file, as ``(mean, std, metadata)``: staged or
    committed under the sample's key (filled by ``LatentDataset`` or an earlier run; taken as is),
    or committed under its pre-issue-11 key (taken only if made from these very bytes: its stored
    content identity matches ``digest``, the source's sha256; see LatentDataset._adopt_legacy).
    ``None``: encode."""
    if len(where) == 1:  # a staging object under the sample's own key
        try:
            e = cache.get(key)
        except LatentdsError:
            return None
        return None if e is None else (e.mean, e.std, e.meta)
    shard_path, off, length, mlen, soff, sha, content_sha, meta_off, meta_len = where
    if content_sha is not None and (digest is None or content_matches(content_sha, digest, identity_key) is not True):
        return None
    loc = cache.location
    fs, so = loc.fs, loc.storage_options
    try:
        buf = call(lambda: fs.cat_file(shard_path, start=off, end=off + length), shard_path, storage_options=so)
        raw = call(lambda: fs.cat_file(shard_path, start=meta_off, end=meta_off + meta_len), shard_path,
                   storage_options=so)
        mean, std = decode_sample(buf, mean_length=mlen, std_offset=soff, sha256=sha, name=shard_path)
        meta = json.loads(raw)
    except (OSError, ValueError, LatentdsError):
        return None  # an unreadable copy is no reason not to encode afresh
    return np.array(mean), (np.array(std) if std is not None else None), meta
