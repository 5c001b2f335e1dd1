"""PSNR and MS-SSIM per image (torchmetrics' functional metrics), and the checks every metric
of :mod:`latentds.metrics` applies to its images (float, ``[0, 1]``, N×C×H×W)."""

from __future__ import annotations

import warnings
from typing import Literal

import torch

__all__ = ["MS_SSIM_BETAS", "Reduction", "ms_ssim", "ms_ssim_min_size", "ms_ssim_scales", "psnr"]

Reduction = Literal["mean", "none"]



def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"{name} must be N×C×H×W, C×H×W or H×W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype}")
    return x


def _check_range(x: torch.Tensor, name: str) -> None:
    if x.numel() and (not torch.isfinite(x).all() or x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"{name} must hold finite values in [0, 1] (clamp decoder outputs first); "
                         f"got min {x.min().item():.4g}, max {x.max().item():.4g}")


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_batch(x, "x"), _as_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    _check_range(x, "x")
    _check_range(y, "y")
    return x, y


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, reduction: Reduction = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image (over C, H, W), then averaged.

    Identical images give ``inf`` (torchmetrics' ``10 log10(range² / 0)``); so does a mean
    that includes one identical pair."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x, y = _pair(x, y)
    per_image = peak_signal_noise_ratio(x.double(), y.double(), data_range=data_range, reduction="none",
                                        dim=(1, 2, 3))
    return _reduce(per_image, reduction)


#: The five MS-SSIM scale weights of Wang et al. (2003), torchmetrics' default.
MS_SSIM_BETAS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _fits(side: int, scales: int, kernel_size: int) -> bool:
    # torchmetrics' own conditions for len(betas) == scales
    return side >= 2 ** scales and side // max(1, scales - 1) ** 2 > kernel_size - 1


def ms_ssim_min_size(scales: int = 5, kernel_size: int = 11) -> int:
    """The smallest image side torchmetrics accepts for MS-SSIM with ``scales`` scales
    (176 for the standard 5 scales and 11-pixel kernel)."""
    side = 1
    while not _fits(side, scales, kernel_size):
        side += 1
    return side


def ms_ssim_scales(height: int, width: int, *, kernel_size: int = 11) -> int:
    """The number of scales :func:`ms_ssim` uses for an image (5 unless it is smaller than
    :func:`ms_ssim_min_size`; 0 when even one scale does not fit)."""
    side = min(int(height), int(width))
    for n in range(len(MS_SSIM_BETAS), 0, -1):
        if _fits(side, n, kernel_size):
            return n
    return 0


def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, kernel_size: int = 11,
            reduction: Reduction = "mean", small: Literal["reduce", "error"] = "reduce") -> torch.Tensor:
    """Multi-scale SSIM (torchmetrics; Gaussian kernel, sigma 1.5), per image, then averaged.

    The standard five scales need both sides >= 176 pixels (:func:`ms_ssim_min_size`). For
    smaller images ``small="reduce"`` (default) uses the largest number of scales that fits
    (4 from 99 px, 3 from 44 px, 2 from 11 px) with the first weights of
    :data:`MS_SSIM_BETAS` rescaled to the same sum, and warns: such values are not
    comparable with five-scale MS-SSIM. ``small="error"`` raises ``ValueError`` instead;
    images under 11 px always raise.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    x, y = _pair(x, y)
    scales = ms_ssim_scales(x.shape[-2], x.shape[-1], kernel_size=kernel_size)
    full = len(MS_SSIM_BETAS)
    if scales < full:
        need = ms_ssim_min_size(full, kernel_size)
        if scales == 0 or small == "error":
            raise ValueError(f"MS-SSIM with {full} scales needs images of at least {need}×{need} pixels, got "
                             f"{x.shape[-2]}×{x.shape[-1]}" + ("" if scales else "; even one scale does not fit"))
        if small != "reduce":
            raise ValueError(f"small must be 'reduce' or 'error', got {small!r}")
        warnings.warn(f"MS-SSIM on {x.shape[-2]}×{x.shape[-1]} images uses {scales} of {full} scales "
                      f"(images under {need} px); not comparable with {full}-scale values", stacklevel=2)
    betas = MS_SSIM_BETAS[:scales]
    total = sum(MS_SSIM_BETAS)
    betas = tuple(b * total / sum(betas) for b in betas)
    per_image = multiscale_structural_similarity_index_measure(
        x.double(), y.double(), kernel_size=kernel_size, data_range=data_range, betas=betas, reduction="none")
    return _reduce(per_image, reduction)
