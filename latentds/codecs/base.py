"""The codec interface every latent codec implements, plus the helpers they share
(input validation, bottom/right padding, fingerprints).

A codec maps a batch of grayscale images ``B×1×H×W`` in ``[0, 1]`` to latents
``B×C×ceil(H/f)×ceil(W/f)`` and back. Codecs are deterministic (docs/design.md invariant 1):
``encode`` returns the posterior *mean*, never a sample. :attr:`Codec.posterior` says
whether there is a posterior at all (KL autoencoders) or the codec is one fixed map
(bicubic, s2d), whose ``encode_dist`` std is zero.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from latentds.canonical import canonical_json
from latentds.errors import CodecError

__all__ = [
    "CODEC_FORMAT_VERSION",
    "RANGE_TOLERANCE",
    "Codec",
    "canonical_json",
    "ceil_div",
    "check_image_batch",
    "check_latent_batch",
    "compute_fingerprint",
    "pad_to_multiple",
    "state_dict_sha256",
]

#: Bumped whenever the meaning of a codec's output changes in a way the other
#: fingerprint fields cannot see (e.g. a different padding rule or blending ramp), so
#: that caches keyed by :attr:`Codec.fingerprint` never serve stale latents.
CODEC_FORMAT_VERSION = 1

#: Inputs may overshoot [0, 1] by this much (float rounding in resize / windowing)
#: before ``encode`` refuses them.
RANGE_TOLERANCE = 1e-3


def compute_fingerprint(
    *,
    name: str,
    arch: Mapping[str, Any],
    weights_sha256: str,
    preprocessing: Mapping[str, Any],
) -> str:
    """sha256 over everything that determines a codec's output (docs/design.md invariant 2)."""
    payload = {
        "codec_format_version": CODEC_FORMAT_VERSION,
        "name": name,
        "arch": dict(arch),
        "weights_sha256": weights_sha256,
        "preprocessing": dict(preprocessing),
    }
    return hashlib.sha256(canonical_json(payload, strict=True).encode("utf-8")).hexdigest()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the tensors in sorted key order. Key, dtype and shape are hashed with
    the bytes so that a reshaped or renamed tensor cannot collide with the original."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(key.encode("utf-8"))
        h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode("ascii"))
        # Viewing as uint8 works for every dtype, bf16 included (numpy has no bf16).
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pad_to_multiple(x: torch.Tensor, f: int) -> torch.Tensor:
    """Pad H and W up to a multiple of ``f`` at the bottom/right by edge replication.

    Bottom/right (not centred) so that latent pixel (i, j) always covers image pixels
    [i*f, (i+1)*f): the top-left origin is preserved and callers can crop the decoded
    image back to ``H×W`` with ``[..., :H, :W]``. Replication (not zeros) avoids a
    synthetic edge that the encoder would spend latent capacity on.
    """
    h, w = x.shape[-2:]
    ph, pw = ceil_div(h, f) * f - h, ceil_div(w, f) * f - w
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def check_image_batch(x: torch.Tensor, codec_name: str) -> torch.Tensor:
    """Validate an ``encode`` input and return it as contiguous float32."""
    if not isinstance(x, torch.Tensor):
        raise CodecError(f"codec {codec_name!r}: encode expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise CodecError(
            f"codec {codec_name!r}: encode expects a B×1×H×W grayscale batch, got shape "
            f"{tuple(x.shape)}; add batch/channel dims with x[None, None] or x[:, None]"
        )
    if not x.is_floating_point():
        raise CodecError(
            f"codec {codec_name!r}: encode expects float pixels in [0, 1], got dtype {x.dtype}; "
            "convert with x.float() / max_value (latentds.preprocess does this)"
        )
    if x.numel() == 0:
        raise CodecError(f"codec {codec_name!r}: encode got an empty batch of shape {tuple(x.shape)}")
    x = x.float()
    lo, hi = torch.aminmax(x)
    lo_v, hi_v = float(lo), float(hi)
    if not (lo_v >= -RANGE_TOLERANCE and hi_v <= 1 + RANGE_TOLERANCE):  # also catches NaN
        raise CodecError(
            f"codec {codec_name!r}: encode expects pixel values in [0, 1], got min {lo_v:g} max {hi_v:g}; "
            "rescale the image (e.g. window and divide by the maximum) before encoding"
        )
    return x.contiguous()


def check_latent_batch(z: torch.Tensor, codec_name: str, channels: int) -> torch.Tensor:
    """Validate a ``decode`` input and return it as contiguous float32."""
    if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != channels:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise CodecError(
            f"codec {codec_name!r}: decode expects a B×{channels}×h×w latent batch, got {shape}; "
            "pass latents produced by this codec's encode"
        )
    if not z.is_floating_point():
        raise CodecError(f"codec {codec_name!r}: decode expects float latents, got dtype {z.dtype}")
    return z.float().contiguous()


class Codec(abc.ABC):
    """A deterministic image <-> latent codec.

    Attributes:
        name: registry name (``"kl-f8c4"``) or the name stored in an exported file.
        f: downsampling factor per side.
        latent_channels: C, channels of the latent.
        device: where the codec computes; outputs stay on this device.
        posterior: False (default) for a deterministic map whose ``encode_dist`` std is
            zero (bicubic, s2d); True when ``encode`` is the mean of a posterior whose
            std ``encode_dist`` reports (KL autoencoders). Either way ``encode`` itself is
            deterministic; a consumer that wants samples draws them from ``encode_dist``.
    """

    name: str
    f: int
    latent_channels: int
    device: torch.device
    posterior: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """Hex sha256 over codec name, architecture config, weights hash, codec-side
        preprocessing and :data:`CODEC_FORMAT_VERSION`."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``B×1×H×W`` float in [0, 1] -> ``B×C×ceil(H/f)×ceil(W/f)`` float32 posterior mean.

        H and W that are not multiples of ``f`` are padded bottom/right by edge
        replication first (:func:`pad_to_multiple`)."""

    @abc.abstractmethod
    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the posterior, both float32 and shaped like :meth:`encode`."""

    @abc.abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``B×C×h×w`` -> ``B×1×(h*f)×(w*f)`` float32 in [0, 1] (clamped). Crop to the
        original ``H×W`` with ``[..., :H, :W]`` if the input was padded."""

    @abc.abstractmethod
    def to(self, device: str | torch.device) -> Codec:
        """Move the codec to ``device`` in place and return it."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, f={self.f}, C={self.latent_channels}, "
            f"device={self.device}, fingerprint={self.fingerprint[:12]}…)"
        )
