"""The residual KL autoencoder: a learned correction around the ``s2d`` baseline (issue 13).

    mean(x) = s2d(x) + α·g(x)                      latents in s2d units (image [0, 1] scale)
    x̂(z)    = s2d⁻¹(z) + α·h(z)                    s2d⁻¹ = pixel_shuffle, then bicubic up

``g`` = diffusers ``Encoder`` + the mean half of ``quant_conv``, ``h`` = ``post_quant_conv``
+ diffusers ``Decoder`` (halved, so a decoder output of ±1 is ±0.5 in image units): exactly
the modules of a diffusers ``AutoencoderKL``, so the plain architecture's config, state
dict layout, export format, lean inference forward and tiling all carry over. The last
layers of g (mean half of ``quant_conv``) and h (``decoder.conv_out``) start at zero and
the log-variance half of ``quant_conv`` starts at a constant (near-deterministic
posterior), so an untrained model *is* ``s2d-f{f}c{C}``: training starts from the
baseline's fidelity on any budget.

α ∈ [0, 1] is the shipped-time guard: α = 0 is exactly s2d; the exported codec carries
the α chosen on validation images (:func:`choose_alpha`) so that it is never worse than
s2d there. Training uses α = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentds.codecs.s2d import s2d_decode, s2d_encode
from latentds.errors import CodecError

__all__ = [
    "ARCH_KINDS",
    "PLAIN",
    "RESIDUAL_S2D",
    "ResidualS2DAutoencoder",
    "choose_alpha",
    "high_pass",
    "zero_init_corrections",
]

PLAIN = "plain"
RESIDUAL_S2D = "residual-s2d"
ARCH_KINDS = (PLAIN, RESIDUAL_S2D)

#: Initial posterior log-variance of the residual model: std = e^-5 ≈ 0.0067 in image
#: units (under 2 grey levels of 8 bit), so the first decoder updates see nearly the
#: baseline's latents, yet sampling is not degenerate.
DEFAULT_RESIDUAL_LOGVAR = -10.0


def zero_init_corrections(model: nn.Module, latent_channels: int, logvar: float = DEFAULT_RESIDUAL_LOGVAR) -> None:
    """Make g and h output exactly zero and the posterior log-variance ``logvar``.

    Zeros (not small noise) because the step-0 model must equal s2d to float tolerance;
    the gradients of a zero last layer are not zero (its inputs are not), so it learns
    from the first step, as ControlNet's zero convolutions do.
    """
    qc, out = getattr(model, "quant_conv", None), model.decoder.conv_out  # type: ignore[union-attr]
    if qc is None:
        raise CodecError("residual-s2d needs an AutoencoderKL with quant_conv (use_quant_conv=True)")
    c = int(latent_channels)
    with torch.no_grad():
        qc.weight.zero_()
        qc.bias[:c].zero_()
        qc.bias[c:].fill_(float(logvar))
        out.weight.zero_()
        if out.bias is not None:
            out.bias.zero_()


class ResidualS2DAutoencoder(nn.Module):
    """Trainable residual model with a diffusers-like interface for the trainer.

    ``encode(x)`` / ``decode(z)`` take and give images in [-1, 1] (the trainer's range) and
    return objects with ``.latent_dist`` / ``.sample`` like ``AutoencoderKL``; latents are
    in s2d units. The submodules are the ``AutoencoderKL``'s own (``encoder``,
    ``quant_conv``, ``post_quant_conv``, ``decoder``), so the state dict has the plain
    model's keys and loads into ``AutoencoderKL`` strictly.
    """

    def __init__(self, vae: nn.Module, f: int, latent_channels: int, *, alpha: float = 1.0,
                 zero_init: bool = True, logvar_init: float | None = None) -> None:
        super().__init__()
        vae_: Any = vae
        self.encoder = vae_.encoder
        self.decoder = vae_.decoder
        self.quant_conv = vae_.quant_conv
        self.post_quant_conv = vae_.post_quant_conv
        self.config = vae_.config
        self.f, self.latent_channels = int(f), int(latent_channels)
        if not 0.0 <= float(alpha) <= 1.0:
            raise CodecError(f"residual-s2d: alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        s2d_encode(torch.zeros(1, 1, self.f, self.f), self.f, self.latent_channels)  # validates (f, C)
        if zero_init:
            zero_init_corrections(self, self.latent_channels,
                                  DEFAULT_RESIDUAL_LOGVAR if logvar_init is None else float(logvar_init))

    # -- the two halves, in image units [0, 1] ------------------------------------

    def moments01(self, x01: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] -> (mean, logvar) stacked on channels."""
        h = self.encoder(x01 * 2.0 - 1.0)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        g, logvar = torch.chunk(h.float(), 2, dim=1)
        # The baseline always in float32, outside any autocast: in bf16 it would lose
        # everything below ~40 dB, and the correction could not win it back.
        with torch.autocast(device_type=x01.device.type, enabled=False):
            base = s2d_encode(x01.float(), self.f, self.latent_channels)
        return torch.cat([base + self.alpha * g, logvar], dim=1)

    def decode01(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image in [0, 1] units (unclamped)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            base = s2d_decode(z.float(), self.f, self.latent_channels)
        h = self.post_quant_conv(z) if self.post_quant_conv is not None else z
        return base + self.alpha * 0.5 * self.decoder(h).float()

    # -- diffusers-like interface ([-1, 1] images) --------------------------------

    def encode(self, x: torch.Tensor) -> Any:
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(self.moments01((x + 1.0) / 2.0)))

    def decode(self, z: torch.Tensor) -> Any:
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=self.decode01(z) * 2.0 - 1.0)

    def set_attn_processor(self, processor: Any) -> None:
        for m in self.modules():
            if hasattr(m, "set_processor") and m is not self:
                m.set_processor(processor)


# --------------------------------------------------------------------------- losses


def _gauss_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def high_pass(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """``x − G_σ * x`` per channel (separable Gaussian, replicate padding): the detail that
    bicubic resizing removes -- small bright structures, thin lines and edges."""
    k = _gauss_kernel(sigma, x.device, x.dtype)
    r = k.numel() // 2
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x - y


# --------------------------------------------------------------------------- α guard


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-20))


def choose_alpha(
    roundtrip: Callable[[torch.Tensor, float], torch.Tensor],
    images: Sequence[torch.Tensor],
    *,
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),
    grid: Sequence[float] = tuple(i / 20 for i in range(21)),
) -> tuple[float, dict[str, Any]]:
    """Largest-gain α in ``grid`` whose codec is never worse than s2d (α = 0) on validation.

    ``roundtrip(x, alpha)``: clamped reconstruction of a 1×1×H×W image in [0, 1].
    Constraints at each α: PSNR ≥ s2d's on *every* image in ``images``, and on every
    ``(positive, negative, mask)`` finding pair the finding-region PSNR (the error of the
    reconstructed difference positive − negative inside ``mask``) ≥ s2d's. α = 0 meets all
    of them with equality, so the answer always exists. Objective: mean PSNR gain plus
    mean finding-region gain. Returns (α, report).
    """
    if not images and not pairs:
        raise CodecError("choose_alpha needs at least one validation image or finding pair")
    grid = sorted({0.0, *(float(a) for a in grid)})
    if grid[0] < 0.0 or grid[-1] > 1.0:
        raise CodecError(f"choose_alpha: grid must lie in [0, 1], got {grid}")

    def scores(alpha: float) -> tuple[list[float], list[float]]:
        ps = [_psnr(x, roundtrip(x, alpha)) for x in images]
        fs = []
        for pos, neg, mask in pairs:
            d_true = (pos - neg)[mask]
            d_rec = (roundtrip(pos, alpha) - roundtrip(neg, alpha))[mask]
            fs.append(_psnr(d_true, d_rec))
        return ps, fs

    base_p, base_f = scores(0.0)
    rows, best, best_gain = [], 0.0, 0.0
    for alpha in grid:
        ps, fs = (base_p, base_f) if alpha == 0.0 else scores(alpha)
        dp = [a - b for a, b in zip(ps, base_p)]
        df = [a - b for a, b in zip(fs, base_f)]
        ok = all(d >= 0.0 for d in dp) and all(d >= 0.0 for d in df)
        gain = (sum(dp) / len(dp) if dp else 0.0) + (sum(df) / len(df) if df else 0.0)
        rows.append({"alpha": alpha, "min_psnr_gain_db": min(dp) if dp else None,
                     "mean_psnr_gain_db": sum(dp) / len(dp) if dp else None,
                     "min_finding_gain_db": min(df) if df else None,
                     "mean_finding_gain_db": sum(df) / len(df) if df else None, "never_worse": ok})
        if ok and gain > best_gain:
            best, best_gain = alpha, gain
    return best, {"alpha": best, "n_images": len(images), "n_pairs": len(pairs), "grid": rows,
                  "s2d_mean_psnr_db": sum(base_p) / len(base_p) if base_p else None}


def residual_metadata(alpha: float) -> Mapping[str, str]:
    """Export-file metadata that marks a residual model (read back by codec_file.parse_codec_file)."""
    return {"latentds_arch_kind": RESIDUAL_S2D, "latentds_residual_alpha": repr(float(alpha))}
