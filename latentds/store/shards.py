"""Immutable latent shards: webdataset-layout tar files plus a per-shard index of byte offsets.

Why a tar in webdataset layout (``<key>.npy``, ``<key>.std.npy``, ``<key>.cls``, ``<key>.json``):

* variable latent shapes are fine (each member is a self-describing ``.npy``);
* a stock ``webdataset.WebDataset`` (and ``tar``) reads the shards as they are, no export;
* random access needs only the byte offset of a sample's data, which we record at write time,
  so a warm read is ONE ranged GET. The mean and std members are written next to each other,
  so one range covers both.

Members are written with fixed mtime/uid/mode, so the same samples give the same bytes, and the
shard name is a hash of its content: two compactors packing the same staging objects produce
the same object (harmless), and different content can never collide (docs/design.md invariant 3).
Keys are hex hashes, so they contain no dot (webdataset splits the key at the first dot).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from google_crc32c import Checksum as _Checksum
from google_crc32c import value as _crc32c_value

from .entries import Entry, canonical_json, canonical_metas
from ..errors import ShardError
from .npy import npy_bytes as _npy_bytes
from .npy import dtype_name, parse_npy
from .layout import INDEX_SUFFIX, KEY_NAME, SHARD_NAME, SHARD_PREFIX, SHARD_SUFFIX, check_shard_name
from .tarpack import Row, RowBlock, assemble, pack_into, index_json, layout_members, sample_checksums, tarinfo as _tarinfo, ustar_headers

__all__ = ["INDEX_SUFFIX", "KEY_NAME", "SHARD_NAME", "SHARD_PREFIX", "SHARD_SUFFIX", "TAR_HEADER", "Row",
    "ChannelSums", "build_shard", "channel_sums", "check_member", "combine_stats", "check_shard_name", "crc32c", "decode_sample", "index_document",
    "iter_tar_samples", "parse_npy", "shard_name", "WrittenShard", "write_shard"]

TAR_HEADER = 512  # a USTAR member header: build_shard writes one right before each member's data


def check_member(header: bytes, key: str | bytes, suffix: str, name: str) -> None:
    """The tar header right before a row's bytes must be the row's own member (``<key><suffix>``).

    Checksums alone cannot tell: two manifest rows swapped consistently (offsets and checksums)
    still verify, and each would serve the other's latent (issue 11, item 9)."""
    want = (key if isinstance(key, bytes) else key.encode()) + suffix.encode()
    if header[:len(want)] != want or header[len(want):len(want) + 1] not in (b"\0", b""):
        found = header[:100].split(b"\0", 1)[0].decode("latin1", "replace")
        raise ShardError(f"{name}: the bytes at this manifest row's offset are tar member {found!r}, not "
                         f"{want.decode()!r}: the manifest's rows are swapped or corrupt; `latentds verify` "
                         f"lists every such row")


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C (Castagnoli) of ``data``; hardware-accelerated in google-crc32c's C extension
    (~25 GB/s vs ~1.7 GB/s for sha256 here), so it can run on every warm read. It catches any
    accidental corruption (flipped bits, truncation, stale bytes); ``sha256`` stays the
    cryptographic checksum that ``latentds verify`` recomputes."""
    if type(data) is bytes:
        return _crc32c_value(data)
    # the extension refuses memoryviews but reads numpy views in place: no copy of a large map
    # (a 970 MB manifest generation at 10M rows), 8 MiB at a time
    arr = np.frombuffer(data, np.uint8) if len(memoryview(data)) else np.empty(0, np.uint8)
    if len(arr) <= 1 << 24:
        return _crc32c_value(arr)
    c = _Checksum()
    for s in range(0, len(arr), 1 << 23):
        c.update(arr[s:s + (1 << 23)])
    return int.from_bytes(c.digest(), "big")


_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads a closed archive to a multiple of this
_HEADER_TEMPLATE: tuple[bytes, int] | None = None  # (header of an empty name, size 0; its byte sum)


def _ustar_header(name: str, size: int) -> bytes:
    """The USTAR header ``tarfile`` writes for a member ``name`` of ``size`` bytes with the
    fixed fields of :func:`build_shard` (mode 0444, uid/gid 0, mtime 0, owner ``latentds``),
    byte for byte, without tarfile's per-field Python work: a template made by tarfile once,
    with name, size and checksum patched in (the checksum is the byte sum with its own field
    read as spaces: the template's sum, adjusted by the patched bytes only). Names longer than
    99 bytes (never ours: keys are 40 hex digits) go through tarfile itself."""
    global _HEADER_TEMPLATE
    raw = name.encode("ascii")
    if len(raw) > 99 or size >= 8 ** 11:
        return _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    if _HEADER_TEMPLATE is None:
        t = bytearray(_tarinfo("", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        t[148:156] = b"        "
        _HEADER_TEMPLATE = (bytes(t), sum(t) - sum(t[124:136]))  # name is all zeros: adds nothing
    template, base = _HEADER_TEMPLATE
    h = bytearray(template)
    h[0:len(raw)] = raw
    sz = b"%011o\0" % size
    h[124:136] = sz
    h[148:155] = b"%06o\0" % (base + sum(raw) + sum(sz))
    return bytes(h)


class _TarWriter:
    """Appends members the way ``tarfile.open(mode="w", format=USTAR_FORMAT)`` does (header,
    data, zero padding to 512; two zero blocks and padding to 10240 at the end), so shards keep
    their exact bytes and content-addressed names; ~10x less Python per member."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0
        self.last_header = b""

    def add(self, name: str, data: bytes) -> int:
        """Append one member; return the offset of its data in the archive."""
        header = self.last_header = _ustar_header(name, len(data))
        start = self.offset + len(header)
        pad = -len(data) % _BLOCK
        self.parts += (header, data, b"\0" * pad) if pad else (header, data)
        self.offset = start + len(data) + pad
        return start

    def close(self) -> bytes:
        end = self.offset + 2 * _BLOCK
        self.parts.append(b"\0" * (2 * _BLOCK + (-end % _RECORD)))
        return b"".join(self.parts)


def _member_bytes(e: Any, meta_b: bytes | None = None) -> tuple[bytes, bytes | None, bytes]:
    """The ``.npy`` bytes of mean and std and the metadata JSON a shard stores for ``e``: an
    :class:`~latentds.store.entries.Entry` is serialised; a checked staging object
    (:class:`~latentds.store.entries.Staged`) gives its stored metadata JSON where it is that
    very text already (compaction: no second ``json.dumps``)."""
    mean_b = getattr(e, "mean_npy", None) or _npy_bytes(e.mean)
    std_b = (getattr(e, "std_npy", None) or _npy_bytes(e.std)) if e.std is not None else None
    meta_b = meta_b or getattr(e, "meta_json", None) or canonical_json(e.meta).encode()
    return mean_b, std_b, meta_b


def build_shard(items: list[tuple[str, Any]], *, scratch: bytearray | None = None) -> tuple[Any, Sequence[Row]]:
    """Pack ``(key, entry)`` pairs, in the given order, into one tar; return bytes and rows
    (a :class:`~latentds.store.tarpack.RowBlock`: a sequence of :class:`Row` held as columns).
    An entry is an :class:`~latentds.store.entries.Entry` or a checked staging object
    (:class:`~latentds.store.entries.Staged`); both give the same bytes. All members at once
    (latentds.store.tarpack): headers as one matrix, one buffer, checksums over its slices.
    With ``scratch``, the shard is built in it and returned as a view valid until its next use
    (compaction: one buffer for all its shards)."""
    n = len(items)
    names: list[bytes] = []
    datas: list[Any] = []
    first = np.empty(n, np.int64)
    has_std = np.zeros(n, bool)
    shapes: list[tuple[int, ...]] = []
    dtypes: list[str] = []
    targets = np.empty(n, np.int64)
    contents: list[str] = []
    metas = canonical_metas([e for _, e in items]) or [None] * n
    try:
        for i, (key, e) in enumerate(items):
            mean_b, std_b, meta_b = _member_bytes(e, metas[i])
            kb = key.encode("ascii")
            first[i] = len(datas)
            names.append(kb + b".npy")
            datas.append(mean_b)
            if std_b is not None:
                has_std[i] = True
                names.append(kb + b".std.npy")
                datas.append(std_b)
            t = targets[i] = int(e.meta.get("target", -1))
            names += (kb + b".cls", kb + b".json")
            datas += (str(t).encode(), meta_b)
            shapes.append(e.mean.shape)  # a tuple of ints already
            dtypes.append(dtype_name(e.mean.dtype))
            contents.append(str(e.meta.get("content_sha256", "")))
    except UnicodeEncodeError:  # a key that is no tar name of ours: tarfile's own path
        return _build_shard_slow(items)
    sizes = np.fromiter(map(len, datas), np.int64, len(datas))
    headers = ustar_headers(names, sizes)
    if headers is None:
        return _build_shard_slow(items)
    data_off, total = layout_members(sizes)
    buf = assemble(headers, datas, sizes, total) if scratch is None else pack_into(scratch, headers, datas, data_off, total)
    off = data_off[first]
    last = first + has_std  # the std member, or the mean member when there is none
    end = data_off[last] + sizes[last]
    meta = first + 2 + has_std
    sha, crc = sample_checksums(buf, off, end)
    rows = RowBlock([k for k, _ in items], off, end - off, sizes[first], np.where(has_std, data_off[first + 1] - off, -1),
                    shapes, dtypes, targets, sha, contents, data_off[meta], sizes[meta], crc)
    return buf, rows


def _build_shard_slow(items: list[tuple[str, Any]]) -> tuple[bytes, list[Row]]:
    """One member at a time through tarfile's header writer (names over 99 bytes, sizes over
    8 GiB, non-ASCII keys: forms latentds never writes, kept exact anyway)."""
    tar = _TarWriter()
    rows: list[Row] = []
    for key, e in items:
        mean_b, std_b, meta_b = _member_bytes(e)
        off = tar.add(f"{key}.npy", mean_b)
        std_rel, end = -1, off + len(mean_b)
        sample = mean_b
        if std_b is not None:
            std_off = tar.add(f"{key}.std.npy", std_b)
            std_rel, end = std_off - off, std_off + len(std_b)
            # the ranged read covers mean, the std header block and std: the bytes as in the tar
            sample = b"".join((mean_b, b"\0" * (-len(mean_b) % _BLOCK), tar.last_header, std_b))
        target = int(e.meta.get("target", -1))
        tar.add(f"{key}.cls", str(target).encode())
        meta_off = tar.add(f"{key}.json", meta_b)
        assert len(sample) == end - off
        rows.append(Row(key, off, end - off, len(mean_b), std_rel, tuple(int(s) for s in e.mean.shape),
                        dtype_name(e.mean.dtype), target, hashlib.sha256(sample).hexdigest(),
                        str(e.meta.get("content_sha256", "")), meta_off, len(meta_b), crc32c(sample)))
    return tar.close(), rows


def shard_name(data: bytes) -> str:
    return f"{SHARD_PREFIX}{hashlib.sha256(data).hexdigest()[:32]}{SHARD_SUFFIX}"


def index_document(name: str, data: bytes, rows: Sequence[Row], stats: dict[str, Any], *, sha256: str | None = None
                   ) -> bytes:
    """The per-shard index: what the shard holds and where, written after the shard
    (``sha256``: the shard's, when the caller has it already)."""
    if isinstance(rows, RowBlock):  # the same bytes from the columns (latentds.store.tarpack)
        return index_json(name, len(data), sha256 or hashlib.sha256(data).hexdigest(), rows, stats)
    doc = {"shard": name, "bytes": len(data), "sha256": sha256 or hashlib.sha256(data).hexdigest(), "stats": stats,
           "samples": [{"key": r.key, "offset": r.offset, "length": r.length, "mean_length": r.mean_length,
                        "std_offset": r.std_offset, "shape": list(r.shape), "dtype": r.dtype, "target": r.target,
                        "sha256": r.sha256, "crc32c": r.crc32c, "content_sha256": r.content_sha256,
                        "meta_offset": r.meta_offset, "meta_length": r.meta_length} for r in rows]}
    return json.dumps(doc, sort_keys=True).encode()


@dataclass(frozen=True)
class WrittenShard:
    """A shard and its index as written by :func:`write_shard`: commit ``rows`` with
    ``ShardedStore.commit_rows([(w.name, r) for r in w.rows], {w.name: w.stats})``."""

    name: str
    rows: Sequence[Row]
    stats: dict[str, list[float]]
    nbytes: int


def write_shard(target: Any, items: list[tuple[str, Any]], *, scratch: bytearray | None = None) -> WrittenShard:
    """Pack ``(key, entry)`` pairs into one shard and write it, then its index, to ``target``
    (a :class:`~latentds.store.sharded.ShardedStore` or a namespace
    :class:`~latentds.store.backend.Backend`). The one shard writer: compaction, repair and
    bulk encoding all write shards here, so their bytes agree.

    Content-addressed: a shard of this name already there (a run killed before its commit) holds
    these very bytes. It is written again anyway (atomically; readers see the same bytes), so
    an old uncommitted shard gets a fresh age and ``latentds gc`` (grace period) cannot remove
    it before the commit that names it. ``scratch``: a buffer to build in, reused by the caller
    across shards (see :func:`build_shard`)."""
    from . import layout

    backend = getattr(target, "backend", target)
    data, rows = build_shard(items, scratch=scratch)
    if not backend.caps.local:
        data = bytes(data)  # object stores: one PUT of the bytes
    digest = hashlib.sha256(data).hexdigest()  # names the shard and goes into its index: once
    name = f"{SHARD_PREFIX}{digest[:32]}{SHARD_SUFFIX}"
    stats = channel_sums([e.mean for _, e in items])
    backend.put(layout.shard(name), data)
    backend.put(layout.shard(layout.index_of(name)), index_document(name, data, rows, stats, sha256=digest))
    return WrittenShard(name, rows, stats, len(data))


class ChannelSums:
    """Per-channel count, sum and sum of squares (float64) of means added in order, a batch at a
    time: bit for bit :func:`channel_sums` of all of them, however they are batched (each
    sample's sums are added to the running totals in sample order either way; tested)."""

    def __init__(self) -> None:
        self.c = 0
        self.s = self.ss = np.zeros(0, np.float64)
        self.count = 0

    def add(self, means: list[np.ndarray]) -> None:
        if not means:
            return
        if not self.count and not self.c:  # the first sample's channels, as channel_sums takes them
            self.c = int(means[0].shape[0])
            self.s, self.ss = np.zeros(self.c, np.float64), np.zeros(self.c, np.float64)
        c = self.c
        if len({(m.shape, m.dtype) for m in means}) == 1 and means[0].ndim:
            # one layout (the usual shard): per-sample sums for a chunk of samples at once, then added
            # in sample order (cumsum), so every bit equals the loop below (tested)
            step = max(1, (16 << 20) // max(1, means[0].size * 8))
            for a in range(0, len(means), step):
                x = np.stack(means[a:a + step]).reshape(len(means[a:a + step]), c, -1).astype(np.float64)
                self.s = np.cumsum(np.vstack([self.s[None], x.sum(axis=2)]), axis=0)[-1]
                self.ss = np.cumsum(np.vstack([self.ss[None], np.einsum("nij,nij->ni", x, x)]), axis=0)[-1]
                self.count += x.shape[2] * len(x)
            return
        for m in means:
            x = m.reshape(c, -1).astype(np.float64)
            self.s += x.sum(axis=1)
            self.ss += np.einsum("ij,ij->i", x, x)
            self.count += x.shape[1]

    def result(self) -> dict[str, list[float]]:
        return {"count": [self.count] * self.c, "sum": [float(v) for v in self.s],
                "sumsq": [float(v) for v in self.ss]}


def channel_sums(means: list[np.ndarray]) -> dict[str, list[float]]:
    """Per-channel count, sum and sum of squares (float64). Sums, not means, so shards combine
    exactly."""
    int(means[0].shape[0])  # no samples, or a 0-d mean: an error, as always
    acc = ChannelSums()
    acc.add(means)
    return acc.result()


def combine_stats(per_shard: Iterable[dict[str, list[float]]]) -> dict[str, Any]:
    """Per-channel mean and std over every committed shard."""
    tot: dict[str, np.ndarray] = {}
    for st in per_shard:
        for k in ("count", "sum", "sumsq"):
            v = np.asarray(st[k], dtype=np.float64)
            tot[k] = tot[k] + v if k in tot else v
    if not tot:
        return {}
    n = np.maximum(tot["count"], 1)
    mean = tot["sum"] / n
    var = np.maximum(tot["sumsq"] / n - mean * mean, 0.0)
    return {"channels": int(len(mean)), "count": [int(v) for v in tot["count"]], "mean": mean.tolist(),
            "std": np.sqrt(var).tolist()}


# -- reading -----------------------------------------------------------------------------------

def decode_sample(buf: bytes | bytearray, *, mean_length: int, std_offset: int, sha256: str, name: str,
                  verify: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (and std) from the bytes of one ranged read; ``name`` names shard and key in errors."""
    if verify and hashlib.sha256(buf).hexdigest() != sha256:
        raise ShardError(f"{name}: checksum mismatch, the shard is corrupt")
    mean = parse_npy(memoryview(buf)[:mean_length], name)
    std = parse_npy(memoryview(buf)[std_offset:], name) if std_offset >= 0 else None
    return mean, std


def iter_tar_samples(data: bytes, name: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Samples of a whole shard in order, grouped by key as webdataset does (for streaming)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            cur: str | None = None
            fields: dict[str, bytes] = {}
            for m in tar:
                if not m.isfile():
                    continue
                key, _, field = m.name.partition(".")
                if key != cur and cur is not None:
                    yield cur, fields
                    fields = {}
                cur = key
                f = tar.extractfile(m)
                fields[field] = f.read() if f is not None else b""
            if cur is not None:
                yield cur, fields
    except tarfile.TarError as exc:
        raise ShardError(f"{name}: unreadable tar ({exc}); the shard is truncated or corrupt") from exc
