"""The manifest: one Parquet row per sample, committed as a new generation, pointer written last.

Layout under ``<cache>/<namespace>/manifest/``::

    g-<time_ns>-<uuid>.parquet   one immutable generation: every committed sample
    CURRENT.json                 pointer {generation, path, sha256, rows, bytes}, written LAST

A generation is never rewritten; committing means writing a new generation and then replacing
the small pointer (atomic rename locally, one PUT on object stores). Readers follow the pointer
and check the generation's sha256, so a half-written or corrupted manifest is an error naming
the file, never a silent partial view. Parquet because 1M rows load in well under a second and
the columns (offsets, lengths) convert straight to numpy; lookups use a sorted fixed-width key
array and ``np.searchsorted`` instead of a Python dict (about 40 bytes per sample, not ~150).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
import uuid
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ManifestError
from . import layout
from .backend import Backend, CommitConflict
from .fsio import Location
from .layout import GENERATION_NAME, KEY_NAME, POINTER, SHARD_NAME
from .shards import Row, combine_stats  # noqa: F401  (re-exported: manifest meta)

__all__ = ["GENERATION_NAME", "LEGACY_SCHEMA", "PLAN_COLUMNS", "POINTER", "SCHEMA", "CommitConflict",
    "Manifest", "ManifestStore", "combine_stats", "new_generation", "rows_table", "upgrade"]

#: Columns of :meth:`Manifest.read_plan`: shard id (index into ``Manifest.shards``), absolute
#: offset and length of the ranged read, offsets of the mean and std data (after their ``.npy``
#: headers) within the read (-1: no std), CRC32C of the read (-1: verify with sha256), layout id.
PLAN_COLUMNS = ("shard", "offset", "length", "mean_data", "std_data", "crc32c", "layout")
Layout = tuple[np.dtype, tuple[int, ...], int]  # dtype, shape, element count
#: What opening a generation decodes; every other column is decoded on first use.
READER_COLUMNS = ("key", "shard", "offset", "length", "mean_length", "std_offset", "target", "crc32c")
META_KEY = b"latentds"
_HEX = np.zeros(256, bool)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = True

SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("length", pa.int64()),
    ("mean_length", pa.int64()), ("std_offset", pa.int64()), ("shape", pa.list_(pa.int32())),
    ("dtype", pa.string()), ("target", pa.int64()), ("sha256", pa.string()), ("content_sha256", pa.string()),
    ("meta_offset", pa.int64()), ("meta_length", pa.int64()), ("crc32c", pa.int64()),
])
#: Generations written before the per-row CRC32C column; still read (rows verify with sha256).
LEGACY_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "crc32c"])


def upgrade(table: pa.Table) -> pa.Table:
    """A table in :data:`SCHEMA`: a legacy generation gets ``crc32c = -1`` (unknown) on every
    row, so its rows keep being verified with sha256 and merge with new rows unchanged."""
    if table.schema.equals(LEGACY_SCHEMA):
        table = table.append_column(SCHEMA.field("crc32c"), pa.array(np.full(table.num_rows, -1, np.int64)))
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"unexpected columns {table.schema.names}")
    return table


def _reader(raw: bytes) -> pa.BufferReader:
    """Every Parquet read here goes through ``pa.BufferReader`` (with ``use_threads=False`` on
    ``pq.read_table``), never ``io.BytesIO``: reading a Python file leaves clean-up work on
    Arrow's I/O threads that takes the GIL after the call returns, and a process exiting right
    then aborts with SIGABRT ("terminate called without an active exception", apache/arrow#33975,
    #34314). Same as :mod:`latentds.sources`; guarded by tests/test_manifest_exit.py."""
    return pa.BufferReader(raw)


def new_generation() -> str:
    """Sortable by time, unique per writer (two compactors in the same nanosecond still differ)."""
    return f"g-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


class Manifest:
    """A committed generation, loaded for lookups.

    Opening keeps only what a reader needs: a sorted fixed-width key array (``np.searchsorted``,
    no dict of a million strings), the shard names once plus an int32 shard id per row, and the
    int columns of a ranged read. The Parquet bytes are kept (the generation is immutable and
    may be collected from the store later), and anything else (``table``: sha256s, content
    hashes, metadata offsets, shapes) is decoded from them only when first asked for by
    compaction, ``verify``, ``export``, ``decode`` or a legacy row. 1M rows: ~0.2 GB, not ~0.6."""

    def __init__(self, generation: str, source: pa.Table | bytes, meta: dict[str, Any] | None = None,
                 *, name: str | None = None) -> None:
        self.generation = generation
        self.meta: dict[str, Any] = dict(meta or {})
        self._raw = source if isinstance(source, bytes) else None
        self._table: pa.Table | None = None if isinstance(source, bytes) else upgrade(source)
        self._lazy: dict[str, pa.ChunkedArray] = {}
        self._plan: np.ndarray | None = None
        self._layouts: list[Layout] = []
        pf = pq.ParquetFile(_reader(self._raw)) if self._raw is not None else None
        have = set(pf.schema_arrow.names if pf is not None else READER_COLUMNS)

        def col(name: str) -> pa.ChunkedArray:
            # one column at a time, converted and dropped before the next: a lower peak RSS
            if self._table is not None:
                return self._table.column(name)
            assert pf is not None
            return pq.read_table(_reader(self._raw), columns=[name], use_threads=False,
                                 read_dictionary=["shard"] if name == "shard" else None).column(name)

        self._rows = pf.metadata.num_rows if pf is not None else self._table.num_rows
        keys = _fixed_width(col("key"))
        # generations are committed sorted by key: then the order is the identity, stored as None
        if len(keys) > 1 and not bool(np.all(keys[:-1] <= keys[1:])):
            self._order: np.ndarray | None = np.argsort(keys, kind="stable")
            keys = keys[self._order]
        else:
            self._order = None
        self._keys = keys
        self._cols: dict[str, np.ndarray] = {c: _int_column(col(c)) for c in
                                             ("offset", "length", "mean_length", "std_offset", "target")}
        self._cols["crc32c"] = (_int_column(col("crc32c")) if "crc32c" in have
                                else np.full(self._rows, -1, np.int64))
        self._shards, self._cols["shard"] = _dictionary(col("shard"))
        # Names become paths (reads, verify, gc, export, compact): every one is checked here, once
        # per generation, against the exact form latentds writes (issue 11, item 4).
        where = name or f"manifest generation {generation}"
        bad = [s for s in self._shards if not SHARD_NAME.fullmatch(s)]
        if bad:
            raise ManifestError(f"{where}: names shard {bad[0][:80]!r}, which is not a shard name "
                                f"(shard-<32 hex digits>.tar); refused, the manifest is corrupt or crafted (such a "
                                f"name could reach outside the cache). See docs/store.md, 'Recovering'")
        if len(keys) and (keys.dtype.itemsize != 40 or not _HEX[keys.view(np.uint8)].all()):
            odd = next((k for k in keys.tolist() if not KEY_NAME.fullmatch(k.decode("latin1"))), b"?")
            raise ManifestError(f"{where}: holds key {odd[:80]!r}, which is not a sample key (40 hex digits); "
                                f"refused, the manifest is corrupt or crafted")
        self._sha: np.ndarray | None = None
        self._inv: np.ndarray | None = None
        pa.default_memory_pool().release_unused()  # decode scratch back to the OS, not kept in RSS

    @property
    def table(self) -> pa.Table:
        """The whole generation (every column), decoded on first use."""
        if self._table is None:
            assert self._raw is not None
            self._table = upgrade(pq.read_table(_reader(self._raw), use_threads=False).replace_schema_metadata(None))
        return self._table

    def column(self, name: str) -> pa.ChunkedArray:
        """One column, decoded on its own on first use (cheaper than :attr:`table`)."""
        if self._table is not None:
            return self._table.column(name)
        col = self._lazy.get(name)
        if col is None:
            assert self._raw is not None
            have = pq.read_schema(_reader(self._raw)).names
            if name in have:
                col = pq.read_table(_reader(self._raw), columns=[name], use_threads=False).column(name)
            else:
                col = self.table.column(name)  # added by upgrade() for legacy generations
            self._lazy[name] = col
        return col

    def __len__(self) -> int:
        return self._rows

    @property
    def shards(self) -> list[str]:
        return list(self._shards)

    def find(self, key: str) -> int:
        """Row number of ``key``, or -1."""
        k = key.encode()
        i = int(np.searchsorted(self._keys, k))
        if i < len(self._keys) and self._keys[i] == k:
            return int(self._order[i]) if self._order is not None else i
        return -1

    def find_many(self, keys: Sequence[str]) -> np.ndarray:
        """Rows of ``keys`` (int64, -1 where absent): one vectorised search for many keys."""
        k = np.asarray([x.encode() for x in keys])  # its own width: a longer key can never match
        if not len(self._keys) or not len(k):
            return np.full(len(k), -1, np.int64)
        i = np.searchsorted(self._keys, k)
        ok = i < len(self._keys)
        ok[ok] = self._keys[i[ok]] == k[ok]
        rows = np.where(ok, i, -1).astype(np.int64)
        if self._order is not None:
            rows[ok] = self._order[i[ok]]
        return rows

    def locate(self, row: int) -> tuple[str, int, int, int, int, str, int]:
        """(shard, offset, length, mean_length, std_offset, sha256, target) of one row."""
        c = self._cols
        if self._sha is None:  # only the sha256-checked paths (legacy rows, verify, export) need it
            self._sha = _fixed_width(self.column("sha256"))
        return (self._shards[int(c["shard"][row])], int(c["offset"][row]), int(c["length"][row]),
                int(c["mean_length"][row]), int(c["std_offset"][row]), self._sha[row].decode(), int(c["target"][row]))

    def crc32c_at(self, row: int) -> int:
        """CRC32C of the row's ranged read; -1 when unknown (a generation written before it)."""
        return int(self._cols["crc32c"][row])

    def key_at(self, row: int) -> str:
        return str(self.column("key")[row].as_py())

    def key_bytes(self, row: int) -> bytes:
        """The key of ``row`` as bytes from the in-memory key index (no Arrow access: warm path)."""
        if self._order is None:
            return bytes(self._keys[row])
        if self._inv is None:
            inv = np.empty_like(self._order)
            inv[self._order] = np.arange(len(self._order))
            self._inv = inv
        return bytes(self._keys[int(self._inv[row])])

    def read_plan(self) -> tuple[np.ndarray, list[Layout]]:
        """Per-row read plan for the warm path: an ``(rows, 7)`` int64 array with columns
        ``PLAN_COLUMNS`` plus the distinct ``(dtype, shape, count)`` layouts it refers to.

        Built once per generation, vectorised, on the first planned read (not at open, so
        opening a big manifest stays cheap). A warm read is then one ``plan[row].tolist()``
        instead of parsing ``.npy`` headers: the data offsets follow from the lengths, because
        a ``.npy`` member is its header followed by exactly ``count * itemsize`` bytes. Rows
        without a CRC32C (legacy generations) or whose lengths do not add up get ``crc32c = -1``
        and take the fully parsed, sha256-checked path instead."""
        if self._plan is None:
            self._plan, self._layouts = _build_plan(self.column("dtype"), self.column("shape"), self._cols)
            for c in ("dtype", "shape"):
                self._lazy.pop(c, None)
        return self._plan, self._layouts

    def keys(self) -> set[str]:
        return set(self.column("key").to_pylist())

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.meta.get("stats") or {})


def _build_plan(dtype_col: pa.ChunkedArray, shape_col: pa.ChunkedArray, cols: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, list[Layout]]:
    n = len(dtype_col)
    dt = dtype_col.combine_chunks().dictionary_encode()
    dt_idx = dt.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    dt_names = dt.dictionary.to_pylist()
    shape = shape_col.combine_chunks()
    lens = pc.list_value_length(shape).to_numpy(zero_copy_only=False)
    flat = shape.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    if n == 0 or (lens == lens[0]).all():
        key = np.column_stack([dt_idx, flat.reshape(n, int(lens[0]) if n else 0)])
        del flat
        if n and (key == key[0]).all():  # fixed-size latents, the common case: skip the sort
            uniq, inv = key[:1], np.zeros(n, np.int64)
        else:
            uniq, inv = np.unique(key, axis=0, return_inverse=True)
        distinct = [(dt_names[int(u[0])], tuple(int(v) for v in u[1:])) for u in uniq]
        inv = inv.reshape(-1)
        del key
    else:  # ragged ndim (rare): group in Python
        ids: dict[tuple[str, tuple[int, ...]], int] = {}
        starts = np.concatenate([[0], np.cumsum(lens)])
        inv = np.array([ids.setdefault((dt_names[int(d)], tuple(flat[starts[i]:starts[i + 1]].tolist())), len(ids))
                        for i, d in enumerate(dt_idx)], dtype=np.int64)
        distinct = list(ids)
    layouts: list[Layout] = []
    nbytes = np.empty(len(distinct), np.int64)
    for j, (name, shp) in enumerate(distinct):
        try:
            dtype = np.dtype(name)
            ok = not dtype.hasobject
        except TypeError:
            dtype, ok = np.dtype(np.uint8), False
        count = math.prod(shp)
        layouts.append((dtype, shp, count))
        nbytes[j] = count * dtype.itemsize if ok else -(1 << 40)  # impossible: forces the slow path
    nb = nbytes[inv]
    mean_len, std_off, length = cols["mean_length"], cols["std_offset"], cols["length"]
    mean_data = mean_len - nb
    std_data = np.where(std_off >= 0, length - nb, -1)
    # a .npy header is at least 10 bytes; anything else is not what compaction wrote
    sound = (mean_data >= 10) & np.where(std_off >= 0, (std_off >= mean_len) & (std_data >= std_off + 10),
                                         length == mean_len)
    plan = np.empty((n, len(PLAN_COLUMNS)), np.int64)
    plan[:, 0] = cols["shard"]
    plan[:, 1] = cols["offset"]
    plan[:, 2] = length
    plan[:, 3] = np.where(sound, mean_data, 0)
    plan[:, 4] = np.where(sound, std_data, -1)
    plan[:, 5] = np.where(sound, cols["crc32c"], -1)
    plan[:, 6] = inv
    return plan, layouts


def _fixed_width(col: pa.ChunkedArray) -> np.ndarray:
    """A string column as a numpy ``S<n>`` array. Keys and checksums are fixed-length hex, so
    each chunk's Arrow data buffer already is that array: copy it chunk by chunk into one
    array instead of building 1M Python strings (or concatenating the chunks first)."""
    views = []
    for arr in col.chunks:
        m = len(arr)
        if not m:
            continue
        if arr.null_count or not pa.types.is_string(arr.type):
            return col.to_numpy().astype("S64")  # unexpected layout: the slow, general way
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=m + 1, offset=arr.offset * 4)
        widths = np.diff(offsets)
        if not (widths == widths[0]).all() or widths[0] <= 0 or (views and widths[0] != views[0][1]):
            return col.to_numpy().astype("S64")
        views.append((np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]], int(widths[0])))
    if not views:
        return np.empty(0, "S64")
    out = np.empty(len(col), f"S{views[0][1]}")
    flat = out.view(np.uint8)
    pos = 0
    for data, _ in views:
        flat[pos:pos + len(data)] = data
        pos += len(data)
    return out


def _int_column(col: pa.ChunkedArray) -> np.ndarray:
    """An int column as one numpy array (a copy: the Arrow buffers can then be released)."""
    out = np.empty(len(col), np.int64)
    pos = 0
    for arr in col.chunks:
        out[pos:pos + len(arr)] = arr.to_numpy(zero_copy_only=False)
        pos += len(arr)
    return out


def _dictionary(col: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Distinct values and an int32 index per row (a shard name is repeated ~4096 times)."""
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    col = col.unify_dictionaries()
    if col.num_chunks == 0:
        return [], np.empty(0, np.int32)
    names = [str(v) for v in col.chunk(0).dictionary.to_pylist()]
    idx = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks]).astype(np.int32)
    return names, idx


def rows_table(rows: list[tuple[str, Row]]) -> pa.Table:
    """A table from ``(shard name, row)`` pairs."""
    cols: dict[str, list[Any]] = {n: [] for n in SCHEMA.names}
    for shard, r in rows:
        cols["key"].append(r.key)
        cols["shard"].append(shard)
        for c in ("offset", "length", "mean_length", "std_offset", "dtype", "target", "sha256", "content_sha256",
                  "meta_offset", "meta_length", "crc32c"):
            cols[c].append(getattr(r, c))
        cols["shape"].append(list(r.shape))
    return pa.Table.from_pydict(cols, schema=SCHEMA)


class ManifestStore:
    """Reads and commits manifest generations of one namespace (a :class:`Backend` on its root)."""

    def __init__(self, backend: Backend | Location) -> None:
        self.backend = backend if isinstance(backend, Backend) else Backend(backend.url, backend.storage_options)

    @property
    def location(self) -> Location:
        return self.backend.location

    @property
    def pointer_path(self) -> str:
        return self.backend.path(_POINTER_REL)

    def generation_path(self, generation: str) -> str:
        return self.backend.path(layout.generation(generation))

    def read_pointer(self) -> dict[str, Any] | None:
        """The committed pointer, ``None`` when nothing was ever committed."""
        try:
            raw = self.backend.get(_POINTER_REL)
        except FileNotFoundError:
            return None
        return self._parse_pointer(raw)

    def _parse_pointer(self, raw: bytes) -> dict[str, Any]:
        path = self.pointer_path
        try:
            ptr = json.loads(raw)
            if not isinstance(ptr, dict) or not ptr.get("generation") or not ptr.get("sha256"):
                raise ValueError("missing generation or sha256")
            if not isinstance(ptr["generation"], str) or not GENERATION_NAME.fullmatch(ptr["generation"]):
                raise ValueError(f"generation {str(ptr['generation'])[:80]!r} is not a generation name "
                                 f"(g-<20 digits>-<8 hex digits>)")
        except ValueError as exc:
            raise ManifestError(f"{path}: corrupt manifest pointer ({exc}); `latentds compact` re-points it at "
                                f"the newest readable generation and commits a fresh one; `latentds verify` "
                                f"lists what is intact") from exc
        return ptr

    def load(self, ptr: dict[str, Any] | None = None) -> Manifest | None:
        """The committed manifest (``None`` when none was committed); errors name the file."""
        ptr = ptr if ptr is not None else self.read_pointer()
        if ptr is None:
            return None
        rel = layout.generation(str(ptr["generation"]))
        path = self.backend.path(rel)
        try:
            raw = self.backend.get(rel)
        except FileNotFoundError:
            raise ManifestError(f"{path}: manifest generation named by {POINTER} is missing") from None
        if not raw:
            raise ManifestError(f"{path}: manifest is empty (0 bytes)")
        if hashlib.sha256(raw).hexdigest() != ptr["sha256"]:
            raise ManifestError(f"{path}: manifest checksum mismatch ({len(raw)} bytes); it is truncated or corrupt")
        return self._parse(ptr, path, raw)

    def _parse(self, ptr: dict[str, Any], path: str, raw: bytes) -> Manifest:
        if not raw:
            raise ManifestError(f"{path}: manifest is empty (0 bytes)")
        try:
            schema = pq.read_schema(_reader(raw))
            meta = json.loads((schema.metadata or {}).get(META_KEY, b"{}"))
            schema = schema.remove_metadata()
            if not (schema.equals(SCHEMA) or schema.equals(LEGACY_SCHEMA)):
                raise ValueError(f"unexpected columns {schema.names}")
            return Manifest(str(ptr["generation"]), bytes(raw), meta, name=path)
        except (pa.ArrowException, ValueError) as exc:
            raise ManifestError(f"{path}: unreadable manifest ({exc})") from exc

    def newest_readable(self) -> tuple[dict[str, Any], Manifest] | None:
        """The newest generation file that reads as a sound manifest, with a pointer for it; for
        recovering from a lost or corrupt ``CURRENT.json``. A generation is written before the
        pointer that names it, so the newest readable one holds every committed row (or more:
        rows of a compaction killed before its pointer write, whose shards were written first)."""
        names = sorted((g for g in (layout.generation_of(rel.rsplit("/", 1)[-1])
                                    for rel in self.backend.list(layout.MANIFEST)) if g), reverse=True)
        for gen in names:
            rel = layout.generation(gen)
            try:
                raw = self.backend.get(rel)
                ptr = {"generation": gen, "path": rel, "sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}
                m = self._parse(ptr, self.backend.path(rel), raw)
                m.table  # every column decodes
            except (FileNotFoundError, ManifestError, pa.ArrowException, ValueError):
                continue
            return dict(ptr, rows=len(m)), m
        return None

    @property
    def conditional(self) -> bool:
        """Whether pointer commits are a true compare-and-swap (local disk: ``flock`` around
        check + rename; S3: ``If-None-Match: *`` / ``If-Match: <ETag>``). Elsewhere (memory://,
        other object stores) the pointer is replaced after a check, and the callers' re-read
        of the pointer just before committing (merge and retry) narrows, but does not close,
        the race. See :class:`~latentds.store.backend.Capabilities`."""
        return self.backend.caps.conditional

    def commit(self, table: pa.Table, meta: dict[str, Any], *, expected: Any = ...) -> dict[str, Any]:
        """Write a new generation, then the pointer (last). Returns the new pointer.

        ``expected``: the pointer the caller merged over (``None``: nothing was committed). With
        it, the pointer is only replaced if it still names that generation, and
        :class:`CommitConflict` is raised otherwise (the caller merges and retries)."""
        generation = new_generation()
        rel = layout.generation(generation)
        table = upgrade(table).sort_by("key")  # readers' key index is then built by a (near) no-op sort
        t = table.replace_schema_metadata({META_KEY: json.dumps(dict(meta, generation=generation)).encode()})
        buf = io.BytesIO()
        pq.write_table(t, buf, compression="zstd")
        data = buf.getvalue()
        self.backend.put(rel, data)
        ptr = {"generation": generation, "path": rel,
               "sha256": hashlib.sha256(data).hexdigest(), "rows": table.num_rows, "bytes": len(data)}
        body = json.dumps(ptr, sort_keys=True).encode()
        if expected is ...:
            self.backend.put(_POINTER_REL, body)
            return ptr
        want = (expected or {}).get("generation")

        def still_expected(raw: bytes | None) -> bool:
            return (self._parse_pointer(raw)["generation"] if raw is not None else None) == want

        self.backend.put_if(_POINTER_REL, body, still_expected)
        return ptr


_POINTER_REL = f"{layout.MANIFEST}/{POINTER}"
