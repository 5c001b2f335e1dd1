"""LatentDataset against torchvision's ImageFolder, and the cache invariants it must keep."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import latentds
from latentds import CacheError, DicomError, LatentDataset
from latentds.cli import main as cli_main


def _png_tree(root: Path, seed: int = 0) -> Path:
    """A small ImageFolder tree of 8-bit grayscale PNGs with varied sizes, plus distractors."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 56), (64, 48), (33, 70)]
    for c, cls in enumerate(["cat", "dog", "zebra"]):
        (root / cls).mkdir(parents=True)
        for k in range(3):
            h, w = sizes[(c + k) % 3]
            arr = (rng.random((h, w)) * 255).astype(np.uint8)
            Image.fromarray(arr, mode="L").save(root / cls / f"img{k}.png")
        (root / cls / "notes.txt").write_text("not an image")
    (root / "dog" / "nested").mkdir()
    Image.fromarray(np.full((20, 20), 128, np.uint8), mode="L").save(root / "dog" / "nested" / "deep.png")
    return root


@pytest.fixture
def png_tree(tmp_path: Path) -> Path:
    return _png_tree(tmp_path / "pngs")


def test_discovery_equals_imagefolder(png_tree: Path, tmp_path: Path) -> None:
    ref = ImageFolder(str(png_tree))
    ds = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    assert ds.classes == ref.classes
    assert ds.class_to_idx == ref.class_to_idx
    assert ds.samples == ref.samples
    assert ds.imgs == ref.imgs
    assert ds.targets == ref.targets
    assert ds.find_classes(str(png_tree)) == ref.find_classes(str(png_tree))
    assert len(ds) == len(ref) == 10


def test_discovery_accepts_dicom_by_default(tmp_path: Path) -> None:
    from latentds.testing import synthetic

    synthetic.make_dataset(tmp_path / "dcm", n_per_class=2, shape=(64, 48), seed=1)
    ds = LatentDataset(tmp_path / "dcm", codec="bicubic-f4", cache=tmp_path / "cache")
    assert len(ds) == 4 and ds.classes == ["negative", "positive"]
    assert all(p.endswith(".dcm") for p, _ in ds.samples)
    with pytest.raises(FileNotFoundError):  # ImageFolder itself sees no images here
        ImageFolder(str(tmp_path / "dcm"))


@pytest.mark.parametrize("case", ["no_classes", "empty_class", "both_filters"])
def test_same_errors_as_imagefolder(tmp_path: Path, case: str) -> None:
    root = tmp_path / "r"
    root.mkdir()
    kwargs: dict = {}
    if case == "empty_class":
        (root / "a").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "x.png")
        (root / "b").mkdir()
    if case == "both_filters":
        (root / "a").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "x.png")
    with pytest.raises(Exception) as theirs:
        if case == "both_filters":
            from torchvision.datasets import DatasetFolder

            DatasetFolder(str(root), loader=lambda p: p, extensions=(".png",), is_valid_file=lambda p: True)
        else:
            ImageFolder(str(root))
    with pytest.raises(type(theirs.value)) as ours:
        if case == "both_filters":
            LatentDataset(str(root), codec="bicubic-f4", cache=tmp_path / "c", is_valid_file=lambda p: True,
                          extensions=(".png",))
        else:
            LatentDataset(str(root), codec="bicubic-f4", cache=tmp_path / "c", **kwargs)
    # torchvision's message first; latentds then says how to fix the tree (issue 10)
    assert str(ours.value).startswith(str(theirs.value).split(". Supported")[0])


def test_allow_empty_and_is_valid_file(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "a" / "y.png")
    ds = LatentDataset(str(root), codec="bicubic-f4", cache=tmp_path / "c", allow_empty=True)
    assert ds.classes == ["a", "b"] and len(ds) == 2
    only_x = LatentDataset(str(root), codec="bicubic-f4", cache=tmp_path / "c", allow_empty=True,
                           is_valid_file=lambda p: p.endswith("x.png"))
    assert [Path(p).name for p, _ in only_x.samples] == ["x.png"]


def test_item_is_the_codec_latent_of_the_preprocessed_image(png_tree: Path, tmp_path: Path) -> None:
    ds = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    for i in range(len(ds)):
        latent, target = ds[i]
        assert target == ds.targets[i]
        img = latentds.read_image(ds.samples[i][0], crop_roi=False)
        expected = ds.codec.encode(torch.from_numpy(img)[None, None])[0]
        assert latent.dtype == torch.float32 and latent.shape == expected.shape
        assert latent.shape[-2:] == (-(-img.shape[0] // 4), -(-img.shape[1] // 4))  # ceil(H/f), keeps aspect
        assert torch.equal(latent, expected)


def test_transforms_apply_to_latent_and_target(png_tree: Path, tmp_path: Path) -> None:
    ds = LatentDataset(str(png_tree), lambda z: z * 2, lambda t: t + 100, codec="bicubic-f4",
                       cache=tmp_path / "cache", crop_roi=False)
    plain = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    z, t = ds[0]
    z0, t0 = plain[0]
    assert torch.equal(z, z0 * 2) and t == t0 + 100


def test_reencoding_is_bit_identical(png_tree: Path, tmp_path: Path) -> None:
    a = LatentDataset(str(png_tree), codec="bicubic-f8", cache=tmp_path / "c1", crop_roi=False)
    b = LatentDataset(str(png_tree), codec="bicubic-f8", cache=tmp_path / "c2", crop_roi=False)
    assert a.namespace == b.namespace
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0])
    # and the bytes on disk are the same object for object
    fa = sorted(p.relative_to(tmp_path / "c1") for p in (tmp_path / "c1").rglob("*.npz"))
    fb = sorted(p.relative_to(tmp_path / "c2") for p in (tmp_path / "c2").rglob("*.npz"))
    assert fa == fb and len(fa) == len(a)
    for p in fa:
        assert (tmp_path / "c1" / p).read_bytes() == (tmp_path / "c2" / p).read_bytes()


def test_cache_hit_does_not_read_the_source(png_tree: Path, tmp_path: Path) -> None:
    ds = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    first = ds[0][0].clone()
    path = ds.samples[0][0]
    st = os.stat(path)
    # Same size and mtime, unreadable content: only a read of the source could notice.
    Path(path).write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    fresh = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    assert torch.equal(fresh[0][0], first)
    # A changed source (new mtime) is a miss: now the garbage is read, and rejected by name.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(latentds.ImageReadError, match=Path(path).name):
        fresh[0]


def test_changed_source_is_a_miss(png_tree: Path, tmp_path: Path) -> None:
    ds = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    before = ds[1][0].clone()
    path = ds.samples[1][0]
    arr = np.asarray(Image.open(path))
    Image.fromarray(255 - arr).save(path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    after = ds[1][0]
    assert not torch.equal(before, after)


def test_namespace_changes_with_codec_and_preprocessing(png_tree: Path, tmp_path: Path) -> None:
    kw = dict(cache=tmp_path / "cache")
    base = LatentDataset(str(png_tree), codec="bicubic-f4", crop_roi=False, **kw).namespace
    assert LatentDataset(str(png_tree), codec="bicubic-f8", crop_roi=False, **kw).namespace != base
    assert LatentDataset(str(png_tree), codec="bicubic-f4", crop_roi=True, **kw).namespace != base
    assert LatentDataset(str(png_tree), codec="bicubic-f4", crop_roi=False, size=32, **kw).namespace != base
    assert LatentDataset(str(png_tree), codec="bicubic-f4", crop_roi=False, image_size=(32, 32), **kw).namespace != base
    assert LatentDataset(str(png_tree), codec="bicubic-f4", crop_roi=False, **kw).namespace == base


def test_corrupt_cache_object_is_an_error_naming_it(png_tree: Path, tmp_path: Path) -> None:
    ds = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    ds[0]
    obj = Path(ds.cache.object_path(ds.key(0)))
    data = bytearray(obj.read_bytes())
    # flip a byte inside the stored latent array (npz members are stored uncompressed)
    mean = ds[0][0].numpy().tobytes()
    pos = bytes(data).find(mean[:16])
    assert pos > 0
    data[pos + 3] ^= 0xFF
    obj.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=obj.name):
        ds[0]
    obj.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CacheError, match=obj.name):
        ds[0]


def test_fixed_size_latents_batch_in_a_dataloader_with_workers(png_tree: Path, tmp_path: Path) -> None:
    ds = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False,
                       image_size=(48, 64), fit="pad")
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    z = torch.cat([b[0] for b in batches])
    t = torch.cat([b[1] for b in batches])
    assert z.shape == (len(ds), 1, 12, 16)
    assert t.tolist() == ds.targets
    # the workers wrote the cache; the main process now hits it and gets the same latents
    assert len(ds.cache.keys()) == len(ds)
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], z[i])


def test_resize_fit_and_decode_shape(png_tree: Path, tmp_path: Path) -> None:
    ds = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False,
                       image_size=(32, 32), fit="resize")
    assert ds[0][0].shape == (1, 8, 8)
    var = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
    rec = var.decode(2)
    img = latentds.read_image(var.samples[2][0], crop_roi=False)
    assert rec.shape == (1, *img.shape)
    assert float(rec.min()) >= 0.0 and float(rec.max()) <= 1.0


def test_fill_records_failures_and_finishes_the_rest(tmp_path: Path) -> None:
    from latentds.testing import synthetic

    root = tmp_path / "dcm"
    synthetic.make_dataset(root, n_per_class=2, shape=(64, 48), seed=2)
    broken = root / "positive" / "broken.dcm"
    good = sorted((root / "positive").glob("*.dcm"))[0]
    broken.write_bytes(good.read_bytes()[:-500])  # truncated pixel data
    ds = LatentDataset(root, codec="bicubic-f4", cache=tmp_path / "cache")
    report = ds.fill(progress=False)
    assert [f.path for f in report.failures] == [str(broken)]
    assert report.failures[0].error_type == "DicomError"
    assert report.encoded == len(ds) - 1
    with pytest.raises(DicomError, match="broken.dcm"):
        ds[ds.samples.index((str(broken), 1))]
    again = ds.fill(progress=False)
    assert again.cached == len(ds) - 1 and again.encoded == 0


def test_batched_fill_equals_lazy_access(tmp_path: Path) -> None:
    from latentds.testing import synthetic

    synthetic.make_dataset(tmp_path / "dcm", n_per_class=3, shape=(64, 48), seed=3)
    kw = dict(codec="bicubic-f8", crop_roi=False, image_size=(64, 48))
    lazy = LatentDataset(tmp_path / "dcm", cache=tmp_path / "c1", **kw)
    bulk = LatentDataset(tmp_path / "dcm", cache=tmp_path / "c2", **kw)
    bulk.fill(batch_size=4, progress=False)
    for i in range(len(lazy)):
        assert torch.equal(lazy[i][0], bulk[i][0])


def test_cli_encode_and_inspect(png_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    assert cli_main(["encode", str(png_tree), "--codec", "bicubic-f8", "--cache", str(cache), "--no-crop",
                     "--quiet"]) == 0
    assert "encoded 10" in capsys.readouterr().out
    assert cli_main(["inspect", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "bicubic-f8" in out and "samples      10" in out
    bad = tmp_path / "bad"
    shutil.copytree(png_tree, bad)
    (bad / "cat" / "img0.png").write_bytes(b"garbage")
    assert cli_main(["encode", str(bad), "--codec", "bicubic-f8", "--cache", str(cache), "--quiet"]) == 1
    assert "img0.png" in capsys.readouterr().err


def test_fsspec_source_and_cache_match_local(png_tree: Path, tmp_path: Path) -> None:
    """The same tree served from an fsspec URL (memory://) gives the same classes and latents."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for p in png_tree.rglob("*"):
        if p.is_file():
            fs.pipe_file(f"/lds-src/{p.relative_to(png_tree).as_posix()}", p.read_bytes())
    try:
        remote = LatentDataset("memory://lds-src", codec="bicubic-f4", cache="memory://lds-cache", crop_roi=False)
        local = LatentDataset(str(png_tree), codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False)
        assert remote.classes == local.classes and remote.targets == local.targets
        assert [remote.relative_path(i) for i in range(len(remote))] == \
               [local.relative_path(i) for i in range(len(local))]
        for i in range(len(local)):
            assert torch.equal(remote[i][0], local[i][0])
        assert len(remote.cache.keys()) == len(remote)
        with pytest.raises(FileNotFoundError, match="Couldn't find any class folder"):
            LatentDataset("memory://lds-nothing", codec="bicubic-f4", cache="memory://lds-cache")
    finally:
        fs.rm("/lds-src", recursive=True)
        if fs.exists("/lds-cache"):
            fs.rm("/lds-cache", recursive=True)


def test_demo_runs_end_to_end_small(tmp_path: Path) -> None:
    from latentds.demo import format_table, run_demo

    rows = run_demo(tmp_path / "demo", n_per_class=4, shape=(64, 48), epochs=1, codecs=("bicubic-f4", "bicubic-f8"))
    assert [r.method for r in rows] == ["full size", "bicubic-f4", "bicubic-f8"]
    for r in rows:
        assert 0.0 <= r.auroc <= 1.0 and r.bytes_per_image > 0 and r.seconds > 0
    # cost falls with f: fewer pixels in, fewer FLOPs and fewer bytes
    assert rows[0].gflops > rows[1].gflops > rows[2].gflops
    assert rows[0].bytes_per_image > rows[1].bytes_per_image > rows[2].bytes_per_image
    assert "bicubic-f8" in format_table(rows)
