"""``ShardWalk`` (latentds/shardwalk.py): a streamed shard checked at once returns exactly what
the per-row path returns, and a bad row raises the per-row path's typed error at its own turn."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from latentds import LatentIterableDataset
from latentds.errors import ShardError
from latentds.iterable import _decode_row
from latentds.shardwalk import ShardWalk
from latentds.store import ShardedStore
from latentds.store.entries import LatentCache
from latentds.store.epochplan import EpochPlan

N = 12


def _cache(tmp_path: Path, shapes: dict[int, tuple[int, ...]] | None = None) -> tuple[ShardedStore, object]:
    s = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    rng = np.random.default_rng(0)
    for i in range(N):
        k = f"{i:040x}"
        shape = (shapes or {}).get(i, (2, 3, 4))
        s.cache.put(k, rng.standard_normal(shape).astype(np.float32), None, {"key": k, "target": i % 3})
    s.compact()
    return s, s.refresh()


def _rewrite(s: ShardedStore, m: object, edit) -> None:  # type: ignore[no-untyped-def]
    rel = f"shards/{m.shards[0]}"  # type: ignore[attr-defined]
    data = bytearray(s.backend.get(rel))
    edit(data)
    s.backend.put(rel, bytes(data))


def _stream(tmp_path: Path) -> tuple[list[tuple[np.ndarray, int]], Exception | None]:
    got: list[tuple[np.ndarray, int]] = []
    try:
        for z, t in LatentIterableDataset(str(tmp_path / "c"), "ns", prefetch=0):
            got.append((z.numpy(), t))
    except ShardError as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("plan", [False, True])
def test_walk_equals_the_per_row_path_bit_for_bit(tmp_path: Path, plan: bool) -> None:
    s, m = _cache(tmp_path, {5: (2, 5)})  # one row of another layout: the per-row path, same bytes
    data = s.backend.get(f"shards/{m.shards[0]}")  # type: ignore[attr-defined]
    rows = list(range(N))
    src = EpochPlan.from_manifest(m, {m.shards[0]: rows}) if plan else m  # type: ignore[attr-defined]
    slow_rows: list[int] = []

    def slow(r: int) -> np.ndarray:
        slow_rows.append(r)
        return _decode_row(src, r, data, "p")

    w = ShardWalk(src, rows, data, slow)
    for i, r in enumerate(rows):
        a, b = w.mean(i), _decode_row(src, r, data, "p")
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert w.keys[i] == src.key_bytes(r) and int(w.cols[i, 4]) == src.row_layout(r)[4]
    assert slow_rows == [5]  # only the odd layout left the fast path


@pytest.mark.parametrize("what", ["crc", "name", "truncated"])
def test_a_bad_row_raises_the_per_row_error_after_the_rows_before_it(tmp_path: Path, what: str) -> None:
    s, m = _cache(tmp_path)
    good, err = _stream(tmp_path)
    assert err is None and [t for _, t in good] == [i % 3 for i in range(N)]
    off, length, *_ = m.row_layout(7)  # type: ignore[attr-defined]
    if what == "crc":
        _rewrite(s, m, lambda d: d.__setitem__(off + length - 1, d[off + length - 1] ^ 0xFF))
        match = "checksum mismatch"
    elif what == "name":
        _rewrite(s, m, lambda d: d.__setitem__(off - 512, ord("f")))  # the member name's first digit
        match = "not .*swapped or corrupt"
    else:
        _rewrite(s, m, lambda d: d.__delitem__(slice(off + 8, None)))
        match = "truncated"
    got, err = _stream(tmp_path)
    assert isinstance(err, ShardError) and err.__class__ is ShardError
    assert re.search(match, str(err)) and "0" * 39 + "7" in str(err), str(err)
    assert len(got) == 7 and all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(got, good))
