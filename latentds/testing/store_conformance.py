"""The store contract as checks: what every :class:`~latentds.store.backend.Backend` must do.

Each ``check_*`` takes a fresh, empty backend (its own root) and raises ``AssertionError`` on a
violation. :data:`CHECKS` lists them all; a test suite runs them over every store it supports
(this project: local disk, ``memory://`` and S3 on 127.0.0.1, tests/test_store_conformance.py).
A new backend (another object store, a new fsspec implementation) is supported when these pass:

    from latentds.testing.store_conformance import CHECKS
    for check in CHECKS:
        check(Backend("gs://bucket/some-fresh-prefix", storage_options))

The last checks run the whole store (stage, compact, plan/read, verify, gc) on the backend, so a
backend that passes also holds a cache byte for byte like the others.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from ..errors import LatentdsError, ManifestError, ShardError
from ..store import layout
from ..store.backend import Backend, CommitConflict

__all__ = ["CHECKS", "check_conditional_commit", "check_conditional_race", "check_get_put", "check_layout_refuses",
    "check_list_delete", "check_ranges", "check_store_round_trip", "check_store_refuses_crafted_pointer", "run_all"]


def _raises(exc: type[BaseException], fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


def check_get_put(b: Backend) -> None:
    """put then get returns the bytes; a missing object is ``FileNotFoundError``; put replaces."""
    _raises(FileNotFoundError, lambda: b.get("a/missing.bin"))
    assert not b.exists("a/x.bin")
    b.put("a/x.bin", b"hello")
    assert b.get("a/x.bin") == b"hello"
    assert b.exists("a/x.bin")
    info = b.info("a/x.bin")  # gc dates objects by it: a store must say when it was written
    assert any(info.get(k) is not None for k in ("mtime", "LastModified", "last_modified", "created")), info
    b.put("a/x.bin", b"replaced, longer")
    assert b.get("a/x.bin") == b"replaced, longer"
    b.put("a/empty.bin", b"")
    assert b.get("a/empty.bin") == b""


def check_ranges(b: Backend) -> None:
    """get_range is exactly the asked bytes; a range running past the end is cut at the end."""
    data = bytes(range(256)) * 40
    b.put("r.bin", data)
    assert b.get_range("r.bin", 0, 10) == data[:10]
    assert b.get_range("r.bin", 512, 4096) == data[512:4096]
    assert b.get_range("r.bin", len(data) - 7, len(data)) == data[-7:]
    assert b.get_range("r.bin", len(data) - 7, len(data) + 100) == data[-7:]
    _raises(FileNotFoundError, lambda: b.get_range("nope.bin", 0, 10))


def check_list_delete(b: Backend) -> None:
    """list gives paths relative to the root (direct children, or all depths with ``recursive``),
    nothing for a missing prefix; delete removes, and deleting a missing object is no error."""
    assert b.list("none") == {}
    for rel in ("d/one.json", "d/two.json", "d/sub/three.json"):
        b.put(rel, b"{}")
    assert set(b.list("d")) == {"d/one.json", "d/two.json"}, b.list("d")
    assert set(b.list("d", recursive=True)) == {"d/one.json", "d/two.json", "d/sub/three.json"}
    assert set(b.list("", recursive=True)) >= {"d/one.json", "d/sub/three.json"}
    b.delete("d/one.json")
    assert set(b.list("d")) == {"d/two.json"}
    _raises(FileNotFoundError, lambda: b.get("d/one.json"))
    b.delete("d/one.json")  # idempotent, as S3's DELETE


def check_conditional_commit(b: Backend) -> None:
    """put_if writes only while ``matches(current)`` holds, else :class:`CommitConflict`."""
    b.put_if("m/ptr.json", b"1", lambda cur: cur is None)
    assert b.get("m/ptr.json") == b"1"
    _raises(CommitConflict, lambda: b.put_if("m/ptr.json", b"x", lambda cur: cur is None))
    _raises(CommitConflict, lambda: b.put_if("m/ptr.json", b"x", lambda cur: cur == b"0"))
    b.put_if("m/ptr.json", b"2", lambda cur: cur == b"1")
    assert b.get("m/ptr.json") == b"2"


def check_conditional_race(b: Backend) -> None:
    """Two committers that both saw the same pointer: where ``caps.conditional`` exactly one
    wins and the object holds the winner's bytes (compare-and-swap). Elsewhere only that the
    object holds one of the two (last writer wins: the capability says so)."""
    b.put("m/ptr.json", b"base")
    b_started = threading.Event()
    results: dict[str, str] = {}

    def slow_matches(cur: bytes | None) -> bool:
        # A has read the pointer; B commits now, before A's write
        b_started.wait(5)
        time.sleep(0.3)
        return cur == b"base"

    def commit(name: str, matches: Callable[[bytes | None], bool]) -> None:
        try:
            b.put_if("m/ptr.json", name.encode(), matches)
            results[name] = "won"
        except CommitConflict:
            results[name] = "lost"

    ta = threading.Thread(target=commit, args=("A", slow_matches))
    ta.start()
    time.sleep(0.05)
    b_started.set()
    commit("B", lambda cur: cur == b"base")
    ta.join(20)
    final = b.get("m/ptr.json")
    if b.caps.conditional:
        assert sorted(results.values()) == ["lost", "won"], results
        winner = next(k for k, v in results.items() if v == "won")
        assert final == winner.encode(), (final, results)
    else:
        assert final in (b"A", b"B"), final


def check_layout_refuses(b: Backend) -> None:
    """Names read back from a store become paths only in their exact form (docs/design.md
    invariant 10): shard, generation, key and record names that could escape are refused."""
    for bad in ("../../etc/passwd", "shard-../x.tar", "shard-" + "0" * 31 + ".tar", "/abs.tar", "shard-" + "g" * 32 + ".tar"):
        _raises(ShardError, lambda: layout.shard(bad))
    _raises(ManifestError, lambda: layout.generation("../g-1"))
    _raises(ShardError, lambda: layout.staging("../" + "a" * 37))
    _raises(ShardError, lambda: layout.failure_record("../x"))
    assert layout.kind_of("shards/../manifest/CURRENT.json") == "other"
    assert layout.kind_of("staging/ab/" + "ab" * 20 + ".npz") == "staging"
    assert layout.kind_of("staging/ab/.tmp-1-" + "ab" * 20 + ".npz") == "temp"


def _store(b: Backend) -> Any:
    from ..store import open_store

    return open_store(b.url, "ns", b.storage_options)


def check_store_refuses_crafted_pointer(b: Backend) -> None:
    """A pointer naming a generation outside the manifest directory is a typed error, not a read."""
    s = _store(b)
    s.backend.put("manifest/CURRENT.json", b'{"generation": "../../evil", "sha256": "00"}')
    e = _raises(ManifestError, s.refresh)
    assert "CURRENT.json" in str(e)


def check_store_round_trip(b: Backend) -> None:
    """The whole store on this backend: stage, compact, plan/read, verify, gc keeps what is
    committed; a second compaction of the same objects packs nothing."""
    from ..store.collect import gc
    from ..store.ops import verify
    from ..store.sharded import ShardedStore

    s: ShardedStore = _store(b)
    rng = np.random.default_rng(0)
    keys = [f"{i:040x}" for i in range(1, 7)]
    want = {}
    for i, k in enumerate(keys):
        mean = rng.standard_normal((4, 3, 2)).astype(np.float32)
        std = np.abs(rng.standard_normal((4, 3, 2))).astype(np.float32) if i % 2 else None
        s.cache.put(k, mean, std, {"key": k, "target": i % 3, "content_sha256": ""})
        want[k] = (mean, std)
    rep = s.compact(shard_samples=4)
    assert rep.packed == len(keys) and len(rep.shards) == 2, rep
    assert s.compact().packed == 0
    plan = s.plan([*keys, "f" * 40])
    for i, k in enumerate(keys):
        got = s.read(plan, i)
        assert got is not None
        assert np.array_equal(got[0], want[k][0])
        assert (got[1] is None) == (want[k][1] is None)
        if got[1] is not None:
            assert np.array_equal(got[1], want[k][1])
    assert s.read(plan, len(keys)) is None
    assert plan.generation == rep.generation
    v = verify(s)
    assert v.ok and v.samples == len(keys), v.bad
    g = gc(s, grace_s=0.0, dry_run=True)
    assert not [p for p in g.removed if "/shards/" in p or "/manifest/" in p], g.removed
    try:
        s.read_row(s.manifest(), 0, "0" * 40)
    except LatentdsError:
        pass  # a row read under another key is refused (its tar header names the real key)
    else:
        raise AssertionError("a manifest row read under the wrong key was served")


CHECKS: list[Callable[[Backend], None]] = [
    check_get_put, check_ranges, check_list_delete, check_conditional_commit, check_conditional_race,
    check_layout_refuses, check_store_refuses_crafted_pointer, check_store_round_trip,
]


def run_all(make: Callable[[], Backend]) -> None:
    """Every check, each on a fresh backend from ``make()``."""
    for check in CHECKS:
        check(make())
