"""The Lightning module of the probe trainer."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from .model import ProbeModel


class ProbeModule(L.LightningModule):
    """Trains a :class:`ProbeModel` with AdamW (paper B.1: lr 1e-4). Binary tasks: one logit,
    BCE; multiclass: K logits, cross-entropy. ``flip`` adds random horizontal flips."""

    def __init__(self, backbone: str = "hrnet_w64", in_chans: int = 1, num_classes: int = 2, *,
                 mode: str = "full", lr: float = 1e-4, weight_decay: float = 0.01, flip: bool = True,
                 standardize: bool = True, backbone_kwargs: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.model = ProbeModel(backbone, in_chans, num_classes, mode=mode, standardize=standardize,
                                backbone_kwargs=backbone_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 2:
            return nn.functional.binary_cross_entropy_with_logits(logits[:, 0].float(), y.float())
        return nn.functional.cross_entropy(logits.float(), y.long())

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.hparams.flip and torch.rand(()) < 0.5:  # a finding stays a finding when mirrored
            x = x.flip(-1)
        loss = self.loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", self.loss(self(x), y), prog_bar=True, batch_size=len(y), sync_dist=True)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: sigmoid of the logit (binary, shape N) or softmax (multiclass, N×K)."""
        logits = logits.float()
        return torch.sigmoid(logits[:, 0]) if self.num_classes == 2 else torch.softmax(logits, dim=1)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.trainable_parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)
