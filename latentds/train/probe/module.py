"""The Lightning module of the probe trainer."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import Dataset

from .model import ProbeModel

__all__ = ["Indexed", "ProbeModule"]


class ProbeModule(L.LightningModule):
    """Trains a :class:`ProbeModel` with AdamW (paper B.1: lr 1e-4). Binary tasks: one logit,
    BCE; multiclass: K logits, cross-entropy. ``flip`` adds random horizontal flips.
    ``input_fit`` / ``input_shape``: see :class:`ProbeModel` (the shape is checked here, at
    construction, so a backbone that cannot take it fails before any training)."""

    def __init__(self, backbone: str = "hrnet_w64", in_chans: int = 1, num_classes: int = 2, *,
                 mode: str = "full", lr: float = 1e-4, weight_decay: float = 0.01, flip: bool = True,
                 standardize: bool = True, backbone_kwargs: dict | None = None, input_fit: str = "pad",
                 input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        if input_shape is not None:  # a list: saved hyper-parameters load with weights_only=True
            input_shape = [int(s) for s in input_shape]
        self.save_hyperparameters()
        self.num_classes = int(num_classes)
        self.model = ProbeModel(backbone, in_chans, num_classes, mode=mode, standardize=standardize,
                                backbone_kwargs=backbone_kwargs, input_fit=input_fit, input_shape=input_shape)

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

    def on_train_epoch_start(self) -> None:
        # a training set that changes with the epoch (cached augmented views, docs/views.md)
        loader = getattr(self.trainer, "train_dataloader", None)
        if loader is not None:
            from .epochs import set_dataset_epoch

            set_dataset_epoch(getattr(loader, "dataset", None), self.current_epoch)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", self.loss(self(x), y), prog_bar=True, batch_size=len(y), sync_dist=True)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities: sigmoid of the logit (binary, shape N) or softmax (multiclass, N×K)."""
        logits = logits.float()
        return torch.sigmoid(logits[:, 0]) if self.num_classes == 2 else torch.softmax(logits, dim=1)

    # ------------------------------------------------------------------ DDP: end of training

    def on_train_end(self) -> None:
        """Make every rank hold rank 0's model, then record (and check) a hash of each rank's
        state dict in ``rank_state_hashes``.

        DDP keeps parameters in step, but buffers (batch-norm running statistics) only by
        broadcasting rank 0's at the start of each training forward: after the last step each
        rank holds statistics updated with its own last batch. Those are replaced by rank 0's
        (what DDP would broadcast next), so that evaluation and the saved weights are rank 0's
        model on every rank. Different parameters after that are an error."""
        from latentds.train.vae.module import state_hash

        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            for b in self.model.buffers():
                dist.broadcast(b.data, src=0)
        h = state_hash(self.model)
        hashes = [h]
        if distributed:
            hashes = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(hashes, h)
        self.rank_state_hashes = hashes
        if len(set(hashes)) != 1:
            raise RuntimeError(f"ranks ended training with different weights: {hashes}")

    # ------------------------------------------------------------------ evaluation (Trainer.test)

    def on_test_epoch_start(self) -> None:
        self._test_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def test_step(self, batch, batch_idx):
        """Batches of ``(index, x, y)`` (:class:`Indexed`): scores are kept with their index."""
        idx, x, y = batch
        self._test_parts.append((torch.as_tensor(idx).cpu(), self.scores(self(x)).cpu(), torch.as_tensor(y).cpu()))

    def on_test_epoch_end(self) -> None:
        """Gather every rank's ``(index, score, target)`` and keep each test sample once.

        Under DDP, Lightning's ``DistributedSampler`` pads the test set (repeating samples) so
        that every rank gets as many; the duplicates are dropped by index, and the indices
        must then be exactly ``0..N-1`` (``N = self.test_size`` when set). Sets ``test_predictions = (scores, targets)`` in
        index order and ``test_gathered`` (the count before de-duplication) on every rank."""
        parts = self._test_parts
        k = self.num_classes if self.num_classes > 2 else None
        local = (torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.long),
                 torch.cat([p[1] for p in parts]) if parts else torch.zeros((0, k) if k else (0,)),
                 torch.cat([p[2] for p in parts]) if parts else torch.zeros(0, dtype=torch.long))
        gathered = [local]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, local)
        idx = torch.cat([g[0] for g in gathered]).long()
        scores = torch.cat([g[1] for g in gathered])
        targets = torch.cat([g[2] for g in gathered]).long()
        uniq, first = _first_occurrence(idx)
        n = getattr(self, "test_size", None)  # set by fit_probe: len(test)
        n = len(uniq) if n is None else int(n)
        if not torch.equal(uniq, torch.arange(n)):
            raise RuntimeError(f"the gathered test predictions cover {len(uniq)} distinct indices, expected 0..{n - 1}")
        self.test_predictions = (scores[first], targets[first])
        self.test_gathered = len(idx)
        self._test_parts = []

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.trainable_parameters(), lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)


def _first_occurrence(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique values, position of each one's first occurrence in ``idx``)."""
    uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    pos = torch.arange(len(idx))
    first = torch.full((len(uniq),), len(idx), dtype=torch.long).scatter_reduce(0, inverse, pos, "amin")
    return uniq, first


class Indexed(Dataset):
    """``(i, x, y)`` for item ``i = (x, y)`` of ``dataset``: lets predictions from several
    ranks (and a padded sampler) be put back in order and de-duplicated."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return i, x, y
