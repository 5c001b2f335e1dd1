"""The batched read's fast mapped path (issue 15 item 2, fifth pass): the ``Samples`` list collate takes whole,
member names and CRC32Cs checked once per (manifest row, map) under ``batch_verify = "once"``
and on every read by default, and the same typed error as ``dataset[i]`` whenever a member
this process has not checked in that map is bad (bit flip, wrong name, truncation, a replaced
file), on a shard, a ragged cache, after recompaction and in forked DataLoader workers."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from latentds import LatentDataset
from latentds.batch_read import collate
from latentds.batch_samples import Samples
from latentds.errors import ShardError
from latentds.mapped import MAPS
from latentds.testing import synthetic

FIXED = {"image_size": (48, 40)}


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "dcm"
    synthetic.make_dataset(root, n_per_class=8, shape=(48, 40), seed=11)
    return root


def make(root: Path, cache: Path, **kw: Any) -> LatentDataset:
    return LatentDataset(root, codec="bicubic-f4", cache=str(cache), **kw)


def built(src: Path, cache: Path, shard_samples: int = 5, **kw: Any) -> LatentDataset:
    make(src, cache, **kw).fill(progress=False)
    make(src, cache, **kw).compact(shard_samples=shard_samples)  # several shards per batch
    return make(src, cache, **kw)


def same(batch: Any, single: list[tuple[Any, Any]]) -> None:
    assert len(batch) == len(single)
    for (x, t), (y, u) in zip(batch, single):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        assert t == u


def order(ds: LatentDataset, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(len(ds)).tolist()


def shard_of(ds: LatentDataset, i: int) -> tuple[str, int, int]:
    m = ds.store.manifest()
    shard, off, length, *_ = m.locate(m.find(ds.key(i)))
    return ds.store.shard_path(shard), off, length


def flip(path: str, at: int) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:  # in place: the same inode, as bit rot would be
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0x40]))


def crc_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = google_crc32c.value

    def counted(data: Any) -> int:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(google_crc32c, "value", counted)
    return calls


def test_samples_is_a_full_list_that_collate_takes_whole(src: Path, tmp_path: Path) -> None:
    ds = built(src, tmp_path / "c", **FIXED)
    idx = order(ds, 1)
    ref = [ds[i] for i in idx]
    got = ds.__getitems__(idx)
    assert type(got) is Samples and isinstance(got, list) and got.pristine and len(got) == len(idx)
    # the items are in the list's own storage (C code reading a list directly sees them)
    assert list.__len__(got) == len(idx) and got[0][0].data_ptr() == got.latents.data_ptr()
    assert len(json.loads(json.dumps([t for _, t in got]))) == len(idx)
    x, y = collate(got)
    rx, ry = default_collate(ref)
    assert x is got.latents and torch.equal(x, rx) and torch.equal(y, ry) and y.dtype == ry.dtype
    same(got, ref)  # views of the batch tensor, in batch order
    assert got.pristine  # reading changes nothing
    moved = ds.__getitems__(idx)
    moved.reverse()  # a changed list is collated from its items
    assert not moved.pristine and torch.equal(collate(moved)[0], rx.flip(0))
    # default_collate, pickling, copies and list operations see the items
    assert all(torch.equal(a, b) for a, b in zip(default_collate(ds.__getitems__(idx)), (rx, ry)))
    for other in (pickle.loads(pickle.dumps(ds.__getitems__(idx))), copy.copy(ds.__getitems__(idx)),
                  ds.__getitems__(idx)[:], list(ds.__getitems__(idx)), ds.__getitems__(idx) + []):
        assert type(other) is list
        same(other, ref)
    fresh = ds.__getitems__(idx)
    fresh.append(ref[0])
    assert len(fresh) == len(idx) + 1
    same(fresh[:-1], ref)
    x3, _ = collate(fresh)  # changed: default_collate's result
    assert torch.equal(x3, torch.cat([rx, rx[:1]]))
    assert [t for _, t in ds.__getitems__(idx)] == [t for _, t in ref]
    assert ds.__getitems__(idx)[-1][1] == ref[-1][1] and ref[0][1] in [t for _, t in ds.__getitems__(idx)]
    assert repr(ds.__getitems__(idx[:2])).startswith("[(tensor(")


@pytest.mark.parametrize("verify", ["always", "once"])
def test_dataloader_batches_with_both_collates_and_a_forked_worker(src: Path, tmp_path: Path, verify: str) -> None:
    ds = built(src, tmp_path / "c", **FIXED)
    ds.batch_verify = verify
    want = torch.stack([ds[i][0] for i in range(len(ds))])
    targets = torch.tensor([ds[i][1] for i in range(len(ds))])
    for fn, workers in ((collate, 0), (None, 0), (collate, 1)):
        loader = DataLoader(ds, batch_size=6, collate_fn=fn, num_workers=workers)
        xs, ys = zip(*loader)
        assert torch.equal(torch.cat(xs), want) and torch.equal(torch.cat(ys), targets)
    # no collation in the worker: the batch list itself is pickled back (as a plain list)
    raw = list(DataLoader(ds, batch_size=6, collate_fn=as_is, num_workers=1))
    assert all(type(b) is list for b in raw)
    same([s for b in raw for s in b], [ds[i] for i in range(len(ds))])


def as_is(batch: Any) -> Any:
    return batch


def test_ragged_layouts_still_equal_per_sample_reads(src: Path, tmp_path: Path) -> None:
    ds = built(src, tmp_path / "c")  # no image_size: latents of several shapes in one shard
    assert len({ds[i][0].shape for i in range(len(ds))}) > 1
    idx = order(ds, 2)
    ref = [ds[i] for i in idx]
    for verify in ("always", "once", "once"):
        ds.batch_verify = verify
        got = ds.__getitems__(idx)
        assert type(got) is list
        same(got, ref)


def test_once_checks_each_row_once_per_map_and_always_on_every_read(src: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ds = built(src, tmp_path / "c", **FIXED)
    idx = order(ds, 3)
    ref = [ds[i] for i in idx]
    calls = crc_calls(monkeypatch)
    ds.batch_verify = "once"
    same(ds.__getitems__(idx[:6]), ref[:6])
    assert len(calls) == 6
    same(ds.__getitems__(idx), ref)
    assert len(calls) == len(idx)  # only the 10 not checked yet
    same(ds.__getitems__(idx), ref)
    assert len(calls) == len(idx)  # all trusted now
    MAPS.clear()  # maps dropped and made again: new serials, every row is checked again
    same(ds.__getitems__(idx), ref)
    assert len(calls) == 2 * len(idx)
    ds.batch_verify = "always"
    same(ds.__getitems__(idx), ref)
    same(ds.__getitems__(idx), ref)
    assert len(calls) == 4 * len(idx)


@pytest.mark.parametrize("what", ["latent-bit", "member-name"])
def test_once_still_checks_a_member_it_never_checked(src: Path, tmp_path: Path, what: str) -> None:
    ds = built(src, tmp_path / "c", **FIXED)
    ds.batch_verify = "once"
    idx = order(ds, 4)
    bad = idx[-1]
    same(ds.__getitems__(idx[:-1]), [ds[i] for i in idx[:-1]])  # every other row checked and trusted
    path, off, length = shard_of(ds, bad)
    flip(path, off + length - 3 if what == "latent-bit" else off - 512 + 2)  # under the live map
    with pytest.raises(ShardError) as per_sample:
        ds[bad]
    assert ("checksum mismatch" if what == "latent-bit" else "tar member") in str(per_sample.value)
    for batch in (idx, [bad], [*idx[:3], bad, *idx[3:-1]]):
        with pytest.raises(ShardError) as batched:
            ds.__getitems__(batch)
        assert str(batched.value) == str(per_sample.value)
    same(ds.__getitems__(idx[:-1]), [ds[i] for i in idx[:-1]])  # the batch without it still reads


def test_once_checks_again_in_a_replaced_file(src: Path, tmp_path: Path) -> None:
    ds = built(src, tmp_path / "c", **FIXED)
    ds.batch_verify = "once"
    idx = order(ds, 5)
    same(ds.__getitems__(idx), [ds[i] for i in idx])  # every row checked in the current maps
    path, off, length = shard_of(ds, idx[0])
    data = bytearray(Path(path).read_bytes())
    data[off + length - 3] ^= 0x40
    tmp = path + ".new"
    Path(tmp).write_bytes(bytes(data))
    os.replace(tmp, path)  # another inode under the same name
    ds.store.close()  # descriptors reopen the name: the new file
    with pytest.raises(ShardError, match="checksum mismatch") as batched:
        ds.__getitems__(idx)
    with pytest.raises(ShardError) as per_sample:
        ds[idx[0]]
    assert str(batched.value) == str(per_sample.value)


@pytest.mark.parametrize("verify", ["always", "once"])
def test_truncated_shard_raises_the_per_sample_error_even_for_checked_rows(src: Path, tmp_path: Path,
                                                                          verify: str) -> None:
    ds = built(src, tmp_path / "c", **FIXED)
    ds.batch_verify = verify
    idx = order(ds, 6)
    same(ds.__getitems__(idx), [ds[i] for i in idx])
    path, off, length = shard_of(ds, idx[0])
    os.chmod(path, 0o644)
    os.truncate(path, off + length // 2)  # in place, under the live map: no SIGBUS
    with pytest.raises(ShardError, match="truncated") as batched:
        ds.__getitems__(idx)
    first_bad = None
    for i in idx:
        try:
            ds[i]
        except ShardError as e:
            first_bad = e
            break
    assert first_bad is not None and str(batched.value) == str(first_bad)


def test_once_after_recompaction_and_with_staging(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "c"
    ds = make(src, cache, **FIXED)
    ds.fill(indices=range(0, len(ds), 2), progress=False)
    ds.compact(shard_samples=3)
    ds.fill(progress=False)  # odd samples in staging: uncommitted, read per sample
    ds = make(src, cache, **FIXED)
    ds.batch_verify = "once"
    idx = order(ds, 7)
    ref = [ds[i] for i in idx]
    got = ds.__getitems__(idx)
    assert type(got) is list  # a partial batch: the eager list
    same(got, ref)
    ds.compact(shard_samples=4)  # a new generation, new shards: everything is checked again
    calls = crc_calls(monkeypatch)
    got = ds.__getitems__(idx)
    assert type(got) is Samples and len(calls) == len(idx)
    same(got, ref)
    same(ds.__getitems__(idx), ref)
    assert len(calls) == len(idx)
    bad = idx[2]
    path, off, length = shard_of(ds, bad)
    flip(path, off + length - 3)
    MAPS.clear()
    with pytest.raises(ShardError, match="checksum mismatch"):
        ds.__getitems__(idx)


@pytest.mark.parametrize("targets", [[1, 2, 3], [True, False, True], [1.5, 2.0, 3.0], [np.int64(4)] * 3,
                                     ["a", "b", "c"], [(1, 2), (3, 4), (5, 6)]])
def test_collate_of_a_samples_list_equals_default_collate(targets: list[Any]) -> None:
    x = torch.arange(6.0).reshape(3, 2).clone()  # a base tensor, as a batch is
    want = default_collate(list(zip(x.unbind(0), targets)))
    for got in (collate(Samples(x, targets)), collate(list(Samples(x, targets)))):  # Samples / a plain list of its views
        assert got[0].data_ptr() == x.data_ptr() and torch.equal(got[0], want[0])
        if isinstance(want[1], torch.Tensor):
            assert got[1].dtype == want[1].dtype and torch.equal(got[1], want[1])
        else:
            assert repr(got[1]) == repr(want[1])
    with pytest.raises(Exception) as ours:
        collate(Samples(x, [2 ** 70, 1, 2]))
    with pytest.raises(Exception) as theirs:
        default_collate(list(zip(x.unbind(0), [2 ** 70, 1, 2])))
    assert type(ours.value) is type(theirs.value)
