"""Probe models: a backbone (any ``timm`` model by name, or the tiny ``small-cnn``) plus a
linear head, in two modes: ``full`` (everything trains) and ``linear`` (frozen backbone,
only the head trains).

Input fitting (``input_fit``): many backbones take only some input sizes. HRNet, for one,
adds upsampled low-resolution branches to higher ones, so each side must be a multiple of
its output stride (32): a 128×104 latent fails inside timm's branch fusion. The model reads
that multiple from the backbone (the least common multiple of timm's ``feature_info``
reductions) and, before the backbone, ``pad``s each input (zeros after standardisation, i.e.
the image's mean, split evenly on both sides) or ``resize``s it (bilinear) up to the next
multiple; ``none`` feeds inputs as they are. :meth:`ProbeModel.check_input` runs the backbone
once on the meta device (no arithmetic) at a given shape, so a shape that a backbone cannot
take at all is one clear error before any training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from latentds.errors import ConfigError, LatentdsError

MODES = ("full", "linear")
#: How an input is fitted to the backbone's required multiple (see the module docstring).
INPUT_FITS = ("pad", "resize", "none")
#: The backbone of the latentds demo (two full-resolution 3×3 convolutions + global max
#: pooling): small enough for CPU sweeps, enough to learn a speck detector.
SMALL_CNN = "small-cnn"


class ProbeShapeError(LatentdsError, ValueError):
    """A probe backbone cannot take the input shape it is given (after padding / resizing)."""


class SmallCNN(nn.Module):
    def __init__(self, in_chans: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.num_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def check_backbone_name(name: str) -> None:
    """``small-cnn`` or a name timm knows (a pretrained tag or an ``hf-hub:`` name passes through
    to timm); anything else is a ConfigError naming it, not timm's RuntimeError traceback."""
    if name == SMALL_CNN or ":" in name:
        return
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"probe backbone {name!r}: neither {SMALL_CNN!r} nor a timm model name; e.g. "
                          f"'{SMALL_CNN}', 'resnet18', 'hrnet_w18' (timm.list_models() lists them), each "
                          "optionally behind 'd2s+'")


def build_backbone(name: str, in_chans: int, **kwargs) -> nn.Module:
    """A feature extractor returning ``N×num_features``; never downloads weights."""
    if name == SMALL_CNN:
        return SmallCNN(in_chans, **kwargs)
    if name.startswith("d2s+"):  # the stem needs the codec's f: built by .stem, not here
        raise ConfigError(f"probe backbone {name!r}: a d2s+ probe is built by latentds.train.probe.stem."
                          "stem_probe_module (fit_probe(backbone=...) and train-probe do so), not by ProbeModule; "
                          f"use {name[4:]!r} for the plain backbone")
    import timm

    check_backbone_name(name)
    return timm.create_model(name, pretrained=False, in_chans=int(in_chans), num_classes=0, **kwargs)


def required_multiple(backbone: nn.Module) -> int:
    """The multiple each input side must be for ``backbone``: the least common multiple of
    the reductions in its timm ``feature_info`` (a list of dicts on classification models, a
    ``FeatureInfo`` on ``features_only`` ones); 1 for a backbone that has none (small-cnn)."""
    info = getattr(backbone, "feature_info", None)
    if info is None:
        return 1
    if hasattr(info, "reduction") and callable(info.reduction):
        reductions = list(info.reduction())
    else:
        reductions = [d.get("reduction") for d in info if isinstance(d, dict)]
    reductions = [int(r) for r in reductions if r]
    return math.lcm(*reductions) if reductions else 1


def fitted_size(size: Sequence[int], multiple: int) -> tuple[int, ...]:
    """Each side of ``size`` rounded up to a multiple of ``multiple``."""
    m = int(multiple)
    return tuple(-(-int(s) // m) * m for s in size)


def num_outputs(num_classes: int) -> int:
    """Binary tasks use one logit (BCE); multiclass tasks one logit per class (CE)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return 1 if num_classes == 2 else int(num_classes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def meta_forward(module: nn.Module, shape: Sequence[int], *, training: bool = False) -> None:
    """Run ``module`` on a zero input of ``shape`` (N, C, H, W) on the meta device, in train or
    eval mode, without touching its weights, buffers or mode. Raises what the forward raises."""
    flags = {m: m.training for m in module.modules()}
    try:
        for m in flags:
            m.training = training
        stand_ins = {name: torch.empty_like(t, device="meta")
                     for name, t in [*module.named_parameters(remove_duplicate=False),
                                     *module.named_buffers(remove_duplicate=False)]}
        with torch.no_grad():
            torch.func.functional_call(module, stand_ins, (torch.zeros(tuple(shape), device="meta"),),
                                       tie_weights=True, strict=False)
    finally:
        for m, flag in flags.items():
            m.training = flag


def _real_forward(module: nn.Module, shape: Sequence[int]) -> None:
    """``module`` on a real zero input of ``shape``, in eval mode (restored after), no grad."""
    flags = {m: m.training for m in module.modules()}
    ref = next(iter([*module.parameters(), *module.buffers()]), None)
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(tuple(shape), device=ref.device if ref is not None else "cpu"))
    finally:
        for m, flag in flags.items():
            m.training = flag


class ProbeModel(nn.Module):
    """``head(backbone(fit(standardise(x))))``. ``standardize`` removes a per-image,
    per-channel affine intensity change (DICOMs without a VOI window differ by one); it has
    no weights. ``input_fit`` (``pad`` | ``resize`` | ``none``) fits inputs to the backbone's
    :attr:`multiple`. ``input_shape`` (C, H, W): checked at construction (:meth:`check_input`)."""

    def __init__(self, backbone: str, in_chans: int, num_classes: int, *, mode: str = "full",
                 standardize: bool = True, backbone_kwargs: dict | None = None, input_fit: str = "pad",
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if input_fit not in INPUT_FITS:
            raise ValueError(f"input_fit must be one of {INPUT_FITS}, got {input_fit!r}")
        self.mode = mode
        self.input_fit = input_fit
        self.standardize = bool(standardize)
        self.in_chans = int(in_chans)
        self.backbone = build_backbone(backbone, in_chans, **(backbone_kwargs or {}))
        self.head = nn.Linear(int(self.backbone.num_features), num_outputs(num_classes))
        if mode == "linear":
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        if input_shape is not None:
            self.check_input(input_shape)

    def backbone_label(self) -> str:
        """The backbone's name: timm's architecture, ``small-cnn``, or its class name."""
        cfg = getattr(self.backbone, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("architecture"):
            return str(cfg["architecture"])
        return SMALL_CNN if isinstance(self.backbone, SmallCNN) else type(self.backbone).__name__

    @property
    def multiple(self) -> int:
        """The multiple inputs are fitted to: read from the current backbone (callers such as
        ``latentds.probes`` swap the backbone after construction), 1 with ``input_fit='none'``."""
        return 1 if self.input_fit == "none" else required_multiple(self.backbone)

    def backbone_input_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape the backbone sees for an input of ``shape`` (…, H, W): H and W fitted."""
        shape = tuple(int(s) for s in shape)
        return (*shape[:-2], *fitted_size(shape[-2:], self.multiple))

    def fit_input(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        H, W = fitted_size((h, w), self.multiple)
        if (H, W) == (h, w):
            return x
        if self.input_fit == "resize":
            return nn.functional.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        top, left = (H - h) // 2, (W - w) // 2  # centred: a finding near an edge stays off the border
        return nn.functional.pad(x, (left, W - w - left, top, H - h - top))

    def check_input(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Check that an input of ``input_shape`` (C, H, W) runs through fit + backbone + head;
        return the backbone's input shape. Raises :class:`ProbeShapeError` (one line) if not.

        The check runs on the meta device (no arithmetic, weights untouched), in eval mode with
        a batch of two (batch norm's own size rule is a training-batch matter, not a shape one).
        A forward that cannot run on meta (data-dependent control flow) is retried on a real
        zero input before the shape is declared unusable."""
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or any(s <= 0 for s in shape):
            raise ProbeShapeError(f"probe input shape must be positive (C, H, W), got {tuple(input_shape)}")
        name = self.backbone_label()
        if shape[0] != self.in_chans:
            raise ProbeShapeError(f"backbone {name!r} was built for {self.in_chans} input channels "
                                  f"but the inputs have {shape[0]} ({'x'.join(map(str, shape))}): "
                                  f"set in_chans to the latent channels of the codec")
        fitted = self.backbone_input_shape(shape)
        counted = nn.Sequential(self.backbone, self.head)
        try:
            meta_forward(counted, (2, *fitted))
        except Exception:  # noqa: BLE001 - re-tried for real before the shape is blamed
            try:
                _real_forward(counted, (2, *fitted))
            except Exception as exc:  # noqa: BLE001
                how = ("as it is (input_fit: none)" if self.input_fit == "none" else
                       f"after {self.input_fit} to a multiple of {self.multiple} -> {'x'.join(map(str, fitted[1:]))}")
                raise ProbeShapeError(
                    f"backbone {name!r} cannot take {'x'.join(map(str, shape))} inputs {how}: "
                    f"{_first_line(exc)}; choose another backbone or data.image_size, or model.input_fit"
                ) from exc
        return fitted

    def needs_batch_of_two(self, input_shape: Sequence[int]) -> bool:
        """Whether a training batch of one fails at this shape (batch norm on a 1×1 map, as in
        HRNet's lowest branch at 32×32 inputs): the trainer then never forms one."""
        if self.mode == "linear":  # the frozen backbone runs in eval mode; the head has no batch norm
            return False
        try:
            meta_forward(nn.Sequential(self.backbone, self.head), (1, *self.backbone_input_shape(input_shape)),
                         training=True)
        except Exception:  # noqa: BLE001
            return True
        return False

    def train(self, mode: bool = True) -> ProbeModel:
        super().train(mode)
        if self.mode == "linear":  # frozen backbone: batch-norm statistics stay fixed too
            self.backbone.eval()
        return self

    def trainable_parameters(self):
        return self.head.parameters() if self.mode == "linear" else self.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-6)
        x = self.fit_input(x)  # after standardising: zero padding is the image's mean
        if self.mode == "linear":
            with torch.no_grad():
                feats = self.backbone(x)
            return self.head(feats.float())
        return self.head(self.backbone(x))


__all__ = ["INPUT_FITS", "MODES", "ProbeModel", "ProbeShapeError", "SMALL_CNN", "build_backbone", "check_backbone_name",
           "fitted_size", "meta_forward", "num_outputs", "required_multiple"]
