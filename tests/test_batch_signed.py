"""Batched S3 reads through presigned URLs (``latentds.batch_signed``): the same bytes as
per-sample reads, no more requests than shards touched, a refused URL read through s3fs
instead, expired URLs signed again, and shard copies fetched whole the same way."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from latentds import LatentDataset, batch_signed
from latentds.store.signed import SignedRanges
from latentds.testing import synthetic

KW: dict[str, Any] = {"image_size": (48, 40)}


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "dcm"
    synthetic.make_dataset(root, n_per_class=8, shape=(48, 40), seed=7)
    return root


@pytest.fixture()
def s3(s3_env: Any) -> Any:
    s3_env.proxy.fail_next(0)
    s3_env.proxy.fail_every(0)
    return s3_env


def make(root: Path, env: Any, url: str, **kw: Any) -> LatentDataset:
    return LatentDataset(root, codec="bicubic-f4", cache=url, cache_storage_options=env.options(), **KW, **kw)


def cache(src: Path, env: Any) -> str:
    url = f"s3://{env.new_bucket()}/latents"
    make(src, env, url).fill(progress=False)
    make(src, env, url).compact(shard_samples=5)  # several shards
    return url


def same(batch: list[tuple[Any, Any]], single: list[tuple[Any, Any]]) -> None:
    assert len(batch) == len(single)
    for (x, t), (y, u) in zip(batch, single):
        assert x.dtype == y.dtype and x.shape == y.shape and bool((x == y).all()) and t == u


def touched(ds: LatentDataset, idx: list[int]) -> int:
    m = ds.store.manifest()
    return len({m.locate(m.find(ds.key(i)))[0] for i in idx})


def test_signed_batch_equals_per_sample_in_at_most_one_get_per_shard(src: Path, s3: Any) -> None:
    url = cache(src, s3)
    ds = make(src, s3, url)
    ds.batch_gap_bytes = 1 << 30  # one range per shard touched
    ds[0]
    m = ds.store.manifest()
    idx = np.random.default_rng(3).permutation(len(ds)).tolist()[:12]
    s3.proxy.reset_counts()
    batch = ds.__getitems__(idx)
    assert sum(s3.proxy.counts.values()) == s3.proxy.counts["GET"] <= touched(ds, idx) < len(idx)
    sr = batch_signed._signed.get(m)
    assert isinstance(sr, SignedRanges) and not sr._off  # read through the signed URLs, none refused
    same(batch, [ds[i] for i in idx])
    off = make(src, s3, url)
    off.batch_sign_urls = False  # the s3fs path, side by side: the same batch
    same(off.__getitems__(idx), batch)


def test_a_refused_url_falls_back_to_s3fs_with_the_same_bytes(src: Path, s3: Any) -> None:
    url = cache(src, s3)
    ds = make(src, s3, url)
    ds[0]
    m = ds.store.manifest()
    idx = np.random.default_rng(4).permutation(len(ds)).tolist()[:9]
    ref = [ds[i] for i in idx]
    s3.proxy.reset_counts()
    s3.proxy.fail_next(1, 403, methods={"GET"})  # the first signed GET is refused
    same(ds.__getitems__(idx), ref)
    assert batch_signed._signed[m]._off  # off for this process: the backend reads from now on
    assert s3.proxy.counts["GET"] >= 2  # the refused GET, then s3fs' reads
    same(ds.__getitems__(idx), ref)


def test_expired_urls_are_signed_again(src: Path, s3: Any) -> None:
    url = cache(src, s3)
    ds = make(src, s3, url)
    ds[0]
    m = ds.store.manifest()
    idx = list(range(0, len(ds), 2))
    ref = [ds[i] for i in idx]
    same(ds.__getitems__(idx), ref)
    first = batch_signed._signed[m]
    first._valid_until = time.time() - 1  # past its lifetime
    assert first.expired()
    same(ds.__getitems__(idx), ref)
    again = batch_signed._signed[m]
    assert again is not first and not again.expired() and not again._off


def test_shard_copies_fetched_whole_through_signed_urls(src: Path, s3: Any, tmp_path: Path) -> None:
    url = cache(src, s3)
    plain = make(src, s3, url)
    idx = np.random.default_rng(5).permutation(len(plain)).tolist()
    ref = [plain[i] for i in idx]
    ds = make(src, s3, url, local_cache=tmp_path / "rt")
    ds[0]
    m = ds.store.manifest()
    s3.proxy.reset_counts()
    same(ds.__getitems__(idx), ref)
    assert s3.proxy.counts["GET"] == len(m.shards)  # each shard once, whole
    assert not batch_signed._signed[m]._off
    fs = ds.store.location.fs
    for name in m.shards:  # the copies are the objects, byte for byte
        assert (tmp_path / "rt" / "shards" / name).read_bytes() == fs.cat_file(ds.store.shard_path(name))
