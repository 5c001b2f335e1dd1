"""Store operations and features: CLI compact/inspect/gc/export, LatentIterableDataset splits,
normalize, sample_posterior, the read-through cache, and what the cache must never contain."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from latentds import LatentDataset, LatentIterableDataset
from latentds.testing import synthetic
from latentds.cli import main as cli_main
from latentds.errors import CacheError

from conftest import S3Env


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "dcm"
    synthetic.make_dataset(root, n_per_class=5, shape=(64, 48), seed=5)
    return root


def test_cli_compact_inspect_export_webdataset_and_zarr(dicoms: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import webdataset as wds
    import zarr

    cache = tmp_path / "cache"
    ds = LatentDataset(dicoms, codec="bicubic-f4", cache=cache, image_size=(64, 48))
    expected = {ds.key(i): ds[i][0] for i in range(len(ds))}
    assert cli_main(["compact", str(cache), "--shard-samples", "4"]) == 0
    assert f"packed {len(ds)} samples into 3 shards" in capsys.readouterr().out
    assert cli_main(["inspect", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"{len(ds)} samples in 3 shards" in out and "latent stats C=1" in out and "failures     0" in out
    assert str(dicoms) not in out

    assert cli_main(["export", str(cache), str(tmp_path / "wds"), "--format", "webdataset"]) == 0
    listing = json.loads((tmp_path / "wds" / "shardlist.json").read_text())
    urls = [str(tmp_path / "wds" / e["url"]) for e in listing["shardlist"]]
    got = {s["__key__"]: s["npy"] for s in wds.WebDataset(urls, shardshuffle=False).decode()}
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], expected[k].numpy()) for k in got)

    assert cli_main(["export", str(cache), str(tmp_path / "z"), "--format", "zarr"]) == 0
    g = zarr.open_group(str(tmp_path / "z"), mode="r")
    keys = list(g["keys"][:])
    lat = g["latents"][:]
    assert lat.shape == (len(ds), 1, 16, 12)
    for k, z in zip(keys, lat):
        assert np.array_equal(z, expected[str(k)].numpy())


def test_zarr_export_refuses_mixed_shapes_by_name(dicoms: Path, tmp_path: Path) -> None:
    ds = LatentDataset(dicoms, codec="bicubic-f4", cache=tmp_path / "c")
    for i in range(len(ds)):
        ds[i]
    ds.compact()
    from latentds.store.export import export_zarr

    if len({tuple(ds[i][0].shape) for i in range(len(ds))}) > 1:
        with pytest.raises(CacheError, match="CURRENT.json.*image_size"):
            export_zarr(ds.store, str(tmp_path / "z"))


def test_gc_cli_and_failure_records_hold_no_paths(dicoms: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    root = tmp_path / "src"
    shutil.copytree(dicoms, root)
    broken = root / "positive" / "zz_broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    cache = tmp_path / "cache"
    ds = LatentDataset(root, codec="bicubic-f4", cache=cache)
    rep = ds.fill(progress=False)
    assert len(rep.failures) == 1
    ds.compact()
    assert cli_main(["gc", str(cache), "--grace-hours", "0"]) == 0
    out = capsys.readouterr().out
    assert f"removed {len(ds) - 1} objects" in out  # the staging copies of committed samples
    assert cli_main(["inspect", str(cache)]) == 0
    assert "failures     1" in capsys.readouterr().out
    blob = b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())
    assert b"zz_broken" not in blob and str(root).encode() not in blob
    for i in range(len(ds)):
        if ds.samples[i][0] != str(broken):
            ds[i]  # everything still served, from shards only
    assert cli_main(["verify", str(cache)]) == 0


def test_iterable_dataset_splits_ranks_and_workers_exactly_once(dicoms: Path, tmp_path: Path) -> None:
    ds = LatentDataset(dicoms, codec="bicubic-f4", cache=tmp_path / "c", image_size=(64, 48))
    expected = {ds.key(i): (ds[i][0], ds.targets[i]) for i in range(len(ds))}
    ds.compact(shard_samples=2)
    seen: list[tuple[torch.Tensor, int]] = []
    for rank in range(2):
        it = LatentIterableDataset.from_dataset(ds, rank=rank, world_size=2, shuffle=True, seed=3)
        it.set_epoch(1)
        for z, t in DataLoader(it, batch_size=None, num_workers=2):
            seen.append((z, int(t)))
    assert len(seen) == len(ds)
    remaining = list(expected.values())
    for z, t in seen:
        j = next(j for j, (ez, et) in enumerate(remaining) if et == t and torch.equal(ez, z))
        remaining.pop(j)
    assert not remaining


def test_normalize_uses_committed_dask_stats(dicoms: Path, tmp_path: Path) -> None:
    ds = LatentDataset(dicoms, codec="bicubic-f4", cache=tmp_path / "c", image_size=(64, 48))
    raw = torch.stack([ds[i][0] for i in range(len(ds))])
    norm = LatentDataset(dicoms, codec="bicubic-f4", cache=tmp_path / "c", image_size=(64, 48), normalize=True)
    with pytest.raises(CacheError, match="compact"):
        norm[0]
    ds.compact()
    norm.refresh()
    z = torch.stack([norm[i][0] for i in range(len(norm))])
    mean, std = raw.double().mean(dim=(0, 2, 3)), raw.double().std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(z.double(), (raw.double() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), atol=1e-5)


def test_sample_posterior_draws_around_the_stored_mean(dicoms: Path, tmp_path: Path) -> None:
    kw = dict(codec="kl-f8c1", codec_kwargs={"weights": "random", "seed": 0}, cache=tmp_path / "c",
              image_size=(64, 48))
    ds = LatentDataset(dicoms, **kw)
    mean = ds[0][0]
    e = ds.entry(0)
    assert e.std is not None and float(np.abs(e.std).max()) > 0
    ds.compact()
    post = LatentDataset(dicoms, sample_posterior=True, **kw)
    a, b = post[0][0], post[0][0]
    assert not torch.equal(a, b) and not torch.equal(a, mean)  # random draws, from the shard's std
    assert post.store.reads == 2
    d = (a - mean) / torch.from_numpy(np.array(e.std))
    assert float(d.abs().max()) < 8
    assert torch.equal(LatentDataset(dicoms, **kw)[0][0], mean)  # default: the mean


def test_read_through_cache_serves_repeat_epochs_locally(dicoms: Path, tmp_path: Path, s3_env: S3Env) -> None:
    url = f"s3://{s3_env.new_bucket()}/c"
    opts = s3_env.options()
    ds = LatentDataset(dicoms, codec="bicubic-f4", cache=url, cache_storage_options=opts)
    ref = [ds[i][0] for i in range(len(ds))]
    ds.compact()
    rt = LatentDataset(dicoms, codec="bicubic-f4", cache=url, cache_storage_options=opts,
                       local_cache=tmp_path / "rt", local_cache_bytes=1 << 20)
    for _ in range(2):
        for i in range(len(rt)):
            assert torch.equal(rt[i][0], ref[i])
    assert rt.store.reads == len(rt)  # second epoch entirely from the local copies
    tiny = LatentDataset(dicoms, codec="bicubic-f4", cache=url, cache_storage_options=opts,
                         local_cache=tmp_path / "rt2", local_cache_bytes=2000)
    for i in range(len(tiny)):
        assert torch.equal(tiny[i][0], ref[i])
    assert sum(p.stat().st_size for p in (tmp_path / "rt2").rglob("*") if p.is_file()) <= 2000


def test_inspect_on_s3_prints_no_credentials(dicoms: Path, s3_env: S3Env,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = f"s3://{s3_env.new_bucket()}/c"
    opts = s3_env.options()
    ds = LatentDataset(dicoms, codec="bicubic-f4", cache=url, cache_storage_options=opts)
    ds[0]
    ds.compact()
    so = json.dumps(opts)
    for cmd in (["inspect", url], ["verify", url], ["gc", url], ["compact", url]):
        assert cli_main([*cmd, "--storage-options", so]) == 0
    out = capsys.readouterr()
    assert opts["secret"] not in out.out + out.err and opts["key"] not in out.out + out.err
    fs = ds.store.location.fs
    man = fs.cat_file(ds.store.manifests.generation_path(ds.store.manifest().generation))
    assert opts["secret"].encode() not in man
