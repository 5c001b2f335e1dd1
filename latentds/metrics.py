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

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .errors import LatentdsError

Reduction = Literal["mean", "none"]


class ExtractorUnavailable(LatentdsError):
    """A FID feature extractor's library or weights are not available locally (latentds
    never downloads them); the message says what is missing and how to provide it."""


# ----------------------------------------------------------------------------- images

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


# ----------------------------------------------------------------------------- extractors

class FeatureExtractor(torch.nn.Module):
    """Maps images (N×C×H×W, float in [0, 1]) to features (N×D). Subclasses set ``name`` and
    ``dim`` and implement :meth:`forward`; they are always in eval mode."""

    name: str = ""
    dim: int = 0

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 3:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")


class RandomConvExtractor(FeatureExtractor):
    """A tiny fixed random CNN (three stride-2 3×3 convolutions with ReLU, global average
    pooling) whose weights come from ``torch.Generator().manual_seed(seed)``: the same
    features on every run and machine, no weights file. For tests and plumbing checks only:
    its distances carry no perceptual meaning. Multi-channel input is averaged to gray."""

    name = "random-conv"

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        widths = (1, 8, 16, int(dim))
        self.convs = torch.nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            conv = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)
            self.convs.append(conv)
        self.dim = int(dim)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float().mean(1, keepdim=True) * 2 - 1
        for conv in self.convs:
            h = F.relu(conv(h))
        return h.mean((2, 3))


#: torch-fidelity's FID Inception weights (the TF 2015-12-05 graph) and where torch hub keeps them.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionExtractor(FeatureExtractor):
    """FID's Inception-v3 pool features (2048-D), via torchmetrics' ``NoTrainInceptionV3``
    (needs ``torch-fidelity``). Weights: ``weights_path``, else ``$LATENTDS_INCEPTION_WEIGHTS``,
    else ``<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (where
    torchmetrics / torch-fidelity put them once downloaded). Never downloads.
    Images are replicated to RGB and quantised to uint8, as torchmetrics' FID does."""

    name = "inception"
    dim = 2048

    def __init__(self, weights_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as e:  # pragma: no cover - torchmetrics is a dependency
            raise ExtractorUnavailable(f"FID-Inception needs torchmetrics' image extras: {e}") from e
        if not _TORCH_FIDELITY_AVAILABLE:
            raise ExtractorUnavailable("FID-Inception needs torch-fidelity (pip install torch-fidelity) and its "
                                       f"{INCEPTION_WEIGHTS_FILE} weights file, which latentds never downloads")
        candidates = [Path(weights_path)] if weights_path else []
        if not weights_path and os.environ.get("LATENTDS_INCEPTION_WEIGHTS"):
            candidates.append(Path(os.environ["LATENTDS_INCEPTION_WEIGHTS"]))
        if not weights_path:
            candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ExtractorUnavailable(
                f"FID-Inception weights not found locally (looked at: {', '.join(map(str, candidates))}); "
                f"latentds never downloads them. Put torch-fidelity's {INCEPTION_WEIGHTS_FILE} there, pass "
                "weights_path=..., or set LATENTDS_INCEPTION_WEIGHTS.")
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.dim)],
                                          feature_extractor_weights_path=str(found))
        except Exception as e:  # a corrupt or wrong weights file
            raise ExtractorUnavailable(f"cannot load FID-Inception weights from {found}: {e}") from e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u8 = (_to_rgb(x).clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(u8).reshape(x.shape[0], -1).to(torch.float64)


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Forbid Hugging Face Hub network access (env vars and, if imported, the live constant)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    constants = None
    try:
        import huggingface_hub.constants as constants  # type: ignore[no-redef]
        old = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
    except Exception:  # huggingface_hub missing or without the constant
        constants = None
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _open_clip_cached_weights(open_clip: Any, model_name: str, tag: str) -> str:
    """The local file of open_clip's pretrained ``tag`` for ``model_name``: the Hugging Face
    cache for hub-hosted weights, ``~/.cache/clip`` for URL-hosted ones; never downloads."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag) or {}
    if not cfg:
        raise ExtractorUnavailable(f"open_clip has no pretrained weights {tag!r} for {model_name!r}")
    tried: list[str] = []
    hub = (cfg.get("hf_hub") or "").strip("/")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
            try_to_load_from_cache = None
        parts = hub.split("/")
        repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            tried.append(f"hf://{repo_id}/{sub + '/' if sub else ''}{fname}")
            hit = try_to_load_from_cache(repo_id, f"{sub}/{fname}" if sub else fname) if try_to_load_from_cache else None
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    url = cfg.get("url")
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        tried.append(str(local))
        if local.is_file():
            return str(local)
    raise ExtractorUnavailable(f"open_clip weights {model_name}/{tag} are not in the local caches (looked for "
                               f"{', '.join(tried) or 'nothing'}); latentds never downloads them. Pass "
                               "pretrained=<checkpoint file>.")


def _open_clip_from_dir(open_clip: Any, path: Path) -> Any:
    """An open_clip model from a directory in the hub layout (``open_clip_config.json`` plus
    ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``)."""
    config = path / "open_clip_config.json"
    weights = next((path / n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
                    if (path / n).is_file()), None)
    if not config.is_file() or weights is None:
        raise ExtractorUnavailable(f"{path}: not an open_clip model directory (needs open_clip_config.json and "
                                   "open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    try:  # open_clip versions that know the local-dir: schema
        return open_clip.create_model(f"local-dir:{path}")
    except Exception:
        pass
    import hashlib
    import json

    # older open_clip: register the directory's model config under a private name
    name = "latentds-local-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    open_clip.factory._MODEL_CONFIGS[name] = json.loads(config.read_text())["model_cfg"]
    return open_clip.create_model(name, pretrained=str(weights))


class _OpenClipExtractor(FeatureExtractor):
    """Image-tower embeddings of an open_clip model loaded from local files only."""

    def _load(self, model_name: str | None, pretrained: str | os.PathLike[str] | None, hub_id: str | None) -> None:
        try:
            import open_clip
        except ImportError as e:
            raise ExtractorUnavailable(f"FID-{self.name} needs open_clip (pip install open_clip_torch); {e}") from e
        try:
            with _hf_offline():
                if pretrained is not None and Path(pretrained).is_dir():
                    model = _open_clip_from_dir(open_clip, Path(pretrained))
                elif pretrained is not None and Path(pretrained).is_file():
                    model = open_clip.create_model(model_name, pretrained=str(pretrained))
                elif hub_id is not None:
                    model = open_clip.create_model(f"hf-hub:{hub_id}")
                else:
                    local = _open_clip_cached_weights(open_clip, str(model_name), str(pretrained))
                    model = open_clip.create_model(model_name, pretrained=local)
        except ExtractorUnavailable:
            raise
        except Exception as e:
            where = pretrained if pretrained is not None else f"the Hugging Face cache ({hub_id})"
            raise ExtractorUnavailable(
                f"FID-{self.name} weights are not available locally (looked in {where}); latentds never "
                f"downloads them. Pass pretrained=<checkpoint file or open_clip model dir>. Cause: "
                f"{type(e).__name__}: {e}") from e
        self.model = model.eval().requires_grad_(False)
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.dim = int(getattr(visual, "output_dim", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Whole image resized to the model's input (no centre crop), CLIP normalisation.
        h = F.interpolate(_to_rgb(x).float(), size=self.image_size, mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        return self.model.encode_image((h - self.mean) / self.std).to(torch.float64)


class ClipExtractor(_OpenClipExtractor):
    """CLIP image embeddings (open_clip; default ``ViT-B-32`` with OpenAI weights, as in
    clean-fid's FID-CLIP). ``pretrained``: a checkpoint file, an open_clip model directory
    (``open_clip_config.json`` + weights), or an open_clip tag (``"openai"``) resolved from
    the local Hugging Face cache only."""

    name = "clip"

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | os.PathLike[str] = "openai") -> None:
        super().__init__()
        self._load(model_name, pretrained, None)


#: BiomedCLIP's Hugging Face repository (open_clip layout).
BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


class BiomedClipExtractor(_OpenClipExtractor):
    """BiomedCLIP image embeddings (open_clip). ``pretrained``: an open_clip model directory
    holding BiomedCLIP's ``open_clip_config.json`` and weights; default: the local Hugging
    Face cache of ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (its text
    tower's PubMedBERT config must be cached too, as open_clip builds the whole model)."""

    name = "biomedclip"

    def __init__(self, pretrained: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self._load(None, pretrained, None if pretrained is not None else BIOMEDCLIP_HUB_ID)


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "inception": InceptionExtractor,
    "clip": ClipExtractor,
    "biomedclip": BiomedClipExtractor,
    "random-conv": RandomConvExtractor,
}


def get_extractor(name: str | FeatureExtractor, **kwargs: Any) -> FeatureExtractor:
    """An extractor by name (``EXTRACTORS``), or ``name`` itself if it is one already.
    Raises :class:`ExtractorUnavailable` when its library or weights are not local."""
    if isinstance(name, torch.nn.Module):
        return name  # type: ignore[return-value]
    try:
        factory = EXTRACTORS[name]
    except KeyError:
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTORS)}") from None
    return factory(**kwargs)


def available_extractors() -> dict[str, str | None]:
    """Each extractor name -> ``None`` if it loads here, else why not (for skip messages)."""
    out: dict[str, str | None] = {}
    for name in EXTRACTORS:
        try:
            get_extractor(name)
            out[name] = None
        except ExtractorUnavailable as e:
            out[name] = str(e)
    return out


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


__all__ = [
    "BIOMEDCLIP_HUB_ID", "BiomedClipExtractor", "ClipExtractor", "EXTRACTORS", "ExtractorUnavailable",
    "FeatureExtractor", "INCEPTION_WEIGHTS_FILE", "InceptionExtractor", "MS_SSIM_BETAS", "RandomConvExtractor",
    "available_extractors", "extract_features", "feature_statistics", "fid", "frechet_distance", "get_extractor",
    "ms_ssim", "ms_ssim_min_size", "ms_ssim_scales", "psnr",
]
