"""A whole shard packed at once: the USTAR headers of every member made as one numpy matrix,
members placed into one preallocated buffer, and the shard's rows kept as columns
(:class:`RowBlock`) instead of one Python object per sample.

The bytes are exactly what ``tarfile.open(mode="w", format=USTAR_FORMAT)`` writes for the same
members with the fixed fields of :func:`latentds.store.shards.build_shard` (mode 0444, uid/gid
0, mtime 0, owner ``latentds``): a header made by tarfile once is the template, and each
member's name, size and checksum are patched in (the checksum is the byte sum with its own field
read as spaces, so the template's sum plus the patched bytes). tests/test_store_commit.py
compares shards with tarfile's output. Why: compaction packs one small sample per staging
object, and building four headers per sample in Python was a fifth of its CPU (issue 15).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, overload

import numpy as np
from google_crc32c import value as _crc32c_value

__all__ = ["BLOCK", "RECORD", "Row", "RowBlock", "assemble", "index_json", "index_samples_json", "pack_into", "sample_checksums", "layout_members", "tarinfo", "template", "ustar_headers"]

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads a closed archive to a multiple of this
_TEMPLATE: tuple[np.ndarray, int] | None = None
_OCT11 = 3 * np.arange(10, -1, -1, dtype=np.int64)  # shifts of the 11 octal digits of a size
_OCT6 = 3 * np.arange(5, -1, -1, dtype=np.int64)


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o444, 0, 0
    info.uname = info.gname = "latentds"
    return info


def template() -> tuple[np.ndarray, int]:
    """tarfile's header for an empty name of size 0, checksum field as spaces, and its byte sum
    (name and size fields are zeros in it: patching them adds their own bytes only)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        t = bytearray(tarinfo("", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        t[148:156] = b"        "
        t[124:136] = bytes(12)
        _TEMPLATE = (np.frombuffer(bytes(t), np.uint8), sum(t))
    return _TEMPLATE


def ustar_headers(names: Sequence[bytes], sizes: np.ndarray) -> np.ndarray | None:
    """The headers of members ``names`` (ASCII) of ``sizes`` bytes as an ``(m, 512)`` uint8
    matrix; ``None`` when a name is longer than 99 bytes or a size needs more than 11 octal
    digits (tarfile then writes other header forms: the caller makes those one by one)."""
    m = len(names)
    if m and (max(map(len, names)) > 99 or int(sizes.max()) >= 8 ** 11):
        return None
    tmpl, base = template()
    h = np.empty((m, BLOCK), np.uint8)
    h[:] = tmpl
    if m:  # the name field: the names NUL-padded to 100 bytes, as one fixed-width array
        h[:, 0:100] = np.array(names, "S100").view(np.uint8).reshape(m, 100)
    h[:, 124:135] = ((sizes[:, None] >> _OCT11) & 7) + 48
    h[:, 135] = 0
    chk = base + h[:, 0:100].sum(axis=1, dtype=np.int64) + h[:, 124:136].sum(axis=1, dtype=np.int64)
    h[:, 148:154] = ((chk[:, None] >> _OCT6) & 7) + 48
    h[:, 154] = 0  # "%06o\0", then the template's space at 155: as tarfile writes it
    return h


def layout_members(sizes: np.ndarray) -> tuple[np.ndarray, int]:
    """Data offsets of members of ``sizes`` bytes written back to back (header, data, zero
    padding to 512), and the archive's total size (two zero blocks, padding to 10240)."""
    blocks = BLOCK + (sizes + (BLOCK - 1)) // BLOCK * BLOCK
    ends = np.cumsum(blocks)
    data_off = ends - blocks + BLOCK
    end = int(ends[-1]) if len(ends) else 0
    end += 2 * BLOCK
    return data_off, end + (-end % RECORD)


@dataclass(frozen=True)
class Row:
    """Where one sample lives in a shard; becomes one manifest row."""

    key: str
    offset: int          # absolute byte offset of the mean ``.npy`` data in the shard
    length: int          # bytes from ``offset`` through the end of the std ``.npy`` (or mean)
    mean_length: int     # bytes of the mean ``.npy``
    std_offset: int      # offset of the std ``.npy`` relative to ``offset``; -1 when none
    shape: tuple[int, ...]
    dtype: str
    target: int
    sha256: str          # of the ``length`` bytes at ``offset``: what a reader fetches
    content_sha256: str  # of the source file, taken at encode time
    meta_offset: int     # absolute offset of the ``.json`` member (for ``decode`` and ``verify``)
    meta_length: int
    crc32c: int = -1     # CRC32C of the same bytes as ``sha256``: the cheap per-read check; -1 unknown


@dataclass
class RowBlock(Sequence[Any]):
    """The rows of one shard as columns (what :class:`~latentds.store.shards.Row` holds, one
    list or array per field). A sequence of ``Row``: indexing or iterating makes them; the
    manifest and the shard index read the columns directly."""

    key: list[str]
    offset: np.ndarray
    length: np.ndarray
    mean_length: np.ndarray
    std_offset: np.ndarray
    shape: list[tuple[int, ...]]
    dtype: list[str]
    target: np.ndarray
    sha256: list[str]
    content_sha256: list[str]
    meta_offset: np.ndarray
    meta_length: np.ndarray
    crc32c: np.ndarray

    def __len__(self) -> int:
        return len(self.key)

    def _row(self, i: int) -> Row:
        return Row(self.key[i], int(self.offset[i]), int(self.length[i]), int(self.mean_length[i]),
                   int(self.std_offset[i]), self.shape[i], self.dtype[i], int(self.target[i]), self.sha256[i],
                   self.content_sha256[i], int(self.meta_offset[i]), int(self.meta_length[i]), int(self.crc32c[i]))

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._row(i)

    def __iter__(self) -> Iterator[Any]:
        return (self._row(i) for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]


_ZEROS = [bytes(p) for p in range(BLOCK)]


def assemble(headers: np.ndarray, datas: list[Any], sizes: np.ndarray, total: int) -> bytes:
    """The archive: per member its header row, its data, zeros to the next 512, then the end
    blocks; one ``join`` (one copy of each member, no zero-filled buffer first)."""
    m = len(datas)
    hv = memoryview(headers.tobytes())
    parts: list[Any] = [b""] * (3 * m + 1)
    parts[0:3 * m:3] = [hv[i:i + BLOCK] for i in range(0, m * BLOCK, BLOCK)]
    parts[1:3 * m:3] = datas
    parts[2:3 * m:3] = [_ZEROS[p] for p in ((-sizes) % BLOCK).tolist()]
    body = int(BLOCK * m + ((sizes + (BLOCK - 1)) // BLOCK * BLOCK).sum())
    parts[3 * m] = bytes(total - body)
    return b"".join(parts)


def pack_into(scratch: bytearray, headers: np.ndarray, datas: list[Any], data_off: np.ndarray, total: int
              ) -> memoryview:
    """The archive written into ``scratch`` (grown when too small; reused across the shards of
    one compaction, so its pages are touched once, not once per shard: fresh 64 MB buffers
    cost more in page faults than the copies themselves). The view is valid until the next
    call with the same scratch."""
    if len(scratch) < total:
        scratch.extend(bytes(total - len(scratch)))
    mv = memoryview(scratch)[:total]
    arr = np.frombuffer(mv, np.uint8)
    arr[:] = 0  # padding and end blocks
    arr.reshape(-1, BLOCK)[data_off // BLOCK - 1] = headers
    for o, d in zip(data_off.tolist(), datas):
        mv[o:o + len(d)] = d
    return mv


def sample_checksums(buf: Any, starts: np.ndarray, ends: np.ndarray) -> tuple[list[str], np.ndarray]:
    """sha256 (hex) and CRC32C of each ``buf[start:end]``: the bytes a reader's ranged read
    fetches, hashed in place (no copy per sample)."""
    mv = memoryview(buf)
    arr = np.frombuffer(buf, np.uint8)
    sha = [hashlib.sha256(mv[a:b]).hexdigest() for a, b in zip(starts.tolist(), ends.tolist())]
    crc = np.fromiter((_crc32c_value(arr[a:b]) for a, b in zip(starts.tolist(), ends.tolist())), np.int64, len(sha))
    return sha, crc


_ROW = ('{"content_sha256": %s, "crc32c": %d, "dtype": %s, "key": %s, "length": %d, "mean_length": %d, '
        '"meta_length": %d, "meta_offset": %d, "offset": %d, "sha256": %s, "shape": [%s], "std_offset": %d, '
        '"target": %d}')


def index_samples_json(rows: RowBlock) -> str:
    """The rows' part of the index document: their JSON objects joined by ``", "`` (a shard's
    rows can be formatted a chunk at a time and the parts joined the same way)."""
    enc = json.encoder.encode_basestring_ascii  # json.dumps' own string encoder (ensure_ascii)
    cols = zip(rows.content_sha256, rows.crc32c.tolist(), rows.dtype, rows.key, rows.length.tolist(),
               rows.mean_length.tolist(), rows.meta_length.tolist(), rows.meta_offset.tolist(), rows.offset.tolist(),
               rows.sha256, rows.shape, rows.std_offset.tolist(), rows.target.tolist())
    return ", ".join(_ROW % (enc(c), crc, enc(dt), enc(k), ln, ml, mtl, mto, off, enc(sh), ", ".join(map(str, shp)),
                             so, tg)
                     for c, crc, dt, k, ln, ml, mtl, mto, off, sh, shp, so, tg in cols)


def index_json(name: str, nbytes: int, sha256: str, rows: RowBlock, stats: dict[str, Any], *,
               samples: str | None = None) -> bytes:
    """The shard index document, byte for byte what ``json.dumps(doc, sort_keys=True)`` writes
    for it (``shards.index_document``), one formatted line per sample instead of a dict each
    (``samples``: :func:`index_samples_json` of ``rows``, when the caller made it already)."""
    enc = json.encoder.encode_basestring_ascii
    if samples is None:
        samples = index_samples_json(rows)
    doc = (f'{{"bytes": {json.dumps(nbytes)}, "samples": [{samples}], "sha256": {enc(sha256)}, '
           f'"shard": {enc(name)}, "stats": {json.dumps(stats, sort_keys=True)}}}')
    return doc.encode()
