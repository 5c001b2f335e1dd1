"""``latentds.shard_cache.ShardCache``: whole-shard local copies (issue 15) — fetched once, a
download in progress elsewhere is not repeated, the byte budget holds, a dropped copy is gone."""

from __future__ import annotations

import os
from pathlib import Path

from latentds.shard_cache import ShardCache


def test_fetch_once_skip_in_progress_evict_and_drop(tmp_path: Path) -> None:
    remote = {f"r/shard-{i:032x}.tar": bytes([i]) * 1000 for i in range(4)}
    calls: list[list[str]] = []

    def cat(paths: list[str]) -> list[bytes]:
        calls.append(paths)
        return [remote[p] for p in paths]

    names = [p.split("/")[1] for p in remote]
    sc = ShardCache(tmp_path / "c", max_bytes=2500)
    assert sc.fd(names[0]) is None
    # another worker is downloading shard 1 right now: not fetched twice, read by range meanwhile
    os.makedirs(sc.directory)
    Path(sc.path(names[1]) + ".part").write_bytes(b"")
    got = sc.fetch(names[:2], list(remote)[:2], cat)
    assert got == names[:1] and calls == [list(remote)[:1]]
    assert os.pread(sc.fd(names[0]), 1000, 0) == remote[list(remote)[0]]  # type: ignore[arg-type]
    assert sc.fetch(names[:1], list(remote)[:1], cat) == names[:1] and len(calls) == 1  # a copy: no request
    os.unlink(sc.path(names[1]) + ".part")
    sc.fetch(names[1:], list(remote)[1:], cat)
    copies = [n for n in os.listdir(sc.directory) if not n.endswith(".part")]
    assert sum(os.path.getsize(sc.path(n)) for n in copies) <= 2500 and names[3] in copies
    sc.drop(names[3])
    assert not os.path.exists(sc.path(names[3])) and sc.fd(names[3]) is None
    assert sc.fetched == 4 and sc.fetched_bytes == 4000
