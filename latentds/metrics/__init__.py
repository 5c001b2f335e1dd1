"""Perceptual metrics of the paper's Table 2: PSNR, MS-SSIM and FID with pluggable extractors.

Images are float tensors in ``[0, 1]``, shaped ``N×C×H×W`` (``C×H×W`` and ``H×W`` are
promoted to a batch of one); grayscale (``C=1``) is the normal case.

* :func:`psnr`, :func:`ms_ssim`: torchmetrics' functional metrics, computed per image and
  averaged (``reduction="mean"``) or returned per image (``reduction="none"``).
* :func:`frechet_distance`: the Fréchet distance between two Gaussians, computed in torch
  float64 (no scipy): ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 ||S2^½ S1^½||_*`` (nuclear norm),
  which equals scipy's ``tr sqrtm(S1 @ S2)`` form for covariance (positive semi-definite)
  matrices and needs no eps / imaginary-part fix-ups.
* :func:`fid`: Fréchet distance between the feature statistics of two image sets under a
  feature extractor: ``"inception"`` (FID-Inc), ``"clip"`` (FID-CLIP), ``"biomedclip"``
  (FID-BiomedCLIP), or ``"random-conv"`` (a tiny fixed random network, for tests only; its
  numbers mean nothing clinically). Weights are never downloaded: an extractor whose
  library or weights are not available locally raises :class:`ExtractorUnavailable`.
"""

from __future__ import annotations

from .extractors import (BIOMEDCLIP_HUB_ID, EXTRACTORS, INCEPTION_WEIGHTS_FILE, BiomedClipExtractor, ClipExtractor,
                         ExtractorUnavailable, FeatureExtractor, InceptionExtractor, RandomConvExtractor,
                         available_extractors, get_extractor)
from .fid import extract_features, feature_statistics, fid, frechet_distance
from .image import MS_SSIM_BETAS, ms_ssim, ms_ssim_min_size, ms_ssim_scales, psnr

__all__ = [
    "BIOMEDCLIP_HUB_ID", "BiomedClipExtractor", "ClipExtractor", "EXTRACTORS", "ExtractorUnavailable",
    "FeatureExtractor", "INCEPTION_WEIGHTS_FILE", "InceptionExtractor", "MS_SSIM_BETAS", "RandomConvExtractor",
    "available_extractors", "extract_features", "feature_statistics", "fid", "frechet_distance", "get_extractor",
    "ms_ssim", "ms_ssim_min_size", "ms_ssim_scales", "psnr",
]
