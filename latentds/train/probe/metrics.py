"""AUROC (torchmetrics; macro one-vs-rest for multiclass) with a percentile bootstrap CI."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

__all__ = ["auroc", "AurocCI", "bootstrap_auroc"]


def auroc(scores: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """``scores``: N logits/probabilities (binary) or N×K (multiclass)."""
    targets = targets.long()
    if num_classes == 2:
        return float(binary_auroc(scores.reshape(-1).float(), targets))
    return float(multiclass_auroc(scores.float(), targets, num_classes=num_classes, average="macro"))


@dataclass(frozen=True)
class AurocCI:
    auroc: float
    lo: float
    hi: float
    level: float
    n_boot: int  # resamples actually used (those with every class present)

    def __str__(self) -> str:
        return f"{self.auroc:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


def bootstrap_auroc(scores: torch.Tensor, targets: torch.Tensor, num_classes: int, *, n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0) -> AurocCI:
    """Point AUROC on all samples and a percentile bootstrap interval over test-set resamples.

    Resamples that miss a class (AUROC undefined) are skipped. The interval is widened, if
    needed, to contain the point estimate (a percentile interval need not, on tiny sets)."""
    targets = targets.long()
    point = auroc(scores, targets, num_classes)
    n = len(targets)
    gen = torch.Generator().manual_seed(int(seed))
    needed = len(torch.unique(targets))
    values = []
    for _ in range(int(n_boot)):
        idx = torch.randint(0, n, (n,), generator=gen)
        t = targets[idx]
        if len(torch.unique(t)) < needed:
            continue
        values.append(auroc(scores[idx], t, num_classes))
    if not values:
        return AurocCI(point, point, point, level, 0)
    v = torch.tensor(values, dtype=torch.float64)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(v, alpha).item(), torch.quantile(v, 1 - alpha).item()
    return AurocCI(point, min(lo, point), max(hi, point), level, len(values))
