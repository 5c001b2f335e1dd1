"""Cached augmented views (``views=K``, issue 12 item 3): K views of each image, augmented before
encoding, deterministic per (image, view), cached under their own keys (so compaction keeps
them), one served per epoch; the lazy path and the Dask bulk path agree bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from latentds import LatentDataset
from latentds.codecs import create_codec
from latentds.errors import CacheError, ConfigError
from latentds.sample.views import View, apply_view, choose_view, view_key, view_of
from latentds.testing.synthetic import make_dataset

CODEC = "bicubic-f4"
K = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("views") / "src"
    make_dataset(root, n_per_class=3, shape=(48, 40))
    return root


def _counting() -> tuple[Any, list[int]]:
    codec, calls = create_codec(CODEC), []
    real = codec.encode_dist
    codec.encode_dist = lambda x: (calls.append(int(x.shape[0])), real(x))[1]  # type: ignore[method-assign]
    return codec, calls


def _all_views(ds: LatentDataset) -> dict[tuple[int, int], torch.Tensor]:
    """Every (sample, view) latent, found by walking epochs until each view was served."""
    out: dict[tuple[int, int], torch.Tensor] = {}
    for epoch in range(200):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            out.setdefault((i, ds.view_index(i)), ds[i][0])
        if len(out) == len(ds) * ds.views:
            return out
    raise AssertionError(f"only {len(out)} of {len(ds) * ds.views} views served in 200 epochs")


def test_view_transforms_are_exact_and_view_zero_is_the_image():
    img = np.arange(6 * 6, dtype=np.float32).reshape(6, 6)
    assert apply_view(img, View(0)) is img
    shifted = apply_view(img, View(1, dy=1, dx=2))
    assert np.array_equal(shifted[1:, 2:], img[:-1, :-2]) and not shifted[0].any() and not shifted[:, :2].any()
    assert np.array_equal(apply_view(img, View(1, flip=True, turns=1)), np.rot90(img[:, ::-1], 1))
    key = "a" * 40
    assert view_key(key, 0) == key and len({view_key(key, v) for v in range(5)}) == 5
    assert view_of(key, 2, 4, True) == view_of(key, 2, 4, True)  # a pure function of (key, view)
    for v in range(1, 30):  # non-square images keep their shape: 180-degree turns only
        w = view_of(key, v, 8, False)
        assert w.turns in (0, 2) and 0 <= w.dy < 8 and 0 <= w.dx < 8
        assert apply_view(np.zeros((6, 4), np.float32), w).shape == (6, 4)
    assert {choose_view(i, e, 4) for i in range(8) for e in range(8)} == {0, 1, 2, 3}
    assert choose_view(5, 3, 1) == 0
    with pytest.raises(ConfigError, match="views must be a positive int"):
        LatentDataset(".", codec=CODEC, cache=".", views=0)


def test_views_are_deterministic_per_image_and_view_and_view_zero_is_the_plain_cache(data, tmp_path):
    a = LatentDataset(data, codec=CODEC, cache=tmp_path / "a", views=K)
    b = LatentDataset(data, codec=CODEC, cache=tmp_path / "b", views=K)
    va, vb = _all_views(a), _all_views(b)
    assert va.keys() == vb.keys()
    assert all(torch.equal(va[k], vb[k]) for k in va)  # separate caches, same latents
    plain = LatentDataset(data, codec=CODEC, cache=tmp_path / "plain")
    assert a.namespace == plain.namespace
    for i in range(len(plain)):
        assert torch.equal(va[(i, 0)], plain[i][0])  # view 0 == the cache without views
        assert any(not torch.equal(va[(i, v)], va[(i, 0)]) for v in range(1, K))  # views do differ
    # a views=1 cache is view 0 of views=K: reading it encodes only views 1..K-1
    codec, calls = _counting()
    grown = LatentDataset(data, codec=codec, cache=tmp_path / "plain", views=K)
    rep = grown.fill(progress=False)
    assert rep.cached == len(plain) and rep.encoded == len(plain) * (K - 1) == sum(calls)


def test_views_survive_compaction_and_are_served_without_encoding(data, tmp_path):
    ds = LatentDataset(data, codec=CODEC, cache=tmp_path / "c", views=K)
    rep = ds.fill(progress=False)
    assert rep.encoded == len(ds) * K and not rep.failures
    before = _all_views(ds)
    ds.compact()
    m = ds.store.refresh()
    assert len(m) == len(ds) * K  # every view is a committed entry of its own
    codec, calls = _counting()
    again = LatentDataset(data, codec=codec, cache=tmp_path / "c", views=K)
    after = _all_views(again)
    assert calls == [] and after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    for i in range(len(again)):
        assert m.find(view_key(again.key(i), again.view_index(i))) >= 0


def test_bulk_and_lazy_views_agree(data, tmp_path):
    from dask.distributed import Client, LocalCluster

    from latentds.bulk import encode

    lazy = _all_views(LatentDataset(data, codec=CODEC, cache=tmp_path / "lazy", views=K))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
            Client(cl) as client:
        r = encode(data, CODEC, tmp_path / "bulk", client=client, shard_samples=4, progress=False, views=K)
    assert r.ok
    codec, calls = _counting()
    ds = LatentDataset(data, codec=codec, cache=tmp_path / "bulk", views=K)
    assert len(ds.store.refresh()) == len(ds) * K
    bulk = _all_views(ds)
    assert calls == []  # every view the dataset serves was encoded by the bulk job
    assert bulk.keys() == lazy.keys() and all(torch.equal(bulk[k], lazy[k]) for k in lazy)


# -- every read path serves the view dataset[i] serves for the same (index, epoch) -------------

@pytest.fixture(scope="module")
def compacted(data, tmp_path_factory) -> LatentDataset:
    ds = LatentDataset(data, codec=CODEC, cache=tmp_path_factory.mktemp("views_read") / "c", views=K)
    assert not ds.fill(progress=False).failures
    ds.compact()
    return ds


def _served(ds: LatentDataset, epoch: int) -> list[torch.Tensor]:
    ds.set_epoch(epoch)
    return [ds[i][0] for i in range(len(ds))]


EPOCHS = (0, 1, 2, 5)  # epoch 0 already mixes views (test_epochs_mix_views checks it)


def test_epochs_mix_views(compacted):
    views = {(e, compacted.view_index(i)) for e in EPOCHS for i in range(len(compacted))
             if compacted.set_epoch(e) is None}
    assert {v for _, v in views} == set(range(K)) and {v for e, v in views if e == 0} != {0}


def test_batched_reads_serve_the_epochs_views(compacted):
    from latentds import batch_read

    for e in EPOCHS:
        want = _served(compacted, e)
        idx = list(range(len(compacted)))[::-1]
        for got in (compacted.__getitems__(idx), batch_read.getitems(compacted, idx)):
            assert all(torch.equal(got[j][0], want[i]) for j, i in enumerate(idx))


def test_iterable_from_dataset_streams_the_epochs_views(compacted):
    from latentds.iterable import LatentIterableDataset

    it = LatentIterableDataset.from_dataset(compacted)
    assert it.views == K
    for e in EPOCHS:
        want = _served(compacted, e)
        it.set_epoch(e)
        got = list(it)
        by_bytes = lambda pairs: sorted((z.numpy().tobytes(), int(t)) for z, t in pairs)  # noqa: E731
        assert by_bytes(got) == by_bytes(zip(want, compacted.targets))  # shard order, not index order
    with pytest.raises(ConfigError, match="needs samples="):
        LatentIterableDataset(str(compacted.cache.root.url), compacted.namespace, views=K)


def test_cached_dataset_serves_the_epochs_views(compacted):
    from latentds.serve import CachedLatentDataset

    keys = [compacted.key(i) for i in range(len(compacted))]
    c = CachedLatentDataset(compacted.cache.root.url, compacted.namespace, keys=keys, views=K)
    assert c.targets == list(compacted.targets)
    for e in EPOCHS:
        want = _served(compacted, e)
        c.set_epoch(e)
        assert all(torch.equal(c[i][0], want[i]) for i in range(len(c)))
        batch = c.__getitems__(list(range(len(c))))
        assert all(torch.equal(batch[i][0], want[i]) for i in range(len(c)))
    with pytest.raises(ConfigError, match="needs keys="):
        CachedLatentDataset(compacted.cache.root.url, compacted.namespace, views=K)
    with pytest.raises(CacheError, match="with views=4"):  # view 3 was never encoded
        CachedLatentDataset(compacted.cache.root.url, compacted.namespace, keys=keys, views=K + 1)
