"""Arrow columns of a manifest generation turned into compact numpy arrays (no Python objects
per row), and the warm path's per-row read plan built from them in a few vectorised passes."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["PLAN_COLUMNS", "Layout", "build_plan", "dictionary", "fixed_width", "int_column"]

#: Columns of :meth:`Manifest.read_plan`: shard id (index into ``Manifest.shards``), absolute
#: offset and length of the ranged read, offsets of the mean and std data (after their ``.npy``
#: headers) within the read (-1: no std), CRC32C of the read (-1: verify with sha256), layout id.
PLAN_COLUMNS = ("shard", "offset", "length", "mean_data", "std_data", "crc32c", "layout")
Layout = tuple[np.dtype, tuple[int, ...], int]  # dtype, shape, element count


def build_plan(dtype_col: pa.ChunkedArray, shape_col: pa.ChunkedArray, cols: dict[str, np.ndarray]
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


def fixed_width(col: pa.ChunkedArray) -> np.ndarray:
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


def int_column(col: pa.ChunkedArray) -> np.ndarray:
    """An int column as one numpy array (a copy: the Arrow buffers can then be released)."""
    out = np.empty(len(col), np.int64)
    pos = 0
    for arr in col.chunks:
        out[pos:pos + len(arr)] = arr.to_numpy(zero_copy_only=False)
        pos += len(arr)
    return out


def dictionary(col: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """Distinct values and an int32 index per row (a shard name is repeated ~4096 times)."""
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    col = col.unify_dictionaries()
    if col.num_chunks == 0:
        return [], np.empty(0, np.int32)
    names = [str(v) for v in col.chunk(0).dictionary.to_pylist()]
    idx = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks]).astype(np.int32)
    return names, idx
