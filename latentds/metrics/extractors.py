"""FID feature extractors: Inception (FID-Inc), CLIP, BiomedCLIP and a tiny random CNN for
tests. Weights are never downloaded: an extractor whose library or weights are not available
locally raises :class:`ExtractorUnavailable`."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import LatentdsError

__all__ = [
    "BIOMEDCLIP_HUB_ID", "BiomedClipExtractor", "ClipExtractor", "EXTRACTORS", "ExtractorUnavailable",
    "FeatureExtractor", "INCEPTION_WEIGHTS_FILE", "InceptionExtractor", "RandomConvExtractor",
    "available_extractors", "get_extractor",
]


class ExtractorUnavailable(LatentdsError):
    """A FID feature extractor's library or weights are not available locally (latentds
    never downloads them); the message says what is missing and how to provide it."""


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
