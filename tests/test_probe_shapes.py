"""HRNet probes take every latent shape (issue 17): inputs are padded (or resized) to the
backbone's required multiple, read from the backbone; a shape no fitting can rescue fails at
construction in one line; the GMACs count the padded input, in a mode that cannot fail; and
the outputs of a run are written as soon as they exist, so a late failure loses nothing.

Every training run here is ``hrnet_w18_small`` (``pretrained=False``), CPU, one epoch on a
handful of samples. A binary fit_probe case and a 5-class command-line case run by default;
the rest of the shape grid (each case 10-30 s on 2 shared cores) is marked slow."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

pytest.importorskip("timm")
pytest.importorskip("lightning")

from latentds.flops import FlopCountError, count_macs, gmacs  # noqa: E402
from latentds.train.probe import (ProbeModule, ProbeShapeError, fit_probe, load_config, load_probe,  # noqa: E402
                            required_multiple)
from latentds.train.probe.model import ProbeModel, build_backbone, fitted_size  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
HRNET = "hrnet_w18_small"
#: latent (H, W) -> what hrnet_w18_small sees after padding to its multiple, 32
SHAPES = {(24, 20): (32, 32), (32, 32): (32, 32), (64, 52): (64, 64), (128, 104): (128, 128)}
FAST = {((24, 20), 2)}  # the default run's representative (the rest: slow)


def _grid(fast: set) -> list:
    return [pytest.param(hw, k, marks=() if (hw, k) in fast else pytest.mark.slow, id=f"{hw[0]}x{hw[1]}-{k}class")
            for hw in SHAPES for k in (2, 5)]


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: more threads only oversubscribe them (a 10x slowdown measured here)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _counted_reference(in_chans: int, num_classes: int, hw: tuple[int, int]) -> float:
    """GMACs of a fresh hrnet_w18_small + head on the padded shape, counted directly."""
    backbone = build_backbone(HRNET, in_chans)
    head = nn.Linear(backbone.num_features, 1 if num_classes == 2 else num_classes)
    return gmacs(nn.Sequential(backbone, head), (1, in_chans, *hw))


# ----------------------------------------------------------------------------- fitting, no training

def test_multiple_is_read_from_the_backbone() -> None:
    assert required_multiple(build_backbone(HRNET, 4)) == 32           # timm feature_info reductions 2..32
    assert required_multiple(build_backbone("small-cnn", 4)) == 1     # no feature_info: any shape
    features = build_backbone("resnet10t", 1, features_only=True, out_indices=(1, 2))  # a FeatureInfo object
    assert required_multiple(features) == 8
    assert fitted_size((24, 20), 32) == (32, 32) and fitted_size((64, 64), 32) == (64, 64)
    assert fitted_size((24, 20), 1) == (24, 20)


def test_pad_is_centred_zeros_after_standardising_and_resize_fills() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 24, 20) * 3 + 7
    m = ProbeModel(HRNET, 4, 2, input_fit="pad")
    z = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-6)
    padded = m.fit_input(z)
    assert padded.shape == (2, 4, 32, 32)
    assert torch.equal(padded[..., 4:28, 6:26], z)                       # centred
    border = padded.clone()
    border[..., 4:28, 6:26] = 0
    assert not border.any()                                             # zeros = the image's mean
    r = ProbeModel(HRNET, 4, 2, input_fit="resize")
    resized = r.fit_input(z)
    assert resized.shape == (2, 4, 32, 32) and resized[..., 0, 0].abs().sum() > 0
    assert ProbeModel(HRNET, 4, 2, input_fit="none").fit_input(z).shape == (2, 4, 24, 20)
    with torch.no_grad():
        assert m.eval()(x).shape == (2, 1) and r.eval()(x).shape == (2, 1)
    with pytest.raises(ValueError, match="input_fit"):
        ProbeModel(HRNET, 4, 2, input_fit="crop")


def test_a_shape_no_fitting_rescues_fails_at_construction_in_one_line(tmp_path: Path) -> None:
    # unpadded, HRNet's branch fusion cannot add a 13-wide map to a 14-wide one
    with pytest.raises(ProbeShapeError) as info:
        ProbeModule(HRNET, 4, 2, input_fit="none", input_shape=(4, 64, 52))
    msg = str(info.value)
    assert "\n" not in msg and "'hrnet_w18_small'" in msg and "4x64x52" in msg and "input_fit" in msg
    # a ViT takes 224x224 only: padding 24x20 to its multiple (16) does not help
    with pytest.raises(ProbeShapeError, match=r"'vit_tiny_patch16_224' cannot take 4x24x20 inputs after pad to a "
                                              r"multiple of 16 -> 32x32"):
        ProbeModule("vit_tiny_patch16_224", 4, 2, input_shape=(4, 24, 20))
    with pytest.raises(ProbeShapeError, match="built for 4 input channels but the inputs have 1"):
        ProbeModule(HRNET, 4, 2, input_shape=(1, 32, 32))
    # fit_probe checks before any training: nothing is written
    x, y = torch.randn(4, 4, 64, 52), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ProbeShapeError):
        fit_probe(TensorDataset(x, y), TensorDataset(x, y), in_chans=4, num_classes=2, backbone=HRNET,
                  input_fit="none", epochs=1, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_flops_count_runs_in_eval_mode_and_restores_modes() -> None:
    """The issue's crash: a batch of one in training mode at 32x32 (HRNet's lowest branch is 1x1)."""
    net = nn.Sequential(build_backbone(HRNET, 4), nn.Linear(1024 * 2, 1)).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        net(torch.zeros(1, 4, 32, 32))                                  # what used to run inside the count
    c_train = count_macs(net, (1, 4, 32, 32))                           # paper rule: counted in eval mode
    assert all(m.training for m in net.modules())                      # modes restored
    assert c_train.total == count_macs(net.eval(), (1, 4, 32, 32)).total
    # and it is the paper's training-mode count: half of a batch of two counted in train mode
    # under the rule that follows the mode (the batch of two runs in train mode without error)
    assert c_train.total * 2 == count_macs(net.train(), (2, 4, 32, 32), rule="fvcore").total
    assert c_train.total > count_macs(net, (1, 4, 32, 32), rule="fvcore-eval").total


def test_padded_gmacs_equal_the_count_of_the_padded_shape() -> None:
    m = ProbeModule(HRNET, 4, 5, input_shape=(4, 64, 52))
    from latentds.train.probe import count_probe_gmacs

    g, err = count_probe_gmacs(m, (4, 64, 52))
    assert err is None
    assert g == _counted_reference(4, 5, (64, 64))
    assert g > _counted_reference(4, 5, (32, 32))


class DataDependent(nn.Module):
    """A backbone whose forward branches on a value: it runs on real tensors, not on meta."""

    num_features = 3

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if float(y.abs().amax()) > 1e6:  # data-dependent: cannot run on the meta device
            y = y / 2
        return y.mean(dim=(2, 3))


def test_a_failed_count_loses_nothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 2, 12, 10), torch.arange(8) % 2
    module = ProbeModule("small-cnn", 2, 2, lr=1e-2)
    module.model.backbone = DataDependent(2)
    module.model.head = nn.Linear(3, 1)
    with pytest.warns(RuntimeWarning, match="not counted"):
        r = fit_probe(TensorDataset(x, y), TensorDataset(x, y), in_chans=2, num_classes=2, module=module, epochs=1,
                      batch_size=4, bootstrap=20, output=tmp_path / "out")
    assert math.isnan(r.gmacs) and 0.0 <= r.auroc <= 1.0
    err = r.extra["gmacs_error"]
    assert "DataDependent + head at input 1x2x12x10 not counted" in err and "meta" in err
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"probe.pt", "predictions.csv", "result.json"}
    saved = json.loads((out / "result.json").read_text())["result"]
    assert saved["gmacs"] is None and saved["extra"]["gmacs_error"] == err and saved["auroc"] == r.auroc
    with pytest.raises(FlopCountError, match="DataDependent at input 1x2x12x10"):
        count_macs(DataDependent(2), (2, 12, 10))


# ----------------------------------------------------------------------------- fit_probe on every shape

@pytest.mark.parametrize("hw, k", _grid(FAST))
def test_fit_probe_hrnet_every_latent_shape(tmp_path: Path, hw: tuple[int, int], k: int) -> None:
    torch.manual_seed(0)
    n = 2 * k + 1 if k > 2 else 7  # odd: with batch 3 the last batch of 7 is one sample (dropped at 32x32)
    x, y = torch.randn(n, 4, *hw), torch.arange(n) % k
    r = fit_probe(TensorDataset(x, y), TensorDataset(x, y), in_chans=4, num_classes=k, backbone=HRNET, epochs=1,
                  batch_size=3, bootstrap=20, output=tmp_path / "out")
    padded = SHAPES[hw]
    assert r.input_shape == (4, *hw) and r.backbone_input_shape == (4, *padded) and r.input_fit == "pad"
    assert r.num_classes == k and 0.0 <= r.auroc <= 1.0 and r.ci_lo <= r.auroc <= r.ci_hi
    assert r.gmacs == _counted_reference(4, k, padded)
    assert r.extra["multiple"] == 32 and "gmacs_error" not in r.extra
    saved = json.loads((tmp_path / "out" / "result.json").read_text())["result"]
    assert saved["input_fit"] == "pad" and saved["backbone_input_shape"] == [4, *padded]
    assert saved["gmacs"] == r.gmacs
    rows = (tmp_path / "out" / "predictions.csv").read_text().split()
    assert len(rows) == n + 1 and rows[0].count("score") == (1 if k == 2 else k)
    probe = load_probe(tmp_path / "out" / "probe.pt")
    assert probe.hparams.input_fit == "pad"
    with torch.no_grad():
        assert torch.allclose(probe.eval()(x[:2]), r.module.eval()(x[:2]), atol=1e-5)


# ----------------------------------------------------------------------------- latentds train-probe

def _png_folder(root: Path, k: int, per_class: int, size: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c in range(k):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = (torch.rand(size, generator=g) * 200 + 20 * c).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(img).save(root / f"class{c}" / f"s{i}.png")


@pytest.mark.parametrize("hw, k", _grid({((24, 20), 5)}))
def test_train_probe_cli_hrnet_every_latent_shape(tmp_path: Path, hw: tuple[int, int], k: int, capsys) -> None:
    from latentds.cli import main

    image = (4 * hw[0], 4 * hw[1])          # bicubic-f4 latents of exactly hw
    _png_folder(tmp_path / "data", k, 3 if k > 2 else 4, image)
    cfg = {"model": {"backbone": HRNET},
           "data": {"root": str(tmp_path / "data"), "cache": str(tmp_path / "cache"), "codec": "bicubic-f4",
                    "image_size": list(image), "crop_roi": False},
           "optim": {"epochs": 1, "batch_size": 3}, "trainer": {"accelerator": "cpu"},
           "eval": {"bootstrap": 20}, "output": str(tmp_path / "out")}
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train-probe", "--config", str(tmp_path / "probe.yaml")]) == 0
    padded = SHAPES[hw]
    printed = capsys.readouterr().out
    expected = f"input 1x{hw[0]}x{hw[1]}" + ("" if padded == hw else f" (pad -> {padded[0]}x{padded[1]})")
    assert expected + ";" in printed
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["config"]["model"]["input_fit"] == "pad" and saved["result"]["input_fit"] == "pad"
    assert saved["result"]["input_shape"] == [1, *hw] and saved["result"]["backbone_input_shape"] == [1, *padded]
    assert saved["result"]["gmacs"] == _counted_reference(1, k, padded)
    assert saved["result"]["num_classes"] == k
    assert (tmp_path / "out" / "probe.pt").is_file() and (tmp_path / "out" / "predictions.csv").is_file()


def test_train_probe_cli_unusable_shape_is_one_line(tmp_path: Path, capsys) -> None:
    from latentds.cli import main

    _png_folder(tmp_path / "data", 2, 2, (96, 80))
    cfg = {"model": {"backbone": HRNET, "input_fit": "none"},
           "data": {"root": str(tmp_path / "data"), "cache": str(tmp_path / "cache"), "codec": "bicubic-f4",
                    "image_size": [96, 80], "crop_roi": False},
           "optim": {"epochs": 1}, "output": str(tmp_path / "out")}
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train-probe", "--config", str(tmp_path / "probe.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the encoding progress bar
    assert err.startswith("latentds: error: backbone 'hrnet_w18_small' cannot take 1x24x20")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- docs/probe.md example

def _docs_example() -> dict:
    text = (ROOT / "docs" / "probe.md").read_text()
    block = re.search(r"Example config\b.*?```yaml\n(.*?)```", text, re.S)
    assert block, "docs/probe.md lost its example config"
    return yaml.safe_load(block.group(1))


@pytest.mark.parametrize("backbone", [pytest.param(None, marks=pytest.mark.slow, id="as-documented"),
                                      pytest.param(HRNET, id="hrnet_w18_small")])
def test_docs_example_config_runs_scaled_down(tmp_path: Path, backbone: str | None) -> None:
    """The documented config (kl-f8c4, image_size [1024, 832] -> 128x104 latents, which no HRNet
    takes unpadded) with its sizes scaled down 4x (32x26 latents), a few images, one epoch, one
    CPU process instead of 4 DDP GPUs."""
    from latentds.testing import synthetic
    from latentds.train.probe import run_from_config

    doc = _docs_example()
    assert doc["data"]["codec"] == "kl-f8c4" and doc["data"]["image_size"] == [1024, 832]
    image = [s // 4 for s in doc["data"]["image_size"]]
    synthetic.make_dataset(tmp_path / "train", n_per_class=3, shape=tuple(image), seed=1)
    synthetic.make_dataset(tmp_path / "test", n_per_class=2, shape=tuple(image), seed=2)
    doc["data"].update(root=str(tmp_path / "train"), test_root=str(tmp_path / "test"), cache=str(tmp_path / "cache"),
                       image_size=image)
    if backbone:
        doc["model"]["backbone"] = backbone
    doc["optim"].update(epochs=1, batch_size=4)
    doc["trainer"] = {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
    doc["eval"] = {"bootstrap": 20}
    doc["output"] = str(tmp_path / "out")
    (tmp_path / "probe.yaml").write_text(yaml.safe_dump(doc))
    r = run_from_config(load_config([tmp_path / "probe.yaml"]))
    assert r.input_shape == (4, 32, 26) and r.backbone_input_shape == (4, 32, 32)
    assert r.mode == "linear" and r.n_train == 6 and r.n_test == 4 and 0.0 <= r.auroc <= 1.0
    assert r.gmacs > 0 and "gmacs_error" not in r.extra
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"probe.pt", "predictions.csv", "result.json"}
