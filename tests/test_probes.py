"""The depth-to-space probe stem (latentds.probes): scale rule, exact start, FLOPs counted,
the stem's own learning rate, typed errors. CPU, seconds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latentds.errors import LatentdsError
from latentds.probes import (DepthToSpaceStem, StemmedBackbone, build_probe_backbone, make_probe_module, parse_probe,
                             stem_lr_factor, stem_scale)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def test_stem_scale_rule():
    assert stem_scale(4, 16) == 4 and stem_scale(8, 64) == 8 and stem_scale(16, 256) == 16  # lossless: full res
    assert stem_scale(4, 4) == 2 and stem_scale(8, 4) == 2 and stem_scale(8, 16) == 4
    assert stem_scale(4, 1) == 1 and stem_scale(8, 3) == 1  # one channel / non-square: no rearrangement
    assert stem_scale(8, 12) == 2  # largest s with s*s <= C that divides f
    assert stem_scale(4, 64) == 4  # never above image resolution
    with pytest.raises(LatentdsError):
        stem_scale(0, 4)


@pytest.mark.parametrize("s", [2, 4, 8])
def test_d2s_init_inverts_space_to_depth(s):
    """At step 0 every feature of the stem output is the image again (to the 1e-3 symmetry
    noise): the backbone starts from what the full-size probe sees."""
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    stem = DepthToSpaceStem(s * s, s, out_chans=3)
    y = stem(F.pixel_unshuffle(x, s))
    assert y.shape == (2, 3, 32, 32)
    for j in range(3):
        assert (y[:, j:j + 1] - x).abs().max() < 0.05
    rnd = DepthToSpaceStem(s * s, s, out_chans=3, init="random")(F.pixel_unshuffle(x, s))
    assert (rnd[:, :1] - x).abs().max() > 0.2  # a random stem is not the inverse


def test_stem_and_probe_errors_are_typed():
    for bad in (dict(scale=0), dict(kernel=2), dict(init="zeros")):
        kw = dict(in_chans=4, scale=2) | bad
        with pytest.raises(LatentdsError):
            DepthToSpaceStem(**kw)
    with pytest.raises(LatentdsError, match="nothing after"):
        parse_probe("d2s+")
    assert parse_probe("d2s+resnet18").stem and not parse_probe("small-cnn").stem


def test_stemmed_probe_counts_the_stem():
    from latentds.flops import gmacs

    feats, has_stem = build_probe_backbone("d2s+small-cnn", 16, f=4)
    assert has_stem and isinstance(feats, StemmedBackbone)
    plain, no_stem = build_probe_backbone("d2s+small-cnn", 1, f=4)  # one channel: no stem
    assert not no_stem and not isinstance(plain, StemmedBackbone)
    with_stem = gmacs(feats, (1, 16, 12, 10))
    behind = gmacs(feats.backbone, (1, 4, 48, 40))
    stem_only = gmacs(feats.stem, (1, 16, 12, 10))
    # plus the two standardisations (mean: 1 per element under the paper rule)
    assert stem_only > 0 and behind + stem_only <= with_stem <= (behind + stem_only) * 1.01


def test_probe_module_stem_lr_flip_and_forward():
    m = make_probe_module("d2s+small-cnn", 16, 2, f=4, lr=3e-3, stem_lr_scale=0.1)
    assert m.hparams.flip is False and m.model.standardize is False  # moved into the stem backbone
    opt = m.configure_optimizers()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([3e-4, 3e-3])  # 0.1 x 16 / C at C = 16
    wide = make_probe_module("d2s+small-cnn", 64, 2, f=8, lr=3e-3).configure_optimizers()
    assert sorted(g["lr"] for g in wide.param_groups) == pytest.approx([3e-3 * 0.1 * 16 / 64, 3e-3])
    assert stem_lr_factor(4) == pytest.approx(0.4) and stem_lr_factor(1, 1.0) == 1.0  # capped at the probe's lr
    n_stem = sum(p.numel() for p in m.model.backbone.stem.parameters())
    assert sum(p.numel() for g in opt.param_groups if g["lr"] < 1e-3 for p in g["params"]) == n_stem
    out = m(torch.rand(3, 16, 12, 10))
    assert out.shape == (3, 1)
    plain = make_probe_module("d2s+small-cnn", 1, 2, f=4)
    assert plain.hparams.flip is True and plain.model.standardize is True
    lin = make_probe_module("d2s+small-cnn", 16, 2, f=4, mode="linear")
    assert not any(p.requires_grad for p in lin.model.backbone.parameters())


def test_stem_before_a_timm_backbone_pads_to_its_multiple():
    pytest.importorskip("timm")
    feats, has_stem = build_probe_backbone("d2s+resnet18", 16, f=4)
    assert has_stem
    out = feats.eval()(torch.rand(2, 16, 10, 9))  # stem output 40x36
    assert out.shape == (2, feats.num_features)
