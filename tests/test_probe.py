"""Probe trainer: both modes on a tiny latent dataset, AUROC + bootstrap CI, multiclass, config/CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch.utils.data import Subset, TensorDataset

from latentds.testing import synthetic
from latentds.dataset import LatentDataset
from latentds.train.probe import (ProbeModule, auroc, bootstrap_auroc, fit_probe, load_config, stratified_split)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_latents(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    synthetic.make_dataset(root / "data", n_per_class=6, shape=(64, 48), seed=1)
    ds = LatentDataset(root / "data", codec="bicubic-f4", cache=root / "cache", crop_roi=False, image_size=(64, 48))
    ds.fill(progress=False)
    tr, te = stratified_split(ds.targets, 0.5, seed=0)
    return root, ds, Subset(ds, tr), Subset(ds, te)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("mode", ["full", "linear"])
def test_probe_modes_on_latents(tiny_latents, mode):
    _, ds, train, test = tiny_latents
    module = ProbeModule("small-cnn", ds.codec.latent_channels, 2, mode=mode, lr=1e-2)
    before_backbone = _snapshot(module.model.backbone)
    before_head = _snapshot(module.model.head)
    r = fit_probe(train, test, in_chans=1, num_classes=2, module=module, epochs=2, batch_size=4, bootstrap=100)
    after_backbone = module.model.backbone.state_dict()
    changed = [k for k in before_backbone if not torch.equal(before_backbone[k], after_backbone[k])]
    if mode == "linear":
        assert changed == [], f"linear probe changed backbone parameters {changed}"
    else:
        assert changed, "full training left every backbone parameter unchanged"
    assert any(not torch.equal(before_head[k], v) for k, v in module.model.head.state_dict().items())
    assert 0.0 <= r.auroc <= 1.0
    assert r.ci_lo <= r.auroc <= r.ci_hi
    assert r.mode == mode and r.n_test == len(test) and r.input_shape == (1, 16, 12) and r.gmacs > 0


def test_linear_mode_timm_backbone_frozen_batchnorm():
    """A timm backbone with batch norm: linear mode keeps weights and running statistics."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4, 32, 32), torch.arange(16) % 2
    module = ProbeModule("resnet10t", 4, 2, mode="linear")
    before = _snapshot(module.model.backbone)
    r = fit_probe(TensorDataset(x, y), TensorDataset(x, y), in_chans=4, num_classes=2, module=module, epochs=1,
                  batch_size=8, bootstrap=50)
    after = module.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert r.ci_lo <= r.auroc <= r.ci_hi


def test_multiclass_auroc_path():
    torch.manual_seed(0)
    n, k = 60, 5
    y = torch.arange(n) % k
    x = torch.randn(n, 2, 8, 8)
    x[torch.arange(n), 0, y, y] += 4.0  # class-dependent speck: learnable
    r = fit_probe(TensorDataset(x, y), TensorDataset(x, y), in_chans=2, num_classes=k, backbone="small-cnn",
                  epochs=3, batch_size=16, lr=1e-2, bootstrap=100)
    assert r.num_classes == 5
    assert 0.0 <= r.auroc <= 1.0 and r.ci_lo <= r.auroc <= r.ci_hi


def test_multiclass_auroc_is_macro_one_vs_rest():
    from torchmetrics.functional.classification import binary_auroc

    g = torch.Generator().manual_seed(0)
    y = torch.arange(50) % 5
    scores = torch.softmax(torch.randn(50, 5, generator=g) + 2 * torch.nn.functional.one_hot(y, 5), dim=1)
    ovr = [float(binary_auroc(scores[:, c], (y == c).long())) for c in range(5)]
    assert auroc(scores, y, 5) == pytest.approx(sum(ovr) / 5, abs=1e-6)


def test_bootstrap_ci_contains_point_and_perfect_separation():
    y = torch.tensor([0] * 10 + [1] * 10)
    ci = bootstrap_auroc(y.float(), y, 2, n_boot=200)
    assert ci.auroc == ci.lo == ci.hi == 1.0
    g = torch.Generator().manual_seed(1)
    ci = bootstrap_auroc(torch.rand(20, generator=g), y, 2, n_boot=200)
    assert 0 <= ci.lo <= ci.auroc <= ci.hi <= 1 and ci.n_boot > 150


def test_config_unknown_key_and_overrides():
    cfg = load_config([], ["model.mode=linear", "optim.lr=3e-3", "data.image_size=[64,48]"])
    assert cfg["model"]["mode"] == "linear" and cfg["optim"]["lr"] == 3e-3 and cfg["data"]["image_size"] == [64, 48]
    assert cfg["model"]["backbone"] == "hrnet_w64" and cfg["optim"]["batch_size"] == 128
    with pytest.raises(KeyError):
        load_config([], ["optim.lrr=1"])
    with pytest.raises(ValueError):
        load_config([], ["model.mode=half"])


@pytest.mark.parametrize("source", ["latent", "image"])
def test_train_probe_cli(tiny_latents, tmp_path, source, capsys):
    from latentds.cli import main

    root = tiny_latents[0]
    cfg = {"model": {"backbone": "small-cnn"},
           "data": {"root": str(root / "data"), "cache": str(root / "cache"), "codec": "bicubic-f4",
                    "image_size": [64, 48], "crop_roi": False, "source": source},
           "optim": {"epochs": 1, "batch_size": 4}, "eval": {"bootstrap": 50}, "output": str(tmp_path / "out")}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train-probe", "--config", str(path)]) == 0
    assert "AUROC" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "result.json").read_text())["result"]
    assert result["input_shape"] == ([1, 16, 12] if source == "latent" else [1, 64, 48])
    assert result["ci_lo"] <= result["auroc"] <= result["ci_hi"]


def test_fit_probe_scores_every_test_sample_once_in_order(tiny_latents):
    """Trainer.test path, single process: the scores returned are those of ``predict`` on the
    trained module, in test-set order, and the AUROC / CI are computed from them."""
    from latentds.train.probe import Indexed, predict
    from latentds.train.probe.module import _first_occurrence

    _, ds, train, test = tiny_latents
    r = fit_probe(train, test, in_chans=1, num_classes=2, backbone="small-cnn", epochs=1, batch_size=4, lr=1e-2,
                  bootstrap=50)
    scores, targets = predict(r.module, test)
    assert torch.equal(r.targets, targets) and torch.allclose(r.scores, scores, atol=1e-6)
    ci = bootstrap_auroc(r.scores, r.targets, 2, n_boot=50)
    assert (r.auroc, r.ci_lo, r.ci_hi) == (ci.auroc, ci.lo, ci.hi)
    assert r.extra["world_size"] == 1 and r.extra["n_test_gathered"] == r.n_test == len(test)
    assert len(r.extra["rank_state_hashes"]) == 1
    assert Indexed(test)[2][0] == 2 and torch.equal(Indexed(test)[2][1], test[2][0])
    uniq, first = _first_occurrence(torch.tensor([3, 0, 1, 0, 2, 3]))  # a padded, gathered index list
    assert uniq.tolist() == [0, 1, 2, 3] and first.tolist() == [1, 2, 4, 0]


def test_train_probe_cli_d2s_stem(tiny_latents, tmp_path, capsys):
    """``model.backbone: d2s+small-cnn`` on a lossless s2d-f4c16 latent: the stem's f comes from
    the codec, the GMACs count the stem (the CNN then runs at the image's 64x48, not 16x12), and
    the saved probe reloads to the same scores."""
    from latentds.cli import main
    from latentds.train.probe import load_probe, predict
    from latentds.errors import ConfigError
    from latentds.train.probe.stem import stem_probe_module

    root = tiny_latents[0]
    cfg = {"model": {"backbone": "d2s+small-cnn", "stem": {"chans": 2}},
           "data": {"root": str(root / "data"), "cache": str(root / "cache"), "codec": "s2d-f4c16",
                    "image_size": [64, 48], "crop_roi": False},
           "optim": {"epochs": 1, "batch_size": 4}, "eval": {"bootstrap": 50}, "output": str(tmp_path / "out")}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train-probe", "--config", str(path)]) == 0
    assert "AUROC" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "result.json").read_text())["result"]
    assert result["input_shape"] == [16, 16, 12] and result["backbone"] == "d2s+small-cnn"
    # small-cnn at 64x48 with 2 input channels: two 3x3 convs of width 16 alone are ~0.0031 GMACs;
    # the same CNN on the 16x12 latent would be 16x fewer
    assert result["gmacs"] > 0.003
    module = load_probe(tmp_path / "out" / "probe.pt")
    assert module.hparams["stem"]["f"] == 4 and module.hparams["stem"]["chans"] == 2
    assert module.model.backbone.stem.shuffle.upscale_factor == 4
    ds = LatentDataset(root / "data", codec="s2d-f4c16", cache=root / "cache", crop_roi=False, image_size=(64, 48))
    _, te = stratified_split(ds.targets, 0.5, seed=0)
    scores, _ = predict(module, Subset(ds, te))
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[2]) for r in rows] == pytest.approx(scores.tolist(), abs=1e-5)
    # a tensor dataset has no codec to read f from: the error says which key to set
    with pytest.raises(Exception, match="model.stem.f"):
        stem_probe_module("d2s+small-cnn", 16, 2, f=None)
    with pytest.raises(ConfigError, match="stem_probe_module"):
        ProbeModule("d2s+small-cnn", 16, 2)
