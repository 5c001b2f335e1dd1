"""The paper's baseline: plain antialiased bicubic resizing, "latent" = the small image."""

from __future__ import annotations

import hashlib
from functools import partial

import torch
import torch.nn.functional as F

from latentds.codecs.base import (
    Codec,
    check_image_batch,
    check_latent_batch,
    compute_fingerprint,
    pad_to_multiple,
)
from latentds.codecs.registry import register_codec
from latentds.errors import CodecError

__all__ = ["BICUBIC_FACTORS", "BicubicCodec", "bicubic_down", "bicubic_up", "register_bicubic_codecs"]

BICUBIC_FACTORS = (4, 8, 16)


def bicubic_down(x: torch.Tensor, k: int) -> torch.Tensor:
    """Antialiased bicubic resize of ``x`` (H, W multiples of ``k``) down by ``k``.

    The one definition of the paper's baseline resize, shared by :class:`BicubicCodec`,
    the ``s2d`` codecs and the residual KL autoencoder so that they agree bit for bit.
    Differentiable (no inference mode here; the codecs add it).
    """
    h, w = x.shape[-2] // k, x.shape[-1] // k
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)


def bicubic_up(z: torch.Tensor, k: int) -> torch.Tensor:
    """Plain bicubic resize up by ``k`` (antialias only matters when downsizing)."""
    return F.interpolate(z, size=(z.shape[-2] * k, z.shape[-1] * k), mode="bicubic", align_corners=False)


class BicubicCodec(Codec):
    """Downsize by ``f`` with antialiased bicubic interpolation; decode upsizes.

    Latents are *not* clamped: bicubic's negative lobes can overshoot [0, 1] by a little
    and clamping would make decode(encode(x)) worse. ``decode`` output is clamped.
    """

    latent_channels = 1

    def __init__(self, f: int, *, device: str | torch.device = "cpu", name: str | None = None) -> None:
        if f not in BICUBIC_FACTORS:
            raise CodecError(f"bicubic codec: f must be one of {BICUBIC_FACTORS}, got {f}")
        self.f = f
        self.name = name or f"bicubic-f{f}"
        self.device = torch.device(device)

    @property
    def fingerprint(self) -> str:
        return compute_fingerprint(
            name=self.name,
            arch={"kind": "bicubic", "f": self.f, "antialias": True, "align_corners": False},
            weights_sha256=hashlib.sha256(b"").hexdigest(),  # no weights
            preprocessing={"pad": "replicate-bottom-right", "dtype": "float32"},
        )

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(check_image_batch(x, self.name).to(self.device), self.f)
        return bicubic_down(x, self.f).float().contiguous()

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.encode(x)
        return mean, torch.zeros_like(mean)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = check_latent_batch(z, self.name, 1).to(self.device)
        return bicubic_up(z, self.f).clamp_(0.0, 1.0).contiguous()

    def to(self, device: str | torch.device) -> BicubicCodec:
        self.device = torch.device(device)
        return self


def _factory(f: int, **kwargs: object) -> BicubicCodec:
    unknown = set(kwargs) - {"device"}
    if unknown:
        raise CodecError(f"codec 'bicubic-f{f}': unknown option(s) {sorted(unknown)}; the only option is device=")
    return BicubicCodec(f, **kwargs)  # type: ignore[arg-type]


def register_bicubic_codecs() -> None:
    for f in BICUBIC_FACTORS:
        register_codec(f"bicubic-f{f}", partial(_factory, f))
