"""R3 review of df53a6f (ShardWalk): a streamed shard shorter than one tar member name (45 bytes,
e.g. an emptied or cut object) must raise the per-row path's typed ``ShardError`` ("truncated"),
as before the commit; ShardWalk's vectorised name gather indexes bytes 0..44 of every row that
failed the bounds check and raised numpy's ``IndexError`` instead. Fixed
(e.g. ``if not ok.any(): return`` right after the bounds check in ``ShardWalk.__init__``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentds import LatentIterableDataset
from latentds.errors import ShardError

from test_shardwalk import _cache, _rewrite


@pytest.mark.parametrize("keep", [0, 44])
def test_a_shard_shorter_than_a_member_name_raises_shard_error(tmp_path: Path, keep: int) -> None:
    s, m = _cache(tmp_path)
    _rewrite(s, m, lambda d: d.__delitem__(slice(keep, None)))
    with pytest.raises(ShardError, match="truncated"):
        list(LatentIterableDataset(str(tmp_path / "c"), "ns", prefetch=0))
