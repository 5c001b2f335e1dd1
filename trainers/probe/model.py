"""Probe models: a backbone (any ``timm`` model by name, or the tiny ``small-cnn``) plus a
linear head, in two modes: ``full`` (everything trains) and ``linear`` (frozen backbone,
only the head trains)."""

from __future__ import annotations

import torch
from torch import nn

MODES = ("full", "linear")
#: The backbone of the latentds demo (two full-resolution 3×3 convolutions + global max
#: pooling): small enough for CPU sweeps, enough to learn a speck detector.
SMALL_CNN = "small-cnn"


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


def build_backbone(name: str, in_chans: int, **kwargs) -> nn.Module:
    """A feature extractor returning ``N×num_features``; never downloads weights."""
    if name == SMALL_CNN:
        return SmallCNN(in_chans, **kwargs)
    import timm

    return timm.create_model(name, pretrained=False, in_chans=int(in_chans), num_classes=0, **kwargs)


def num_outputs(num_classes: int) -> int:
    """Binary tasks use one logit (BCE); multiclass tasks one logit per class (CE)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return 1 if num_classes == 2 else int(num_classes)


class ProbeModel(nn.Module):
    """``head(backbone(standardise(x)))``. ``standardize`` removes a per-image, per-channel
    affine intensity change (DICOMs without a VOI window differ by one); it has no weights."""

    def __init__(self, backbone: str, in_chans: int, num_classes: int, *, mode: str = "full",
                 standardize: bool = True, backbone_kwargs: dict | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.standardize = bool(standardize)
        self.backbone = build_backbone(backbone, in_chans, **(backbone_kwargs or {}))
        self.head = nn.Linear(int(self.backbone.num_features), num_outputs(num_classes))
        if mode == "linear":
            self.backbone.requires_grad_(False)
            self.backbone.eval()

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
        if self.mode == "linear":
            with torch.no_grad():
                feats = self.backbone(x)
            return self.head(feats.float())
        return self.head(self.backbone(x))
