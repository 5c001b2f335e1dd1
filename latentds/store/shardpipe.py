"""Compaction's shard writer: shards packed a chunk at a time on the calling thread, their
checksums, names, indexes and writes done on one background thread meanwhile.

Why: compaction is per-sample Python on the caller's thread (read, check, pack), while a good
part of a shard's cost is C that releases the GIL: the sha256 and CRC32C of every row, the
sha256 of the whole shard (its name), the writes and their fsync. Done after the shard is
packed, as :func:`~latentds.store.shards.write_shard` does, none of it overlaps anything; done
here, a chunk's checksums run while the caller reads and checks the next chunk, and a shard's
name, index and writes while the next shard fills (issue 15, item 3).

The bytes are exactly :func:`~latentds.store.shards.write_shard`'s (tested): a shard is the
same members in the same order, so a chunk starting at byte ``base`` holds the members
``build_shard`` puts at ``base`` (every member is padded to 512 bytes, headers depend on name
and size only), followed at the end by the same two zero blocks and padding to 10240; the
shard's sha256 is updated chunk by chunk in order (one worker thread runs jobs first in, first
out); channel sums, the index document and the manifest rows come from the same functions.
Memory: at most :data:`IN_FLIGHT` shards are being finished while the caller fills the next
(peak ~3–4 shards' bytes, where packing into one reused buffer held ~2).
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from . import layout
from .layout import SHARD_PREFIX, SHARD_SUFFIX
from .npy import dtype_name
from .savez import canonical_metas
from .shards import ChannelSums, WrittenShard, _member_bytes, write_shard
from .tarpack import BLOCK, RECORD, RowBlock, assemble, index_json, index_samples_json, sample_checksums, ustar_headers

__all__ = ["CHUNK", "IN_FLIGHT", "ShardPipeline"]

#: samples packed at once (~2.7 MB of small latents): small enough that checksums start early
CHUNK = 256
#: shards being finished (hashed, indexed, written) while the caller fills the next: memory
#: is about 2 + 2 * IN_FLIGHT shards' bytes at the peak (the shard being filled: its staging
#: objects and packed chunks; each one being finished: its chunks and, briefly, their join)
IN_FLIGHT = 1


class _Chunk:
    """One packed chunk: its member bytes and its rows' columns (offsets absolute in the shard)."""

    __slots__ = ("buf", "keys", "off", "length", "mean_length", "std_offset", "targets", "contents", "meta_offset", "meta_length", "rel_start", "rel_end", "means", "rows", "index")

    def __init__(self, items: list[tuple[str, Any]], base: int) -> None:
        # only what the layout needs is made here (the caller's thread); the rows' other
        # columns are made in finish(), on the background thread
        names: list[bytes] = []
        datas: list[Any] = []
        first: list[int] = []
        has_std: list[bool] = []
        ents = [e for _, e in items]
        metas = canonical_metas(ents) or [None] * len(items)
        self.targets = [int(e.meta.get("target", -1)) for e in ents]
        for (key, e), meta_b, t in zip(items, metas, self.targets):  # as build_shard does, member for member
            mean_b, std_b, meta_b = _member_bytes(e, meta_b)
            kb = key.encode("ascii")
            first.append(len(datas))
            if std_b is None:
                has_std.append(False)
                names += (kb + b".npy", kb + b".cls", kb + b".json")
                datas += (mean_b, str(t).encode(), meta_b)
            else:
                has_std.append(True)
                names += (kb + b".npy", kb + b".std.npy", kb + b".cls", kb + b".json")
                datas += (mean_b, std_b, str(t).encode(), meta_b)
        sizes = np.fromiter(map(len, datas), np.int64, len(datas))
        headers = ustar_headers(names, sizes)
        if headers is None:
            raise _NotPlain
        blocks = BLOCK + (sizes + (BLOCK - 1)) // BLOCK * BLOCK
        ends = np.cumsum(blocks)
        rel = ends - blocks + BLOCK  # data offsets within the chunk
        self.buf = assemble(headers, datas, sizes, int(ends[-1]))  # members only: no end blocks
        fi, hs = np.array(first, np.int64), np.array(has_std, bool)
        last = fi + hs  # the std member, or the mean member when there is none
        meta = fi + 2 + hs
        self.keys = [k for k, _ in items]
        self.means = [e.mean for e in ents]
        self.contents = ents  # made into the column in finish()
        self.rel_start, self.rel_end = rel[fi], rel[last] + sizes[last]
        self.off = base + self.rel_start
        self.length = self.rel_end - self.rel_start
        self.mean_length = sizes[fi]
        self.std_offset = np.where(hs, rel[fi + 1] - rel[fi], -1)
        self.meta_offset, self.meta_length = base + rel[meta], sizes[meta]

    def finish(self, shard: _Shard) -> None:
        """Background, in chunk order: the rows' sha256 and CRC32C, their part of the index
        document, the shard's sha256 and channel sums over this chunk."""
        sha, crc = sample_checksums(self.buf, self.rel_start, self.rel_end)
        ents, self.contents = self.contents, []
        self.rows = RowBlock(self.keys, self.off, self.length, self.mean_length, self.std_offset,
                             [e.mean.shape for e in ents], [dtype_name(e.mean.dtype) for e in ents],
                             np.array(self.targets, np.int64), sha, [str(e.meta.get("content_sha256", "")) for e in ents],
                             self.meta_offset, self.meta_length, crc)
        self.index = index_samples_json(self.rows)
        shard.sha.update(self.buf)
        shard.sums.add(self.means)
        self.means = []


class _NotPlain(Exception):
    """A member tarfile writes in another header form (a name over 99 bytes, a size over 8 GiB):
    that shard is written by :func:`write_shard` instead (never for latentds' own keys)."""


class _Shard:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.packed = 0  # items[:packed] are in chunks
        self.base = 0  # shard bytes packed so far
        self.chunks: list[_Chunk] = []
        self.jobs: list[Future[None]] = []
        self.sha = hashlib.sha256()
        self.sums = ChannelSums()
        self.plain = True


class ShardPipeline:
    """``add`` samples in shard order, ``flush`` at each shard's end, ``results`` for the written
    shards in order (raises what a background job raised). Use as a context manager: leaving it
    waits for (and drops) unfinished work."""

    def __init__(self, backend: Any, *, chunk: int | None = None) -> None:
        self.backend = backend
        self.chunk = chunk or CHUNK
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentds-shards")
        self.done: list[Future[WrittenShard]] = []
        self.cur = _Shard()

    def __enter__(self) -> ShardPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        # futures hold shards' bytes, and a failed one its exception, whose traceback holds
        # this frame: drop them so nothing waits for the cycle collector
        self.done, self.cur = [], _Shard()

    def add(self, key: str, entry: Any) -> None:
        s = self.cur
        s.items.append((key, entry))
        if len(s.items) - s.packed >= self.chunk:
            self._pack(s)

    def _pack(self, s: _Shard) -> None:
        part = s.items[s.packed:]
        s.packed = len(s.items)
        if not part or not s.plain:
            return
        try:
            c = _Chunk(part, s.base)
        except (_NotPlain, UnicodeEncodeError):
            s.plain = False
            return
        s.base += len(c.buf)
        s.chunks.append(c)
        s.jobs.append(self.pool.submit(c.finish, s))

    def flush(self) -> None:
        """The current shard is complete: finish it in the background, start the next."""
        s = self.cur
        if not s.items:
            return
        self._pack(s)
        self.cur = _Shard()
        self.done.append(self.pool.submit(self._finish, s))
        if len(self.done) > IN_FLIGHT:  # bounded memory: wait for the oldest shard in flight
            self.done[-IN_FLIGHT - 1].result()

    def results(self) -> list[WrittenShard]:
        self.flush()
        return [f.result() for f in self.done]

    def _finish(self, s: _Shard) -> WrittenShard:
        for j in s.jobs:
            j.result()  # a failed chunk job raises here, at its shard
        if not s.plain:
            return write_shard(self.backend, s.items)
        s.items = []  # every chunk is packed and summed: the staging objects can go
        end = s.base + 2 * BLOCK
        tail = bytes(2 * BLOCK + (-end % RECORD))  # as tarfile closes an archive
        s.sha.update(tail)
        data = b"".join([c.buf for c in s.chunks] + [tail])
        s.chunks, cs = [], s.chunks
        for c in cs:
            c.buf = b""  # joined: one copy of the shard is enough
        digest = s.sha.hexdigest()
        name = f"{SHARD_PREFIX}{digest[:32]}{SHARD_SUFFIX}"
        rows = RowBlock([k for c in cs for k in c.rows.key],
                        *(np.concatenate([getattr(c.rows, f) for c in cs]) for f in
                          ("offset", "length", "mean_length", "std_offset")),
                        *([x for c in cs for x in getattr(c.rows, f)] for f in ("shape", "dtype")),
                        np.concatenate([c.rows.target for c in cs]), [x for c in cs for x in c.rows.sha256],
                        [x for c in cs for x in c.rows.content_sha256],
                        *(np.concatenate([getattr(c.rows, f) for c in cs]) for f in ("meta_offset", "meta_length", "crc32c")))
        stats = s.sums.result()
        index = index_json(name, len(data), digest, rows, stats, samples=", ".join(c.index for c in cs))
        self.backend.put(layout.shard(name), data)
        self.backend.put(layout.shard(layout.index_of(name)), index)
        return WrittenShard(name, rows, stats, len(data))
