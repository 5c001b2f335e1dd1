"""Probes that read latent channels: a learned depth-to-space stem in front of any backbone.

Why: a CNN shares its weights across *latent* pixels, so on a latent with f/s image pixels
per latent pixel and C channels it is translation-equivariant per latent pixel only; every
sub-pixel phase of a small finding lands in different channels and must be learned
separately. With 64-128 training images per class that fails even for a lossless input
(space-to-depth at C = f², issue 12: AUROC at chance where full size scores ~1.0).

The stem maps a C-channel latent to ``k`` channels at ``s`` times its resolution, with
``s = stem_scale(f, C)`` (the largest s <= sqrt(C) that divides f): a convolution to s²·k
channels followed by ``pixel_shuffle(s)``, the learned inverse of a space-to-depth. After it
the backbone's weight sharing is per (f/s)-image-pixel again, and at C = f² per image pixel.
Nothing in it is codec-specific: it learns whatever rearrangement the codec's channels need
(for s2d it can be exact; for a learned KL latent it is a learned 2× or 4× "decoder-lite").
Its cost is counted: it is part of the backbone that :func:`latentds.flops.gmacs` sees.

Flips: mirroring a latent is not mirroring the image (the sub-pixel order inside each latent
pixel stays unmirrored), so with a stem the horizontal-flip augmentation is applied to the
stem's output, where it is an exact image-space flip of the features, instead of to the
latent.

    backbone names:  "small-cnn", any timm name, or "d2s+<either>" (stem then backbone),
                     e.g. "d2s+small-cnn", "d2s+resnet18"; plain names get no stem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .errors import LatentdsError

__all__ = ["STEM_INITS", "STEM_PREFIX", "DepthToSpaceStem", "ProbeError", "ProbeSpec", "StemmedBackbone",
           "build_probe_backbone", "make_probe_module", "parse_probe", "stem_lr_factor", "stem_scale"]

#: "d2s+<backbone>" puts a learned depth-to-space stem in front of <backbone>.
STEM_PREFIX = "d2s+"
#: How the stem's weights start: "d2s" (the plain depth-to-space rearrangement) or "random".
STEM_INITS = ("d2s", "random")


class ProbeError(LatentdsError, ValueError):
    """A probe name or option that cannot be built."""


def stem_scale(f: int, C: int) -> int:
    """Upsampling factor of the stem: the largest s with s² <= C that divides f (1: no stem).

    At C = f² (a lossless space-to-depth) this is f, so the backbone sees full resolution;
    for C = 4 it is 2; for C = 1 (bicubic, one-channel latents) 1."""
    if f < 1 or C < 1:
        raise ProbeError(f"stem_scale: f and C must be >= 1, got f={f}, C={C}")
    s = math.isqrt(int(C))
    while s > 1 and f % s:
        s -= 1
    return max(1, min(s, int(f)))


class DepthToSpaceStem(nn.Module):
    """``pixel_shuffle(conv_{kernel}(x) -> s²·k channels, s)``: C×h×w -> k×(s·h)×(s·w).

    ``kernel`` 1 makes each output pixel a linear mix of one latent pixel's channels (enough to
    invert a space-to-depth); 3 lets it mix the 3×3 latent neighbourhood (for learned codecs
    whose channels are not a clean rearrangement). A ReLU-free linear stem: the backbone
    after it starts with its own non-linearity."""

    def __init__(self, in_chans: int, scale: int, out_chans: int = 4, kernel: int = 1, init: str = "d2s") -> None:
        super().__init__()
        if scale < 1 or out_chans < 1 or kernel < 1 or kernel % 2 == 0:
            raise ProbeError(f"DepthToSpaceStem: need scale >= 1, out_chans >= 1 and an odd kernel, got "
                             f"scale={scale}, out_chans={out_chans}, kernel={kernel}")
        if init not in STEM_INITS:
            raise ProbeError(f"DepthToSpaceStem: init must be one of {STEM_INITS}, got {init!r}")
        self.scale, self.out_chans = int(scale), int(out_chans)
        self.conv = nn.Conv2d(in_chans, self.scale ** 2 * self.out_chans, kernel, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(self.scale)
        if init == "d2s":
            self._init_depth_to_space(in_chans)

    @torch.no_grad()
    def _init_depth_to_space(self, in_chans: int) -> None:
        """Start as the plain depth-to-space: stem channel ``j·s² + p`` (feature j at sub-pixel
        p = dy·s + dx, pixel_shuffle's order) copies latent channel ``(j·s² + p) mod C``, which
        is pixel_unshuffle's order. The same code for every codec: for a space-to-depth latent
        it is the exact inverse at step 0, for a learned latent just a neutral starting point
        that training reshapes. Tiny noise breaks the symmetry between the copies."""
        w = self.conv.weight
        w.normal_(0.0, 1e-3)
        c = w.shape[-1] // 2
        for o in range(w.shape[0]):
            w[o, o % in_chans, c, c] += 1.0
        self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class StemmedBackbone(nn.Module):
    """``backbone(standardise(flip?(stem(standardise_all(x)))))``; ``num_features`` is the backbone's.

    Standardisation: the latent is standardised per image over all its channels together (one
    mean and std, so the relative scale of the channels -- for a space-to-depth, of the
    sub-pixel phases -- is kept and no grid pattern is stamped on the image), and the stem
    output per image and channel, as the full-size probe standardises the image. The probe
    module around it must then not standardise per channel itself (:func:`make_probe_module`
    sees to that). ``flip``: in training, mirror the stem output left-right with
    probability 1/2 (per batch)."""

    def __init__(self, stem: nn.Module, backbone: nn.Module, *, flip: bool = True, standardize: bool = True) -> None:
        super().__init__()
        self.stem, self.backbone, self.flip, self.standardize = stem, backbone, bool(flip), bool(standardize)
        self.num_features = int(backbone.num_features)
        # a timm backbone behind the stem may need each side a multiple of its stride (HRNet: 32);
        # the probe model fits inputs to the *stem's* needs (none), so the stem output is padded here
        try:
            from latentds.train.probe.model import required_multiple
        except ImportError:  # an older probe trainer without input fitting
            self.multiple = 1
        else:
            self.multiple = int(required_multiple(backbone))

    def _fit(self, z: torch.Tensor) -> torch.Tensor:
        m = self.multiple
        h, w = z.shape[-2:]
        H, W = -(-h // m) * m, -(-w // m) * m
        if (H, W) == (h, w):
            return z
        top, left = (H - h) // 2, (W - w) // 2  # zeros after standardising: the image's mean
        return nn.functional.pad(z, (left, W - w - left, top, H - h - top))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-6)
        z = self.stem(x)
        if self.standardize:
            z = (z - z.mean(dim=(2, 3), keepdim=True)) / (z.std(dim=(2, 3), keepdim=True) + 1e-6)
        if self.training and self.flip and torch.rand(()) < 0.5:
            z = z.flip(-1)
        return self.backbone(self._fit(z))


@dataclass(frozen=True)
class ProbeSpec:
    backbone: str        # what follows the stem (or the whole probe): "small-cnn" or a timm name
    stem: bool           # "d2s+" given


def parse_probe(name: str) -> ProbeSpec:
    if not isinstance(name, str) or not name.strip():
        raise ProbeError(f"probe backbone name must be a non-empty string, got {name!r}")
    if name.startswith(STEM_PREFIX):
        rest = name[len(STEM_PREFIX):]
        if not rest:
            raise ProbeError(f"probe {name!r}: nothing after {STEM_PREFIX!r}; e.g. 'd2s+small-cnn' or 'd2s+resnet18'")
        return ProbeSpec(rest, True)
    return ProbeSpec(name, False)


def build_probe_backbone(name: str, in_chans: int, *, f: int = 1, stem_chans: int = 4, stem_kernel: int = 1,
                         stem_init: str = "d2s", flip: bool = True, standardize: bool = True,
                         backbone_kwargs: dict | None = None) -> tuple[nn.Module, bool]:
    """The probe's feature extractor for a C = ``in_chans`` latent of factor ``f``, and whether
    it has a stem (then the caller must not flip latents itself). A "d2s+" name whose stem
    scale is 1 (one-channel latents, full size) gets no stem: the plain backbone is already
    per image pixel (bicubic) or per latent pixel with nothing to rearrange."""
    from latentds.train.probe.model import build_backbone

    spec = parse_probe(name)
    s = stem_scale(f, in_chans) if spec.stem else 1
    if s == 1:
        return build_backbone(spec.backbone, in_chans, **(backbone_kwargs or {})), False
    stem = DepthToSpaceStem(in_chans, s, stem_chans, stem_kernel, stem_init)
    inner = build_backbone(spec.backbone, stem_chans, **(backbone_kwargs or {}))
    return StemmedBackbone(stem, inner, flip=flip, standardize=standardize), True


def stem_lr_factor(C: int, stem_lr_scale: float = 0.1) -> float:
    """The stem's learning rate relative to the probe's: ``stem_lr_scale · 16 / C``, at most 1.

    Measured (benchmarks/RESULTS.md, issue 12): with the stem at the full lr 3e-3 the lossless
    f=8 control (C = 64) fell to 0.70 AUROC against 0.98 at full size; 0.1× for every C passed
    f=4 and f=8 on calcifications but not f=8 on fractures nor f=16 (C = 256) on either task;
    0.1 · 16 / C passed f = 4, 8 and 16 on both."""
    return float(min(1.0, float(stem_lr_scale) * 16.0 / max(int(C), 1)))


def _stem_probe_module_class():
    from latentds.train.probe.module import ProbeModule

    class StemProbeModule(ProbeModule):
        """A ProbeModule whose stem trains at ``stem_lr_scale`` times the learning rate: Adam
        moves every weight by about lr per step whatever its gradient, and each stem output
        sums C such weights, so at lr 3e-3 a stem scrambles its depth-to-space within a few
        hundred steps, the faster the more channels (:func:`stem_lr_factor`)."""

        stem_lr_scale = 1.0

        def configure_optimizers(self):
            params = [p for p in self.model.trainable_parameters() if p.requires_grad]
            stem = getattr(self.model.backbone, "stem", None)
            stem_ids = {id(p) for p in stem.parameters()} if stem is not None else set()
            groups = [{"params": [p for p in params if id(p) not in stem_ids]}]
            stem_params = [p for p in params if id(p) in stem_ids]
            if stem_params:
                groups.append({"params": stem_params, "lr": self.hparams.lr * self.stem_lr_scale})
            return torch.optim.AdamW(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    return StemProbeModule


def make_probe_module(backbone: str, in_chans: int, num_classes: int, *, f: int = 1, mode: str = "full",
                      lr: float = 3e-3, weight_decay: float = 0.01, flip: bool = True, standardize: bool = True,
                      stem_chans: int = 4, stem_kernel: int = 1, stem_init: str = "d2s", stem_lr_scale: float = 0.1,
                      backbone_kwargs: dict | None = None):
    """A :class:`latentds.train.probe.module.ProbeModule` whose backbone is :func:`build_probe_backbone`'s
    (pass it to ``fit_probe(..., module=...)``). With a stem, flips and standardisation move
    into :class:`StemmedBackbone` and the stem trains at ``lr × stem_lr_factor(C, stem_lr_scale)``.
    ``mode="linear"`` freezes the whole feature extractor, stem included."""
    from latentds.train.probe.model import SMALL_CNN, num_outputs

    feats, has_stem = build_probe_backbone(backbone, in_chans, f=f, stem_chans=stem_chans, stem_kernel=stem_kernel,
                                           stem_init=stem_init, flip=flip, standardize=standardize,
                                           backbone_kwargs=backbone_kwargs)
    # built around a throw-away small-cnn (cheap), then given the real feature extractor
    module = _stem_probe_module_class()(SMALL_CNN, in_chans, num_classes, mode=mode, lr=lr, weight_decay=weight_decay,
                                        flip=flip and not has_stem, standardize=standardize and not has_stem)
    module.stem_lr_scale = stem_lr_factor(in_chans, stem_lr_scale) if has_stem else 1.0
    module.hparams["backbone"] = backbone
    module.model.backbone = feats
    module.model.head = nn.Linear(int(feats.num_features), num_outputs(num_classes))
    if mode == "linear":
        feats.requires_grad_(False)
        feats.eval()
    return module
