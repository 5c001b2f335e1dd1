"""The Fréchet distance (torch, float64) and FID: feature statistics of two image sets under a
feature extractor of :mod:`latentds.metrics.extractors`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .extractors import FeatureExtractor, get_extractor
from .image import _as_batch, _check_range

__all__ = ["extract_features", "feature_statistics", "fid", "frechet_distance"]


# ----------------------------------------------------------------------------- Fréchet distance

def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (torch, float64).

    ``d² = |mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^½)``, with the last
    trace computed as the sum of the singular values of ``S2^½ S1^½`` (square roots of the
    covariances from symmetric eigendecompositions, negative rounding eigenvalues clamped to
    0). Accepts tensors or numpy arrays; covariance matrices are assumed symmetric positive
    semi-definite.
    """
    mu1 = torch.as_tensor(mu1, dtype=torch.float64).reshape(-1)
    mu2 = torch.as_tensor(mu2, dtype=torch.float64).reshape(-1)
    s1 = torch.as_tensor(sigma1, dtype=torch.float64)
    s2 = torch.as_tensor(sigma2, dtype=torch.float64)
    d = mu1.numel()
    if s1.ndim == 0 and d == 1:
        s1 = s1.reshape(1, 1)
    if s2.ndim == 0 and d == 1:
        s2 = s2.reshape(1, 1)
    if mu2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {tuple(mu1.shape)}, sigma1 {tuple(s1.shape)}, "
                         f"mu2 {tuple(mu2.shape)}, sigma2 {tuple(s2.shape)}")
    # tr((S1^½ S2 S1^½)^½) is the nuclear norm of S2^½ S1^½ (its singular values are the square
    # roots of that matrix's eigenvalues). Taking singular values avoids square-rooting tiny,
    # noisy eigenvalues, which would cost ~sqrt(eps)·|S| of accuracy on rank-deficient
    # covariances (fewer samples than features, or a set compared with itself).
    tr_covmean = torch.linalg.svdvals(_sqrt_psd(s2) @ _sqrt_psd(s1)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased, N-1) covariance of ``features`` (N×D, N >= 2), in float64."""
    f = torch.as_tensor(features).to(torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be N×D with N >= 2, got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)



def _batches(images: torch.Tensor | Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        images = _as_batch(images, "images")
        for i in range(0, images.shape[0], batch_size):
            yield images[i:i + batch_size]
    else:
        for b in images:
            yield _as_batch(b, "images")


@torch.no_grad()
def extract_features(images: torch.Tensor | Iterable[torch.Tensor], extractor: str | FeatureExtractor = "random-conv",
                     *, batch_size: int = 32, device: str | torch.device = "cpu") -> torch.Tensor:
    """Features (N×D, float64 on CPU) of ``images``: a tensor, or an iterable of batches."""
    ext = get_extractor(extractor).to(device).eval()
    feats = []
    for b in _batches(images, batch_size):
        _check_range(b, "images")
        feats.append(ext(b.to(device)).to("cpu", torch.float64))
    if not feats:
        raise ValueError("no images given")
    return torch.cat(feats)


def fid(real_images: torch.Tensor | Iterable[torch.Tensor], fake_images: torch.Tensor | Iterable[torch.Tensor],
        extractor: str | FeatureExtractor = "inception", *, batch_size: int = 32,
        device: str | torch.device = "cpu") -> float:
    """Fréchet distance between the ``extractor`` features of two image sets (each N >= 2;
    thousands for a stable estimate). ``extractor``: a name in ``EXTRACTORS`` or an instance;
    raises :class:`ExtractorUnavailable` when its weights are not available locally."""
    ext = get_extractor(extractor)
    mu1, s1 = feature_statistics(extract_features(real_images, ext, batch_size=batch_size, device=device))
    mu2, s2 = feature_statistics(extract_features(fake_images, ext, batch_size=batch_size, device=device))
    return frechet_distance(mu1, s1, mu2, s2)
