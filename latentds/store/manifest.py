"""The manifest: one Parquet row per sample, committed as a new generation, pointer written last.

Layout under ``<cache>/<namespace>/manifest/``::

    g-<time_ns>-<uuid>.parquet   one immutable generation: every committed sample
    CURRENT.json                 pointer {generation, path, sha256, crc32c, rows, bytes}, written LAST

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
import mmap
import os
import tempfile
import time
import uuid
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ManifestError
from . import layout
from .backend import Backend, CommitConflict
from .fsio import Location
from .layout import GENERATION_NAME, KEY_NAME, POINTER, SHARD_NAME
from .columns import PLAN_COLUMNS, Layout, build_plan, dictionary, fixed_width, int_column
from .keys import STORED_KEY, KeyIndex, all_hex, hex_keys, read_key_column, stored_keys
from .shards import Row, combine_stats, crc32c  # noqa: F401  (re-exported: manifest meta)
from .tarpack import RowBlock

__all__ = ["GENERATION_NAME", "LEGACY_SCHEMA", "PLAN_COLUMNS", "POINTER", "SCHEMA", "STORED_SCHEMA", "CommitConflict",
    "Manifest", "ManifestStore", "combine_stats", "new_generation", "rows_table", "shard_table", "upgrade"]

#: What opening a generation decodes; every other column is decoded on first use.
READER_COLUMNS = ("key", "shard", "offset", "length", "mean_length", "std_offset", "target", "crc32c")
META_KEY = b"latentds"

SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("length", pa.int64()),
    ("mean_length", pa.int64()), ("std_offset", pa.int64()), ("shape", pa.list_(pa.int32())),
    ("dtype", pa.string()), ("target", pa.int64()), ("sha256", pa.string()), ("content_sha256", pa.string()),
    ("meta_offset", pa.int64()), ("meta_length", pa.int64()), ("crc32c", pa.int64()),
])
#: Generations written before the per-row CRC32C column; still read (rows verify with sha256).
LEGACY_SCHEMA = pa.schema([f for f in SCHEMA if f.name != "crc32c"])
#: What a generation holds on disk since issue 15: :data:`SCHEMA` with each key stored as the 20
#: bytes its hex digits spell (latentds.store.keys). Generations in :data:`SCHEMA` (text keys)
#: and :data:`LEGACY_SCHEMA` are read as they are; every table a caller sees is in :data:`SCHEMA`.
STORED_SCHEMA = pa.schema([pa.field("key", STORED_KEY) if f.name == "key" else f for f in SCHEMA])


def upgrade(table: pa.Table) -> pa.Table:
    """A table in :data:`SCHEMA`: binary keys (:data:`STORED_SCHEMA`) become their hex text; a
    legacy generation gets ``crc32c = -1`` (unknown) on every row, so its rows keep being
    verified with sha256 and merge with new rows unchanged."""
    if table.num_columns and table.schema.field(0).type == STORED_KEY:
        table = table.set_column(0, SCHEMA.field("key"), hex_keys(table.column(0)))
    if table.schema.equals(LEGACY_SCHEMA):
        table = table.append_column(SCHEMA.field("crc32c"), pa.array(np.full(table.num_rows, -1, np.int64)))
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"unexpected columns {table.schema.names}")
    return table


def _stored(table: pa.Table) -> pa.Table:
    """``table`` (in :data:`SCHEMA`) as a generation stores it: :data:`STORED_SCHEMA`, or the text
    keys as they are when some key is not 40 lowercase hex digits (readers refuse that row by
    name, as they always did)."""
    keys = stored_keys(fixed_width(table.column("key"))) if table.num_rows else None
    if keys is None:
        return table if table.num_rows else table.cast(STORED_SCHEMA)
    return table.set_column(0, STORED_SCHEMA.field("key"), keys)


def _reader(raw: Any) -> pa.BufferReader:
    """Every Parquet read here goes through ``pa.BufferReader`` (with ``use_threads=False`` and
    ``pre_buffer=False``: pre-buffering an in-memory buffer gains nothing and runs on Arrow's I/O
    thread pool; with it 1 of 100 exiting children still aborted on a loaded box, 0 of 140
    without), never ``io.BytesIO``: reading a Python file leaves clean-up work on
    Arrow's I/O threads that takes the GIL after the call returns, and a process exiting right
    then aborts with SIGABRT ("terminate called without an active exception", apache/arrow#33975,
    #34314). Same as :mod:`latentds.sources`; guarded by tests/test_manifest_exit.py."""
    return pa.BufferReader(raw if isinstance(raw, (bytes, pa.Buffer)) else pa.py_buffer(raw))


#: a remote generation larger than this is kept in an unlinked local temp file, mapped, instead
#: of in memory (a 10M-row generation is ~1 GB of mostly sha256 hex nobody reads on the warm path)
SPILL_BYTES = 64 << 20


def _release(raw: Any) -> None:
    """Give the pages of a mapped generation back (they stay in the page cache, and fault back
    in if a lazy column is decoded later): what was read stays out of this process's RSS."""
    if isinstance(raw, mmap.mmap):
        raw.madvise(mmap.MADV_DONTNEED)


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
        # the generation's bytes (bytes, or a read-only map of an immutable file, which survives
        # its deletion by gc): lazy columns decode from them, never from the store again
        self._raw = source if not isinstance(source, pa.Table) else None
        self._table: pa.Table | None = upgrade(source) if isinstance(source, pa.Table) else None
        self._lazy: dict[str, pa.ChunkedArray] = {}
        self._plan: np.ndarray | None = None
        self._layouts: list[Layout] = []
        pf = (pq.ParquetFile(_reader(self._raw), read_dictionary=["shard"], pre_buffer=False) if self._raw is not None else None)
        have = set(pf.schema_arrow.names if pf is not None else READER_COLUMNS)

        def col(name: str) -> pa.ChunkedArray:
            # one column at a time, converted and dropped before the next: a lower peak RSS
            if self._table is not None:
                return self._table.column(name)
            assert pf is not None
            # one ParquetFile for every column: pq.read_table would parse the footer each time
            return pf.read(columns=[name], use_threads=False).column(name)

        self._rows = pf.metadata.num_rows if pf is not None else self._table.num_rows
        binary = pf is not None and pf.schema_arrow.field("key").type == STORED_KEY
        if pf is not None:
            keys = read_key_column(self._rows, pf.metadata.num_row_groups,
                                   lambda g: pf.read_row_group(g, columns=["key"], use_threads=False).column("key"),
                                   fixed_width, lambda: (_release(self._raw), pa.default_memory_pool().release_unused()))
        else:
            keys = fixed_width(col("key"))
        self._cols: dict[str, np.ndarray] = {c: int_column(col(c)) for c in
                                             ("offset", "length", "mean_length", "std_offset", "target")}
        self._cols["crc32c"] = (int_column(col("crc32c")) if "crc32c" in have
                                else np.full(self._rows, -1, np.int64))
        self._shards, self._cols["shard"] = dictionary(col("shard"))
        # Names become paths (reads, verify, gc, export, compact): every one is checked here, once
        # per generation, against the exact form latentds writes (issue 11, item 4).
        where = name or f"manifest generation {generation}"
        bad = [s for s in self._shards if not SHARD_NAME.fullmatch(s)]
        if bad:
            raise ManifestError(f"{where}: names shard {bad[0][:80]!r}, which is not a shard name "
                                f"(shard-<32 hex digits>.tar); refused, the manifest is corrupt or crafted (such a "
                                f"name could reach outside the cache). See docs/store.md, 'Recovering'")
        # binary keys are valid by their type: any 20 bytes spell 40 hex digits
        if len(keys) and not binary and (keys.dtype.itemsize != 40 or not all_hex(keys)):
            odd = next((k for k in keys.tolist() if not KEY_NAME.fullmatch(k.decode("latin1"))), b"?")
            raise ManifestError(f"{where}: holds key {odd[:80]!r}, which is not a sample key (40 hex digits); "
                                f"refused, the manifest is corrupt or crafted")
        # generations are committed sorted by key: then the order is the identity (checked)
        self._index = KeyIndex(keys, binary=binary)
        del keys
        self._sha: np.ndarray | None = None
        _release(self._raw)
        pa.default_memory_pool().release_unused()  # decode scratch back to the OS, not kept in RSS

    @property
    def table(self) -> pa.Table:
        """The whole generation (every column), decoded on first use."""
        if self._table is None:
            assert self._raw is not None
            self._table = upgrade(pq.read_table(_reader(self._raw), use_threads=False, pre_buffer=False).replace_schema_metadata(None))
            _release(self._raw)
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
                col = pq.read_table(_reader(self._raw), columns=[name], use_threads=False, pre_buffer=False).column(name)
                _release(self._raw)
                if col.type == STORED_KEY:  # binary keys: the hex text every caller sees
                    col = hex_keys(col)
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
        return self._index.find(key)

    def find_many(self, keys: Sequence[str]) -> np.ndarray:
        """Rows of ``keys`` (int64, -1 where absent): one vectorised search for many keys."""
        return self._index.find_many(keys)

    def locate(self, row: int) -> tuple[str, int, int, int, int, str, int]:
        """(shard, offset, length, mean_length, std_offset, sha256, target) of one row."""
        c = self._cols
        if self._sha is None:  # only the sha256-checked paths (legacy rows, verify, export) need it
            self._sha = fixed_width(self.column("sha256"))
        return (self._shards[int(c["shard"][row])], int(c["offset"][row]), int(c["length"][row]),
                int(c["mean_length"][row]), int(c["std_offset"][row]), self._sha[row].decode(), int(c["target"][row]))

    def crc32c_at(self, row: int) -> int:
        """CRC32C of the row's ranged read; -1 when unknown (a generation written before it)."""
        return int(self._cols["crc32c"][row])

    def key_at(self, row: int) -> str:
        return str(self.column("key")[row].as_py())

    def key_bytes(self, row: int) -> bytes:
        """The key of ``row`` as bytes from the in-memory key index (no Arrow access: warm path)."""
        return self._index.key_bytes(row)

    def row_layout(self, row: int) -> tuple[int, int, int, int, int]:
        """(offset, length, mean_length, std_offset, target) of one row, from the open columns."""
        c = self._cols
        return (int(c["offset"][row]), int(c["length"][row]), int(c["mean_length"][row]), int(c["std_offset"][row]),
                int(c["target"][row]))

    def shard_ids(self) -> np.ndarray:
        """Per row, the index of its shard in :attr:`shards` (int32; no read plan needed)."""
        return self._cols["shard"]

    def key_matrix(self, rows: np.ndarray) -> np.ndarray:
        """The keys of ``rows`` as an ``(n, 40)`` uint8 matrix of hex digits (from the in-memory
        key index), for checking many tar member names at once (batched reads)."""
        return self._index.key_matrix(rows)

    #: the per-row integers :meth:`row_columns` returns, in its column order
    ROW_COLUMNS = ("offset", "length", "mean_length", "std_offset", "target", "crc32c")

    def row_columns(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows), 6)`` int64 of :attr:`ROW_COLUMNS` for ``rows`` (crc32c -1: none), one
        vectorised gather from the open columns (a streaming epoch's plan, ``EpochPlan``)."""
        c = self._cols
        return np.stack([np.asarray(c[f])[rows].astype(np.int64) for f in self.ROW_COLUMNS], axis=1)

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
            self._plan, self._layouts = build_plan(self.column("dtype"), self.column("shape"), self._cols)
            for c in ("dtype", "shape"):
                self._lazy.pop(c, None)
        return self._plan, self._layouts

    def keys(self) -> set[str]:
        return set(self.column("key").to_pylist())

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.meta.get("stats") or {})


def shard_table(shard: str, rows: Sequence[Row]) -> pa.Table:
    """The manifest rows of one shard (as :func:`rows_table` makes them), straight from the
    columns of a :class:`~latentds.store.tarpack.RowBlock`: no Python object per row."""
    if not isinstance(rows, RowBlock):
        return rows_table([(shard, r) for r in rows])
    n = len(rows)
    ints = {c: pa.array(getattr(rows, c), pa.int64()) for c in
            ("offset", "length", "mean_length", "std_offset", "target", "meta_offset", "meta_length", "crc32c")}
    cols = {"key": pa.array(rows.key, pa.string()), "shard": pa.array([shard] * n, pa.string()),
            "shape": pa.array(rows.shape, pa.list_(pa.int32())), "dtype": pa.array(rows.dtype, pa.string()),
            "sha256": pa.array(rows.sha256, pa.string()), "content_sha256": pa.array(rows.content_sha256, pa.string()),
            **ints}
    return pa.Table.from_pydict({f.name: cols[f.name] for f in SCHEMA}, schema=SCHEMA)


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
            raw = self._fetch(rel)
        except FileNotFoundError:
            # A pointer read a moment ago can name a generation that a newer commit superseded
            # and gc has since collected (the S3 soak hit this at the minimum grace): the
            # current pointer names the live one. Only a pointer that still names the missing
            # generation is an error.
            now = self.read_pointer()
            if now is not None and now.get("generation") != ptr.get("generation"):
                return self.load(now)
            raise ManifestError(f"{path}: manifest generation named by {POINTER} is missing") from None
        if not raw:
            raise ManifestError(f"{path}: manifest is empty (0 bytes)")
        # Pointers written since the store package also carry the generation's CRC32C: checked
        # first, instead of the sha256 (~25 GB/s against ~1.7: 0.6 CPU s saved on a 10M-row, 1 GB
        # generation). The pointer can only catch accidents either way (a writer able to forge
        # the generation can forge the pointer), and CRC32C catches every truncation or flip.
        # Older pointers (no crc32c) are checked with the sha256 as before.
        # The sha256 stays authoritative: a CRC that does not match (a pointer rewritten by a tool
        # that only knows the sha256) falls back to it, so the CRC is only ever a fast path.
        want_crc = ptr.get("crc32c")
        ok = isinstance(want_crc, int) and not isinstance(want_crc, bool) and crc32c(raw) == want_crc
        if not ok:
            ok = hashlib.sha256(raw).hexdigest() == ptr["sha256"]
        _release(raw)  # every page was read for the checksum; only the decoded columns stay
        if not ok:
            raise ManifestError(f"{path}: manifest checksum mismatch ({len(raw)} bytes); it is truncated or corrupt")
        return self._parse(ptr, path, raw)

    def _fetch(self, rel: str) -> Any:
        """A generation's bytes: on local disk a read-only map of the file (only the columns
        decoded are ever resident; the map outlives gc deleting the file); elsewhere the bytes,
        spilled to an unlinked temp file and mapped when large (:data:`SPILL_BYTES`)."""
        be = self.backend
        if be.caps.local:
            path = be.path(rel)

            def open_map() -> Any:
                with open(path, "rb") as fh:
                    if os.fstat(fh.fileno()).st_size == 0:
                        return b""
                    return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

            return be._call(open_map, path)
        raw = be.get(rel)
        if len(raw) < SPILL_BYTES:
            return raw
        with tempfile.TemporaryFile(prefix="latentds-generation-") as fh:
            fh.write(raw)
            fh.flush()
            del raw
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)

    def _parse(self, ptr: dict[str, Any], path: str, raw: Any) -> Manifest:
        if not raw:
            raise ManifestError(f"{path}: manifest is empty (0 bytes)")
        try:
            schema = pq.read_schema(_reader(raw))
            meta = json.loads((schema.metadata or {}).get(META_KEY, b"{}"))
            schema = schema.remove_metadata()
            if not (schema.equals(STORED_SCHEMA) or schema.equals(SCHEMA) or schema.equals(LEGACY_SCHEMA)):
                raise ValueError(f"unexpected columns {schema.names}")
            return Manifest(str(ptr["generation"]), raw, meta, name=path)
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
        t = _stored(table).replace_schema_metadata({META_KEY: json.dumps(dict(meta, generation=generation)).encode()})
        buf = io.BytesIO()
        # no dictionary attempt on the keys (distinct by definition; it only costs the writer)
        pq.write_table(t, buf, compression="zstd", use_dictionary=[c for c in t.column_names if c != "key"])
        data = buf.getvalue()
        self.backend.put(rel, data)
        ptr = {"generation": generation, "path": rel,
               "sha256": hashlib.sha256(data).hexdigest(), "crc32c": crc32c(data), "rows": table.num_rows,
               "bytes": len(data)}
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
