"""Issue 10: every user mistake gets one line on stderr (``latentds: error: ...``), no traceback,
exit 2; ``--workers`` and the in-process path accept and refuse the same sources; a CLI fill is
read by ``LatentDataset`` with zero encodes; class names reach stock webdataset and zarr readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentds.cli import main

PY = [sys.executable, "-m", "latentds"]


def _png_tree(root: Path, classes=("benign", "malignant"), n: int = 2, shape=(64, 48)) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    good = _png_tree(base / "good")
    (base / "empty").mkdir()
    (base / "noimages").mkdir()
    (base / "noimages" / "notes.txt").write_text("not an image")
    empty_class = _png_tree(base / "emptyclass", classes=("a",))
    (empty_class / "b").mkdir()
    (base / "cfg.yaml").write_text("model: [unclosed\n")
    cache = base / "cache"
    return {"base": base, "good": good, "cache": cache}


# (id, argv with {base}/{good}/{cache} placeholders, a fragment the one line must contain)
MISTAKES = [
    ("missing-source", ["encode", "/does/not/exist", "--codec", "bicubic-f8", "--cache", "{cache}"], "no such folder"),
    ("empty-source", ["encode", "{base}/empty", "--codec", "bicubic-f8", "--cache", "{cache}"], "no image files"),
    ("no-images", ["encode", "{base}/noimages", "--codec", "bicubic-f8", "--cache", "{cache}"], "no image files"),
    ("empty-class", ["encode", "{base}/emptyclass", "--codec", "bicubic-f8", "--cache", "{cache}"],
     "Found no valid file for the classes b"),
    ("source-is-a-file", ["encode", "{base}/noimages/notes.txt", "--codec", "bicubic-f8", "--cache", "{cache}"],
     "not a folder"),
    ("missing-table", ["encode", "{base}/labels.csv", "--codec", "bicubic-f8", "--cache", "{cache}"],
     "no such table"),
    ("typo-protocol", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "s4://typo/x"],
     "unknown storage protocol 's4'"),
    ("bad-json", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{cache}", "--storage-options", "{bad"],
     "not valid JSON"),
    ("json-not-object", ["inspect", "{cache}", "--storage-options", "[1, 2]"], "must be a JSON object"),
    ("unknown-codec", ["encode", "{good}", "--codec", "bicubic-f3", "--cache", "{cache}"], "unknown codec"),
    ("missing-weights-file", ["encode", "{good}", "--codec", "kl-f8c4", "--weights", "{base}/nope.safetensors",
                              "--cache", "{cache}"], "nope.safetensors"),
    ("zero-batch", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{cache}", "--batch-size", "0"],
     "must be >= 1"),
    ("one-image-size", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{cache}", "--image-size", "64"],
     "--image-size"),
    ("bad-fit", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{cache}", "--image-size", "64", "48",
                 "--fit", "crop"], "invalid choice"),
    ("unknown-command", ["encdoe", "{good}"], "invalid choice"),
    ("missing-required", ["encode", "{good}", "--codec", "bicubic-f8"], "--cache"),
    ("probe-config-missing", ["train-probe", "--config", "missing.yaml"], "no such file"),
    ("vae-config-missing", ["train-vae", "fit", "-c", "missing.yaml"], "no such config file"),
    ("export-no-namespace", ["export", "{base}/empty", "{base}/out"], "no latentds namespace"),
    ("gc-bad-grace", ["gc", "{cache}", "--grace-hours", "soon"], "invalid float value"),
    ("workers-zero", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{cache}", "--workers", "0"],
     "must be >= 1"),
    ("views-zero", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{cache}", "--views", "0"],
     "must be >= 1"),
    # a cache or export destination that is an existing file (was a NotADirectoryError traceback)
    ("cache-is-a-file", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{base}/cfg.yaml"],
     "is a file, not a folder"),
    ("export-dest-is-a-file", ["export", "{base}/empty", "{base}/cfg.yaml"], "is a file, not a folder"),
    ("device-typo", ["encode", "{good}", "--codec", "bicubic-f8", "--cache", "{cache}", "--device", "gpu"],
     "not a torch device"),
    # a folder that holds no cache (e.g. the source tree): was a plain line and exit 1 (gc: silence, exit 0)
    *[(f"{cmd}-not-a-cache", [cmd, "{base}/noimages"], "no latentds namespace")
      for cmd in ("inspect", "compact", "verify", "repair", "gc")],
]


def _fill(argv: list[str], trees: dict[str, Path]) -> list[str]:
    out = []
    for a in argv:
        for k, v in trees.items():
            a = a.replace("{%s}" % k, str(v))
        out.append(a)
    return out


def _main(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse's own errors exit through our one-line Parser.error
        return int(exc.code or 0)


@pytest.mark.parametrize("argv,fragment", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_user_mistake_is_one_line(trees, argv, fragment, capsys, monkeypatch) -> None:
    """In-process (one torch import for all cases); an escaping exception would fail the test."""
    monkeypatch.delenv("LATENTDS_DEBUG", raising=False)
    code = _main(_fill(argv, trees))
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("latentds: error: "), err
    assert fragment in err, err


@pytest.mark.parametrize("mistake", ["missing-source", "bad-json", "vae-config-missing"])
def test_user_mistake_in_a_real_process(trees, mistake) -> None:
    """The same through the installed entry point, as a user types it (stderr is exactly one line)."""
    argv = next(m[1] for m in MISTAKES if m[0] == mistake)
    env = dict(os.environ)
    env.pop("LATENTDS_DEBUG", None)
    out = subprocess.run(PY + _fill(argv, trees), capture_output=True, text=True, timeout=180, env=env)
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("latentds: error: "), err


def test_debug_shows_the_traceback(trees) -> None:
    out = subprocess.run(PY + ["--debug", "encode", "/does/not/exist", "--codec", "bicubic-f8", "--cache",
                               str(trees["cache"])], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" in out.stderr and "SourceError" in out.stderr


def test_at_least_twelve_mistakes_are_covered() -> None:
    assert len(MISTAKES) >= 12


# -- --workers parity -------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "empty", "noimages", "emptyclass"])
def test_workers_and_in_process_refuse_the_same_sources(trees, case, capsys) -> None:
    src = "/does/not/exist" if case == "missing" else str(trees["base"] / case)
    base = ["encode", src, "--codec", "bicubic-f8", "--cache", str(trees["base"] / f"parity-{case}"), "--quiet"]
    codes, lines = [], []
    for extra in ([], ["--workers", "2"]):
        codes.append(main(base + extra))
        lines.append(capsys.readouterr().err.strip())
    assert codes == [2, 2], (codes, lines)
    assert lines[0] == lines[1], lines  # the same message, word for word


@pytest.mark.slow
def test_workers_and_in_process_accept_the_same_tree(trees, tmp_path) -> None:
    """Both paths encode the good tree (the Dask path starts a LocalCluster: slow)."""
    for extra in ([], ["--workers", "1"]):
        cache = tmp_path / f"c{len(extra)}"
        assert main(["encode", str(trees["good"]), "--codec", "bicubic-f8", "--cache", str(cache), "--quiet"] + extra) == 0


# -- a CLI fill is the namespace LatentDataset reads --------------------------------------------

def test_cli_fill_then_dataset_reads_with_zero_encodes(trees, tmp_path) -> None:
    from latentds import LatentDataset

    cache = tmp_path / "cache"
    assert main(["encode", str(trees["good"]), "--codec", "bicubic-f8", "--cache", str(cache), "--image-size", "64",
                 "56", "--fit", "pad", "--quiet"]) == 0
    ds = LatentDataset(trees["good"], codec="bicubic-f8", cache=cache, image_size=(64, 56), fit="pad")
    calls = []
    codec = ds.codec
    for name in ("encode", "encode_dist"):
        original = getattr(codec, name)

        def counting(*a, _orig=original, **k):
            calls.append(1)
            return _orig(*a, **k)

        setattr(codec, name, counting)
    for i in range(len(ds)):
        z, _ = ds[i]
        assert tuple(z.shape) == (1, 8, 7)
    assert calls == []
    assert ds.latent_channels == 1


# -- class names for stock readers ----------------------------------------------------------

def test_class_names_reach_webdataset_and_zarr(trees, tmp_path) -> None:
    import webdataset as wds
    import zarr

    from latentds import LatentDataset

    cache = tmp_path / "cache"
    ds = LatentDataset(trees["good"], codec="bicubic-f8", cache=cache, image_size=(64, 48))
    ds.fill(progress=False)
    ds.compact()
    assert main(["export", str(cache), str(tmp_path / "wds")]) == 0
    listing = json.loads((tmp_path / "wds" / "shardlist.json").read_text())
    assert listing["classes"] == ["benign", "malignant"]
    urls = [str(tmp_path / "wds" / e["url"]) for e in listing["shardlist"]]
    names = sorted(listing["classes"][int(cls)] for _, cls in
                   wds.WebDataset(urls, shardshuffle=False).decode().to_tuple("npy", "cls"))
    assert names == ["benign", "benign", "malignant", "malignant"]

    assert main(["export", str(cache), str(tmp_path / "lat.zarr"), "--format", "zarr"]) == 0
    root = zarr.open_group(str(tmp_path / "lat.zarr"), mode="r")
    classes = list(root.attrs["classes"])
    assert classes == ["benign", "malignant"]
    assert sorted(classes[t] for t in root["targets"][:]) == names


def test_export_lists_the_namespaces_to_choose_from(trees, tmp_path, capsys) -> None:
    from latentds import LatentDataset

    cache = tmp_path / "cache"
    for codec in ("bicubic-f8", "bicubic-f4"):
        LatentDataset(trees["good"], codec=codec, cache=cache).fill(progress=False)
    assert main(["export", str(cache), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    namespaces = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(namespaces) == 2 and all(ns in err for ns in namespaces), err


def test_an_unknown_namespace_lists_the_ones_there(trees, tmp_path, capsys) -> None:
    """``--namespace`` with a typo: one line naming the namespaces present (was 'no latentds namespaces', exit 1)."""
    from latentds import LatentDataset

    cache = tmp_path / "cache"
    ds = LatentDataset(trees["good"], codec="bicubic-f8", cache=cache)
    ds.fill(progress=False)
    ns = ds.namespace
    for cmd in ("verify", "gc", "inspect"):
        assert main([cmd, str(cache), "--namespace", "deadbeef"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("latentds: error: ") and "'deadbeef'" in err and ns in err, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("workers", [[], ["--workers", "1"]], ids=["in-process", "dask"])
def test_cuda_without_a_gpu_is_one_line_before_any_work(trees, tmp_path, workers, capsys) -> None:
    """Was a torch traceback in process, and on Dask every file recorded as a failure in the cache."""
    cache = tmp_path / "cache"
    code = _main(["encode", str(trees["good"]), "--codec", "bicubic-f8", "--cache", str(cache), "--device", "cuda",
                  "--quiet", *workers])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("latentds: error: --device cuda") and "--device cpu" in err, err
    assert not cache.exists()  # nothing written: no failure records for files that are fine


def test_output_into_a_closed_pipe_is_no_traceback() -> None:
    """``latentds codecs | head -1``: the reader leaves early; was a BrokenPipeError traceback."""
    p = subprocess.Popen(PY + ["codecs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # before the command writes anything: its first write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == "", err


def test_help_is_fast_and_has_examples() -> None:
    import time

    for cmd in (["--help"], ["encode", "--help"], ["export", "--help"], ["sweep", "--help"], ["codecs", "--help"],
                ["inspect", "--help"], ["gc", "--help"], ["train-probe", "--help"], ["demo", "--help"],
                ["verify", "--help"], ["compact", "--help"]):
        t0 = time.perf_counter()
        out = subprocess.run(PY + cmd, capture_output=True, text=True, timeout=60)
        took = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr
        assert "example" in out.stdout, cmd
        assert took < 3.0, (cmd, took)  # ~0.25 s on an idle 2-core box; generous for a loaded CI
        assert "torch" not in out.stderr


def test_missing_extra_is_named_in_one_line(trees, tmp_path) -> None:
    """A feature whose extra is absent says which extra to install (lightning hidden here)."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'timm'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _Block())\n")
    cfg = tmp_path / "probe.yaml"
    cfg.write_text("{}\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run(PY + ["train-probe", "--config", str(cfg)], capture_output=True, text=True, timeout=120,
                         env=env)
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and "latentds[train]" in err, err


def test_demo_picture_shows_the_finding(tmp_path) -> None:
    """The demo's crop is centred on the finding and has one panel per codec with weights."""
    from PIL import Image

    from latentds.demo_figure import finding_crop_figure, locate_finding
    from latentds.testing.synthetic import phantom_with_finding

    pos, _ = phantom_with_finding(3, (192, 160), positive=True)
    neg, _ = phantom_with_finding(3, (192, 160), positive=False)
    cy, cx = locate_finding(pos, neg)
    assert abs(pos[cy - 6:cy + 7, cx - 6:cx + 7] - neg[cy - 6:cy + 7, cx - 6:cx + 7]).max() > 0.05
    out = finding_crop_figure(["bicubic-f4", "s2d-f4c16"],
                              tmp_path / "crops.png", crop=40, zoom=2)
    img = np.asarray(Image.open(out))
    assert img.shape == (16 + 80, 3 * (80 + 6))
    tiles = [img[16:, i * 86:i * 86 + 80].astype(float) for i in range(3)]
    assert np.array_equal(tiles[0], tiles[2])  # s2d at C = f^2 is lossless: same pixels as the original
    assert not np.array_equal(tiles[0], tiles[1])  # bicubic-f4 is not


def test_verify_sources_finds_a_file_changed_under_the_same_size_and_mtime(tmp_path, capsys, monkeypatch) -> None:
    # entries hold a content identity only under an identity key (issue 11 item 7): without one
    # there is nothing to compare a source with
    monkeypatch.setenv("LATENTDS_IDENTITY_KEY", "k" * 32)
    root = _png_tree(tmp_path / "src")
    cache = tmp_path / "cache"
    assert main(["encode", str(root), "--codec", "bicubic-f8", "--cache", str(cache), "--quiet"]) == 0
    assert main(["verify", str(cache), "--sources", str(root), "--codec", "bicubic-f8"]) == 0
    victim = root / "benign" / "0.png"
    st = victim.stat()
    img = np.asarray(Image.open(victim)).copy()
    img[0, 0] ^= 0xFF
    Image.fromarray(img).save(victim)
    if victim.stat().st_size != st.st_size:  # PNG compression may change the size: then it is a plain miss
        pytest.skip("the edit changed the file size")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    assert main(["verify", str(cache), "--sources", str(root), "--codec", "bicubic-f8"]) == 1
    out = capsys.readouterr().out
    assert "STALE" in out and "0.png" in out


def test_source_id_keeps_a_moved_tree_cached(tmp_path) -> None:
    """encode --source-id NAME, move the tree, LatentDataset(source_id=NAME) encodes nothing."""
    import shutil

    from latentds import LatentDataset

    root = _png_tree(tmp_path / "a")
    cache = tmp_path / "cache"
    assert main(["encode", str(root), "--codec", "bicubic-f8", "--cache", str(cache), "--source-id", "mammo-train",
                 "--quiet"]) == 0
    moved = tmp_path / "b"
    shutil.move(root, moved)
    for source_id, encodes in ((None, True), ("mammo-train", False)):  # without the name, the moved tree is new
        ds = LatentDataset(moved, codec="bicubic-f8", cache=cache, source_id=source_id)
        calls = []
        for name in ("encode", "encode_dist"):
            original = getattr(ds.codec, name)
            setattr(ds.codec, name, lambda *a, _o=original, **k: (calls.append(1), _o(*a, **k))[1])
        for i in range(len(ds)):
            ds[i]
        assert bool(calls) == encodes, (source_id, calls)


def test_lightning_advert_is_filtered_once_trainers_is_imported(tmp_path) -> None:
    """A sweep builds one Trainer per method: Lightning's "💡 Tip" line must not print each time."""
    script = (
        "import latentds.train, torch, lightning as L\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "class M(L.LightningModule):\n"
        "    def __init__(self): super().__init__(); self.l = torch.nn.Linear(2, 1)\n"
        "    def training_step(self, b, i): return self.l(b[0]).sum()\n"
        "    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), 0.1)\n"
        f"t = L.Trainer(max_steps=1, enable_progress_bar=False, default_root_dir={str(tmp_path)!r})\n"
        "t.fit(M(), DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2))\n"
        "print('fitted')\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "fitted" in out.stdout, out.stderr[-2000:]
    assert "Tip" not in out.stdout + out.stderr


def test_encode_views_are_read_by_latentdataset_with_zero_encodes(tmp_path: Path) -> None:
    """``latentds encode --views K`` caches K views per image in the namespace that
    ``LatentDataset(..., views=K)`` reads: filling it afterwards encodes nothing."""
    import latentds

    src = _png_tree(tmp_path / "src", shape=(32, 32))
    cache = tmp_path / "cache"
    assert main(["encode", str(src), "--codec", "bicubic-f8", "--cache", str(cache), "--views", "2", "--quiet"]) == 0
    ds = latentds.LatentDataset(src, codec="bicubic-f8", cache=cache, views=2)
    report = ds.fill(progress=False)
    assert (report.encoded, report.cached, len(ds)) == (0, 8, 4)  # 4 images x 2 views, all cached
