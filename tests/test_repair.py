"""Issue 11 item 6: a repair path (`latentds repair`, `verify --repair`) and a gc that never
deletes the last good copy of a sample. Local disk and the S3 server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from latentds import LatentDataset
from latentds.testing.synthetic import make_dataset

CODEC = "bicubic-f4"
SHAPE = (64, 48)


def _filled(src: Path, url: str, options: dict[str, Any] | None) -> LatentDataset:
    if not src.exists():
        make_dataset(src, n_per_class=3, shape=SHAPE, seed=0, transfer_syntaxes=("explicit-le",))
    ds = LatentDataset(src, codec=CODEC, cache=url, storage_options=options)
    ds.fill(progress=False)
    ds.compact()
    return ds


def _corrupt_rows(ds: LatentDataset, rows: list[int]) -> list[str]:
    """Flip bytes inside the latent data of the given manifest rows; returns their keys."""
    store = ds.store
    m = store.refresh()
    fs = store.location.fs
    keys = []
    by_shard: dict[str, list[int]] = {}
    for r in rows:
        by_shard.setdefault(m.locate(r)[0], []).append(r)
        keys.append(m.key_at(r))
    for shard, rs in by_shard.items():
        path = store.shard_path(shard)
        data = bytearray(fs.cat_file(path))
        for r in rs:
            _, off, length, *_ = m.locate(r)
            data[off + length - 8] ^= 0xFF  # last bytes of the mean array: same size, wrong content
        fs.pipe_file(path, bytes(data))
    fs.invalidate_cache()
    return keys


def _clean(src: Path, tmp: Path) -> list[torch.Tensor]:
    ds = LatentDataset(src, codec=CODEC, cache=tmp / "clean")
    return [ds[i][0] for i in range(len(ds))]


def test_repair_drops_exactly_the_bad_rows_and_they_are_reencoded_bit_identically(backend: Any, tmp_path: Path
                                                                                   ) -> None:
    from latentds.store import gc, repair, verify

    src = tmp_path / "src"
    ds = _filled(src, backend.url, backend.options)
    store = ds.store
    gc(store, grace_s=0)  # staging copies of committed samples gone: the shard is the only copy
    assert not list(store.cache.keys())
    before = store.refresh()
    bad = _corrupt_rows(ds, [1, 4])
    v = verify(store)
    assert sorted(v.bad_rows) == sorted(bad)
    rep = repair(store)
    assert sorted(k for k, _ in rep.dropped) == sorted(bad) and rep.generation != before.generation
    m = store.refresh()
    assert m.generation == rep.generation and len(m) == len(before) - 2
    assert all(m.find(k) < 0 for k in bad)
    assert sorted(rep.repacked) == sorted(set(before.keys()) - set(bad))  # good rows of the damaged shard moved
    assert verify(store).ok and repair(store).dropped == []  # clean again; a second repair finds nothing
    fresh = LatentDataset(src, codec=CODEC, cache=backend.url, storage_options=backend.options)
    encoded = []
    orig = fresh.codec.encode_dist
    fresh.codec.encode_dist = lambda x: (encoded.append(int(x.shape[0])), orig(x))[1]  # type: ignore
    clean = _clean(src, tmp_path)
    for i in range(len(fresh)):
        assert torch.equal(fresh[i][0], clean[i]), i
    assert sum(encoded) == 2  # exactly the dropped samples were encoded again


def test_repair_with_sources_reencodes_and_commits(tmp_path: Path) -> None:
    from latentds.store import gc, repair, verify

    src = tmp_path / "src"
    ds = _filled(src, str(tmp_path / "cache"), None)
    gc(ds.store, grace_s=0)
    bad = _corrupt_rows(ds, [0])
    again = LatentDataset(src, codec=CODEC, cache=tmp_path / "cache")
    rep = repair(again.store, reencode_from=again)
    assert rep.reencoded == bad and rep.packed_generation is not None
    m = again.store.refresh()
    assert m.find(bad[0]) >= 0 and len(m) == len(ds)
    assert not verify(again.store, staging=False).bad_rows
    clean = _clean(src, tmp_path)
    for i in range(len(again)):
        assert torch.equal(again[i][0], clean[i])


def test_gc_keeps_the_staging_copy_of_a_row_whose_shard_is_corrupt(backend: Any, tmp_path: Path) -> None:
    from latentds.store import gc, repair

    src = tmp_path / "src"
    ds = _filled(src, backend.url, backend.options)
    store = ds.store
    bad = _corrupt_rows(ds, [2])
    rep = gc(store, grace_s=0)
    kept = [p.rsplit("/", 1)[-1][:-4] for p in rep.kept_last_copy]
    assert kept == bad
    assert sorted(store.cache.keys()) == bad  # every other staging copy went (their rows read back intact)
    r = repair(store)
    assert [k for k, _ in r.dropped] == bad
    fresh = LatentDataset(src, codec=CODEC, cache=backend.url, storage_options=backend.options)
    encoded = []
    orig = fresh.codec.encode_dist
    fresh.codec.encode_dist = lambda x: (encoded.append(int(x.shape[0])), orig(x))[1]  # type: ignore
    clean = _clean(src, tmp_path)
    for i in range(len(fresh)):
        assert torch.equal(fresh[i][0], clean[i])
    assert sum(encoded) == 0  # the staging copy gc kept served the dropped row


def test_repair_repoints_a_garbage_pointer(tmp_path: Path) -> None:
    from latentds.store import repair, verify

    ds = _filled(tmp_path / "src", str(tmp_path / "cache"), None)
    n = len(ds.store.refresh())
    Path(ds.store.manifests.pointer_path).write_bytes(b"\x00garbage")
    rep = repair(ds.store)
    assert rep.pointer_recovered and rep.dropped == []
    assert len(ds.store.refresh()) == n and verify(ds.store).ok


def test_cli_verify_repair_and_repair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentds.cli import main
    from latentds.store import gc

    src, cache = tmp_path / "src", str(tmp_path / "cache")
    ds = _filled(src, cache, None)
    gc(ds.store, grace_s=0)
    bad = _corrupt_rows(ds, [3])
    assert main(["verify", cache]) == 1
    assert bad[0] in capsys.readouterr().out
    assert main(["verify", cache, "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"DROPPED {bad[0]}: a miss again" in out and "1 bad rows dropped" in out
    assert main(["verify", cache]) == 0
    bad = _corrupt_rows(LatentDataset(src, codec=CODEC, cache=cache), [0])
    assert main(["repair", cache, "--sources", str(src), "--codec", CODEC]) == 0
    assert f"DROPPED {bad[0]}: re-encoded from the sources" in capsys.readouterr().out
    assert main(["verify", cache]) == 0
    assert main(["repair", cache, "--sources", str(src)]) == 2  # --codec missing: one-line user error
    assert "needs --codec" in capsys.readouterr().err


def test_repair_of_a_lost_shard_drops_its_rows(tmp_path: Path) -> None:
    from latentds.store import gc, repair, verify

    src = tmp_path / "src"
    ds = _filled(src, str(tmp_path / "cache"), None)
    gc(ds.store, grace_s=0)
    m = ds.store.refresh()
    (shard,) = m.shards
    Path(ds.store.shard_path(shard)).unlink()
    assert len(verify(ds.store).bad_rows) == len(m)
    rep = repair(ds.store)
    assert sorted(k for k, _ in rep.dropped) == sorted(m.keys()) and rep.repacked == []
    assert verify(ds.store).ok
    clean = _clean(src, tmp_path)
    fresh = LatentDataset(src, codec=CODEC, cache=tmp_path / "cache")
    for i in range(len(fresh)):
        assert torch.equal(fresh[i][0], clean[i])
