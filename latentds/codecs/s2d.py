"""Space-to-depth codecs ``s2d-f{f}c{C}``: the free, weight-less baseline at any (f, C).

encode: antialiased bicubic down by ``k = f / sqrt(C)`` (the very resize of
:class:`~latentds.codecs.bicubic.BicubicCodec`), then ``pixel_unshuffle`` by ``r = sqrt(C)``;
decode: ``pixel_shuffle`` by ``r``, then bicubic up by ``k``.

* ``C = 1`` is ``bicubic-f{f}`` bit for bit (``r = 1``).
* ``C = f²`` is lossless (``k = 1``: no resize at all, only a rearrangement), the control
  that tells a probe's blindness from a codec's information loss.
* In between it is the compression-ratio- and FLOP-matched baseline every learned codec
  with the same f and C has to beat (issue 12/13).
"""

from __future__ import annotations

import hashlib
import math
from functools import partial

import torch
import torch.nn.functional as F

from latentds.codecs.base import Codec, check_image_batch, check_latent_batch, compute_fingerprint, pad_to_multiple
from latentds.codecs.bicubic import bicubic_down, bicubic_up
from latentds.codecs.registry import register_codec
from latentds.errors import CodecError

__all__ = ["S2D_FACTORS", "S2DCodec", "register_s2d_codecs", "s2d_channels", "s2d_decode", "s2d_encode"]

S2D_FACTORS = (4, 8, 16)


def s2d_channels(f: int) -> tuple[int, ...]:
    """Every square C whose root divides ``f`` (f=4: 1, 4, 16; f=16: 1, 4, 16, 64, 256)."""
    return tuple(r * r for r in range(1, f + 1) if f % r == 0 and (r & (r - 1)) == 0)


def _split(f: int, c: int, where: str) -> tuple[int, int]:
    r = math.isqrt(c)
    if f not in S2D_FACTORS or c not in s2d_channels(f):
        raise CodecError(
            f"{where}: s2d needs f in {S2D_FACTORS} and C a square whose root divides f "
            f"(C in {s2d_channels(f) if f in S2D_FACTORS else '...'}), got f={f}, C={c}"
        )
    return f // r, r


def s2d_encode(x: torch.Tensor, f: int, c: int) -> torch.Tensor:
    """Differentiable s2d encode of a padded ``B×1×H×W`` batch (H, W multiples of f)."""
    k, r = _split(f, c, "s2d_encode")
    # k == 1 skips the resize: interpolate to the same size is not guaranteed to be the
    # identity bit for bit, and C = f² must be exactly lossless.
    z = bicubic_down(x, k) if k > 1 else x
    return F.pixel_unshuffle(z, r) if r > 1 else z


def s2d_decode(z: torch.Tensor, f: int, c: int) -> torch.Tensor:
    """Differentiable s2d decode (unclamped): pixel_shuffle by sqrt(C), bicubic up by f/sqrt(C)."""
    k, r = _split(f, c, "s2d_decode")
    y = F.pixel_shuffle(z, r) if r > 1 else z
    return bicubic_up(y, k) if k > 1 else y


class S2DCodec(Codec):
    """Bicubic down by f/sqrt(C), then space-to-depth by sqrt(C). Deterministic, no weights.

    Latents are not clamped (bicubic overshoot is information, as in BicubicCodec);
    decode output is clamped to [0, 1], which leaves a lossless C = f² round trip of a
    [0, 1] image exact.
    """

    def __init__(self, f: int, c: int, *, device: str | torch.device = "cpu", name: str | None = None) -> None:
        self.name = name or f"s2d-f{f}c{c}"
        self.k, self.r = _split(f, c, f"codec {self.name!r}")
        self.f = f
        self.latent_channels = c
        self.device = torch.device(device)

    @property
    def fingerprint(self) -> str:
        return compute_fingerprint(
            name=self.name,
            arch={
                "kind": "s2d",
                "f": self.f,
                "C": self.latent_channels,
                "resize": {"factor": self.k, "mode": "bicubic", "antialias": True, "align_corners": False},
                "pixel_unshuffle": self.r,
            },
            weights_sha256=hashlib.sha256(b"").hexdigest(),  # no weights
            preprocessing={"pad": "replicate-bottom-right", "dtype": "float32"},
        )

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(check_image_batch(x, self.name).to(self.device), self.f)
        return s2d_encode(x, self.f, self.latent_channels).float().contiguous()

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.encode(x)
        return mean, torch.zeros_like(mean)

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = check_latent_batch(z, self.name, self.latent_channels).to(self.device)
        return s2d_decode(z, self.f, self.latent_channels).clamp_(0.0, 1.0).contiguous()

    def to(self, device: str | torch.device) -> S2DCodec:
        self.device = torch.device(device)
        return self


def _factory(f: int, c: int, **kwargs: object) -> S2DCodec:
    unknown = set(kwargs) - {"device"}
    if unknown:
        raise CodecError(
            f"codec 's2d-f{f}c{c}': unknown option(s) {sorted(unknown)}; the only option is device= (s2d has no weights)"
        )
    return S2DCodec(f, c, **kwargs)  # type: ignore[arg-type]


def register_s2d_codecs() -> None:
    for f in S2D_FACTORS:
        for c in s2d_channels(f):
            register_codec(f"s2d-f{f}c{c}", partial(_factory, f, c))
