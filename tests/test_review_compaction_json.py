"""Review (R2) of the batched staging reader (8a5319a): a staging object whose zip and array
checksums are fine but whose metadata text is not valid JSON must be reported by name in
``CompactReport.bad`` while the others are packed, as the one-object reader did. The joined scan
in ``savez._loads_many`` catches only StopIteration, so json's scanner raises its
JSONDecodeError (or ValueError for an integer over 4300 digits) out of compaction instead.
Fixed: the joined scan catches ValueError too and leaves the text to ``_loads``."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from latentds.store import ShardedStore, savez
from latentds.store.entries import LatentCache, array_digest

_BAD_TEXTS = [b'{"a": 1,}', b'{"a" 1}', b'{"a": "\\x"}', b'{"a": [1 2]}', b'{"a": 1' + b"0" * 5000 + b"}"]


def test_joined_parse_refuses_what_json_loads_refuses() -> None:
    for t in _BAD_TEXTS:
        assert savez._loads(t) is savez._BAD
        assert savez._loads_many([t, b"{}"])[0] is savez._BAD, t


def test_compaction_reports_a_staging_object_with_invalid_metadata_and_packs_the_rest(tmp_path) -> None:
    store = ShardedStore(LatentCache(str(tmp_path / "c"), "ns"))
    keys = sorted(os.urandom(20).hex() for _ in range(5))
    m = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for i, k in enumerate(keys):
        store.cache.put(k, m + i, None, {"target": 1})
    text = b'{"sha256": "%s", "target": 1,}' % array_digest(m, None).encode()  # trailing comma
    buf = io.BytesIO()
    np.savez(buf, mean=m, meta=np.frombuffer(text, np.uint8))
    with open(store.cache.object_path(keys[2]), "wb") as f:
        f.write(buf.getvalue())
    rep = store.compact()
    assert rep.packed == 4
    assert [p for p, _ in rep.bad] == [store.cache.object_path(keys[2])]
