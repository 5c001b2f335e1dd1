"""The GPU training script for the six shipped codecs runs with only torch, numpy,
safetensors and diffusers importable, writes a flat output folder, and its codecs load
through create_codec."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "latentds" / "train" / "vae" / "train_six.py"

#: Absent on the GPU machine (or must not be needed there).
BLOCKED = ["pydicom", "pyarrow", "google_crc32c", "webdataset", "zarr", "dask", "s3fs", "fsspec", "lightning",
           "timm", "skimage", "torchmetrics"]

RUNNER = textwrap.dedent('''
    import importlib.machinery, json, runpy, sys
    BLOCK = set(json.loads(sys.argv[1]))
    class _Loader:
        def create_module(self, spec):
            raise ImportError("blocked (absent on the GPU machine): " + spec.name)
        def exec_module(self, module):
            raise ImportError("blocked")
    class Blocker:
        # Availability probes (importlib.util.find_spec, as diffusers does) see a spec; importing fails.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                return importlib.machinery.ModuleSpec(name, _Loader())
            return None
    sys.meta_path.insert(0, Blocker())
    script = sys.argv[2]
    sys.argv = sys.argv[2:]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        print("IMPORTED_BLOCKED=" + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)))
''')


def tiny_npz(path: Path) -> Path:
    from latentds.testing.synthetic import phantom

    arrays = {}
    for i in range(3):
        arrays[f"train_{i:04d}"] = phantom(i, (96, 80), positive=True).astype(np.float16)
    arrays["train_weight"] = np.ones(3, dtype=np.float32)
    arrays["train_names"] = np.asarray(["a", "b", "c"])
    arrays["val_0000"] = phantom(50, (64, 64), positive=True).astype(np.float16)
    arrays["pair_pos_0000"] = phantom(60, (64, 64), positive=True).astype(np.float16)
    arrays["pair_neg_0000"] = phantom(60, (64, 64), positive=False).astype(np.float16)
    arrays["pair_box_0000"] = np.array([0, 64, 0, 64], dtype=np.int32)
    arrays["info_json"] = np.asarray(json.dumps({"train": ["a", "b", "c"], "val": ["v"], "held_out": ["x"]}))
    np.savez_compressed(path, **arrays)
    return path


def test_train_six_runs_without_the_blocked_packages(tmp_path: Path) -> None:
    data = tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", RUNNER, json.dumps(BLOCKED), str(SCRIPT), "--data", str(data), "--out", str(out),
           "--device", "cpu", "--budget-s", "600", "--only", "f4c1,f16c16", "--width", "8", "--crop", "32",
           "--batch", "2", "--crop16", "32", "--batch16", "2", "--alpha-grid", "3", "--max-steps", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                              "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "IMPORTED_BLOCKED=[]" in res.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == ["kl-f16c16.json", "kl-f16c16.safetensors", "kl-f4c1.json", "kl-f4c1.safetensors", "train_log.json"]
    assert all(p.is_file() for p in out.iterdir())  # flat: no subfolders
    log = json.loads((out / "train_log.json").read_text())
    assert log["card"].startswith("cpu") and [c["name"] for c in log["codecs"]] == ["kl-f4c1", "kl-f16c16"]
    for c in log["codecs"]:
        assert c["steps"] == 2 and set(c["final_losses"]) == {"loss", "l1", "hf_l1", "kl"}
        assert c["val"]["mean_gain_db"] >= 0.0  # the α guard: never worse than s2d on validation

    from latentds.codecs import create_codec
    from latentds.codecs.kl import ResidualKLCodec

    card = json.loads((out / "kl-f16c16.json").read_text())
    assert card["architecture"] == "residual-s2d" and card["trained_on"] == log["card"] and card["steps"] == 2
    codec = create_codec(str(out / "kl-f16c16.safetensors"))
    assert isinstance(codec, ResidualKLCodec) and (codec.f, codec.latent_channels) == (16, 16)
    assert codec.alpha == card["alpha"]
    x = torch.rand(1, 1, 64, 48)
    assert codec.decode(codec.encode(x)).shape == (1, 1, 64, 48)


@pytest.mark.parametrize("name", ["kl-f4c1", "kl-f4c4", "kl-f8c1", "kl-f8c4", "kl-f16c1", "kl-f16c16"])
def test_script_model_config_fits_the_size_budget(name: str) -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_six
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from latentds.codecs import build

    f, c = int(name[4:name.index("c", 4)]), int(name[name.index("c", 4) + 1:])
    cfg = train_six.model_config(build, f, c, 32, 1)
    model = build.build_model(cfg, seed=0, where=name)
    n = sum(p.numel() for p in model.parameters())
    assert 2 ** (len(cfg["block_out_channels"]) - 1) == f and cfg["latent_channels"] == c
    assert n * 2 < 40e6 / 6  # fp16 bytes: six of them stay under the 40 MB budget


def _import_script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_six
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return train_six


def test_finding_crops_are_centred_on_the_masked_finding(tmp_path: Path) -> None:
    from latentds.testing.synthetic import phantom
    from latentds.train.vae.prepare_six_data import finding_mask

    pos = phantom(1_000, (160, 128), positive=True)
    neg = phantom(1_000, (160, 128), positive=False)
    mask = finding_mask(pos, neg)
    assert 0 < mask.sum() < mask.size // 20  # a small finding, dilated
    arrays = {"train_0000": pos.astype(np.float16), "train_mask_0000": mask,
              "train_0001": neg.astype(np.float16), "train_weight": np.asarray([0.01, 0.99], np.float32),
              "val_0000": pos.astype(np.float16)}
    np.savez(tmp_path / "d.npz", **arrays)
    ts = _import_script()
    data = ts.Data(str(tmp_path / "d.npz"), torch.device("cpu"))
    assert data.with_finding == [0] and data.masks[1] is None
    rng = np.random.default_rng(0)
    masks: list[torch.Tensor] = []
    x = data.batch(rng, 16, 48, finding_crop=1.0, masks=masks)
    # Every crop shows the finding although the positive image has 1 % of the sampling mass.
    assert x.shape == (16, 1, 48, 48) and len(masks) == 16 and all(bool(m.any()) for m in masks)
    # Uniform crops (the default) of the same data almost never do, and carry all-false masks
    # for the image without a mask.
    masks_u: list[torch.Tensor] = []
    data.batch(np.random.default_rng(0), 16, 48, masks=masks_u)
    assert sum(bool(m.any()) for m in masks_u) <= 2


def test_init_from_starts_from_the_given_codec(tmp_path: Path) -> None:
    ts = _import_script()
    from latentds.codecs import build, codec_file, residual
    from safetensors.torch import load_file

    data = tiny_npz(tmp_path / "tiny.npz")
    src = tmp_path / "src"
    cfg = ts.model_config(build, 4, 1, 8, 1)
    model = residual.ResidualS2DAutoencoder(build.build_model(cfg, seed=3, where="t"), 4, 1)
    with torch.no_grad():  # move away from the exact-s2d init, so a fresh start would differ
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    codec_file.save_kl_codec(model, src / "kl-f4c1.safetensors", name="kl-f4c1", alpha=1.0, tensor_dtype="fp16")
    out = tmp_path / "out"
    rc = ts.main(["--data", str(data), "--out", str(out), "--device", "cpu", "--budget-s", "0", "--only", "f4c1",
                  "--width", "8", "--alpha-grid", "3", "--init-from", str(src)])
    assert rc == 0
    a, b = load_file(str(src / "kl-f4c1.safetensors")), load_file(str(out / "kl-f4c1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # 0 steps: the same weights
    card = json.loads((out / "kl-f4c1.json").read_text())
    assert "fine-tuned from" in card["objective"]
    # Another architecture is refused with a message naming the file and the fix.
    with pytest.raises(SystemExit, match="another architecture"):
        ts.main(["--data", str(data), "--out", str(out), "--device", "cpu", "--budget-s", "0", "--only", "f4c1",
                 "--width", "16", "--init-from", str(src)])
