"""The KL codec runtime: a diffusers ``AutoencoderKL`` (or the residual-s2d variant) as a
deterministic latentds codec, with precision options and tiling.

Three families share :class:`KLCodec`: ``kl-f{f}c{C}`` (the paper's 1-channel
autoencoders), ``sd-vae-*`` (natural-image latent-diffusion VAEs, 3 channels) and
``medvae-*`` (MedVAE, 1 or 3 channels). Which weights a name gets is the catalogue's and
the weight resolver's job (:mod:`latentds.codecs.catalogue`, :mod:`latentds.codecs.weights`);
how a model is built is :mod:`latentds.codecs.build`'s; the file format is
:mod:`latentds.codecs.codec_file`'s. Codec-side preprocessing is fixed by the model's
``in_channels``: [0,1] -> [-1,1]; 3-channel models get the gray channel repeated on
encode and the three output channels averaged on decode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from latentds.codecs.base import (
    Codec,
    check_image_batch,
    check_latent_batch,
    compute_fingerprint,
    pad_to_multiple,
    state_dict_sha256,
)
from latentds.codecs.build import AutoencoderKL, clean_config
from latentds.codecs.lean import decoder_forward, encoder_forward, supports_lean
from latentds.codecs.s2d import s2d_channels, s2d_decode, s2d_encode
from latentds.codecs.tiling import blend_tiles
from latentds.errors import CodecError

__all__ = ["RUNTIME_KWARGS", "KLCodec", "ResidualKLCodec", "channels_last_for", "make_kl_codec"]

_PRECISIONS = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Config keys that never change a codec's output (latents are unscaled, the model is
#: fully convolutional): left out of the fingerprint.
_OUTPUT_NEUTRAL_CONFIG = frozenset(
    {"sample_size", "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast"}
)
#: Options every KL codec takes, whatever its weights.
RUNTIME_KWARGS = ("device", "dtype", "autocast", "tile_size", "tile_overlap", "memory_format")
_MEMORY_FORMATS = (None, "channels_last", "contiguous")


def channels_last_for(device: torch.device) -> bool:
    """The default activation layout of the lean forward on ``device``: channels_last on
    CPU (oneDNN convolves NHWC directly, and it is what every cache so far was written
    with), NCHW elsewhere (on an H200 the NCHW forward was 1.5x the channels_last one,
    benchmarks/RESULTS.md "GPU path")."""
    return torch.device(device).type == "cpu"


class KLCodec(Codec):
    """A diffusers ``AutoencoderKL`` as a deterministic latentds codec.

    ``encode`` returns the posterior mean (diffusers ``latent_dist.mode()``), computed as
    ``encoder -> quant_conv -> first half of the moments``; no scaling factor is applied
    (latents are the raw posterior mean; scaling/standardising is the consumer's job).
    """

    #: "plain" (the paper's / ldm's AutoencoderKL) or "residual-s2d" (ResidualKLCodec).
    arch_kind = "plain"
    #: A KL codec has a posterior: ``encode`` is its mean, ``encode_dist`` its std.
    posterior = True

    def __init__(
        self,
        name: str,
        model: AutoencoderKL,
        *,
        device: str | torch.device = "cpu",
        dtype: str | None = None,
        autocast: str | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        memory_format: str | None = None,
        source: str = "",
        ignored_keys: list[str] | None = None,
        lora_merged: int = 0,
    ) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        model_: Any = model
        cfg = clean_config(model_.config)
        n_levels = len(cfg["block_out_channels"])
        self.name = name
        self.f = 2 ** (n_levels - 1)
        self.latent_channels = int(cfg["latent_channels"])
        self.in_channels = int(cfg["in_channels"])
        self.out_channels = int(cfg["out_channels"])
        if self.in_channels not in (1, 3) or self.out_channels not in (1, 3):
            raise CodecError(
                f"codec {name!r}: only 1- or 3-channel autoencoders are supported, got "
                f"in_channels={self.in_channels}, out_channels={self.out_channels}"
            )
        for key, value in (("dtype", dtype), ("autocast", autocast)):
            if value not in _PRECISIONS:
                raise CodecError(f"codec {name!r}: {key} must be one of None, 'bf16', 'fp16'; got {value!r}")
        if dtype is not None and autocast is not None:
            raise CodecError(f"codec {name!r}: pass either dtype= (cast weights) or autocast=, not both")
        self.dtype, self.autocast = dtype, autocast
        if memory_format not in _MEMORY_FORMATS:
            raise CodecError(
                f"codec {name!r}: memory_format must be None (by device), 'channels_last' or 'contiguous'; "
                f"got {memory_format!r}"
            )
        self.memory_format = memory_format
        self.tile_size, self.tile_overlap = self._check_tiling(tile_size, tile_overlap)
        self.source = source
        self.ignored_keys = list(ignored_keys or [])
        self.lora_merged = lora_merged
        self.config = cfg

        model.eval().requires_grad_(False)
        # SDPA never materialises the N×N attention matrix (diffusers' default on torch>=2,
        # set explicitly so a model configured elsewhere cannot fall back to AttnProcessor).
        model.set_attn_processor(AttnProcessor2_0())
        # The lean forward (lean.py) drops references diffusers keeps and runs activations
        # channels_last; together they take the 2048² f=8 encode peak from 5 to 3
        # full-resolution activations (benchmarks/attention_memory.py).
        self._lean = supports_lean(model)
        # Hash the fp32 weights before any precision cast: dtype is a separate fingerprint field.
        self._weights_sha256 = state_dict_sha256(model.state_dict())
        if dtype is not None:
            # nn.Module.to, not ModelMixin.to, which warns about fp32-only modules (there are none).
            torch.nn.Module.to(model, dtype=_PRECISIONS[dtype])
        self.model: Any = model  # diffusers modules are dynamically typed
        self.device = torch.device("cpu")
        self.to(device)

    # -- configuration -------------------------------------------------------

    def _check_tiling(self, tile_size: int | None, tile_overlap: int | None) -> tuple[int | None, int]:
        if tile_size is None:
            if tile_overlap not in (None, 0):
                raise CodecError(f"codec {self.name!r}: tile_overlap needs tile_size")
            return None, 0
        f = self.f
        if not isinstance(tile_size, int) or tile_size < 2 * f or tile_size % f:
            raise CodecError(
                f"codec {self.name!r}: tile_size must be an int multiple of f={f} and at least {2 * f}, "
                f"got {tile_size!r}"
            )
        if tile_overlap is None:
            tile_overlap = max(f, (tile_size // 4) // f * f)
        if not isinstance(tile_overlap, int) or tile_overlap < 0 or tile_overlap % f or tile_overlap >= tile_size:
            raise CodecError(
                f"codec {self.name!r}: tile_overlap must be a multiple of f={f} in [0, tile_size), got {tile_overlap!r}"
            )
        return tile_size, tile_overlap

    @property
    def preprocessing(self) -> dict[str, Any]:
        return {
            "input_range": "[0,1]->[-1,1] (2x-1)",
            "output_range": "[-1,1]->[0,1] ((y+1)/2, clamped)",
            "channels": "repeat 1->3 on encode, mean 3->1 on decode" if self.in_channels == 3 else "none",
            "pad": "replicate-bottom-right",
            "latent": "posterior-mean",
            "attention": "sdpa",
            # The layout actually used: channels_last convolutions round differently from NCHW.
            "memory_format": "channels_last" if self._channels_last() else "contiguous",
            "dtype": self.dtype,
            "autocast": self.autocast,
            "tile_size": self.tile_size,
            "tile_overlap": self.tile_overlap if self.tile_size else None,
            "tile_blend": "linear-ramp" if self.tile_size else None,
        }

    @property
    def weights_sha256(self) -> str:
        return self._weights_sha256

    @property
    def fingerprint(self) -> str:
        # Config keys that never change this codec's output (latents are unscaled, the
        # model is fully convolutional) are left out, so the same weights loaded from an
        # ldm checkpoint or from a diffusers folder share one cache namespace.
        arch = {k: v for k, v in self.config.items() if k not in _OUTPUT_NEUTRAL_CONFIG}
        return compute_fingerprint(
            name=self.name, arch=arch, weights_sha256=self._weights_sha256, preprocessing=self.preprocessing
        )

    def _channels_last(self) -> bool:
        if not self._lean:
            return False
        if self.memory_format is None:
            return channels_last_for(self.device)
        return self.memory_format == "channels_last"

    def to(self, device: str | torch.device) -> KLCodec:
        self.device = torch.device(device)
        torch.nn.Module.to(self.model, device=self.device)
        return self

    # -- computation ---------------------------------------------------------

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.autocast is None:
            yield
        else:
            with torch.autocast(device_type=self.device.type, dtype=_PRECISIONS[self.autocast]):
                yield

    def _param_dtype(self) -> torch.dtype:
        return _PRECISIONS[self.dtype] or torch.float32

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """Image tile in [0,1] (B×1×h×w, h,w multiples of f) -> (mean, logvar) stacked on C."""
        x = x * 2.0 - 1.0
        if self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        x = x.to(self._param_dtype())
        with self._precision():
            if self._lean:
                box = [x]
                del x  # the box holds the only reference, so the encoder can free it
                h = encoder_forward(self.model.encoder, box, channels_last=self._channels_last())
            else:
                h = self.model.encoder(x)
            if self.model.quant_conv is not None:
                h = self.model.quant_conv(h)
        return h.float()

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """Latent tile -> 1-channel image in [0,1] (not yet clamped, so blending is linear)."""
        z = z.to(self._param_dtype())
        with self._precision():
            if self.model.post_quant_conv is not None:
                z = self.model.post_quant_conv(z)
            if self._lean:
                box = [z]
                del z
                y = decoder_forward(self.model.decoder, box, channels_last=self._channels_last())
            else:
                y = self.model.decoder(z)
        y = (y.float() + 1.0) / 2.0
        return y.mean(dim=1, keepdim=True) if y.shape[1] != 1 else y

    def _encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pad_to_multiple(check_image_batch(x, self.name).to(self.device), self.f)
        if self.tile_size is None:
            moments = self._moments(x)
        else:
            moments = blend_tiles(
                x, self._moments, tile=self.tile_size, overlap=self.tile_overlap, scale_num=1, scale_den=self.f
            )
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, logvar

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mean, _ = self._encode_moments(x)
        return mean.contiguous()

    @torch.inference_mode()
    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self._encode_moments(x)
        # Same clamp as ldm / diffusers DiagonalGaussianDistribution.
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return mean.contiguous(), std.contiguous()

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = check_latent_batch(z, self.name, self.latent_channels).to(self.device)
        if self.tile_size is None:
            y = self._decode_tile(z)
        else:
            y = blend_tiles(
                z,
                self._decode_tile,
                tile=self.tile_size // self.f,
                overlap=self.tile_overlap // self.f,
                scale_num=self.f,
                scale_den=1,
            )
        return y.clamp_(0.0, 1.0).contiguous()


class ResidualKLCodec(KLCodec):
    """The residual-s2d KL autoencoder (:mod:`latentds.codecs.residual`) as a codec:
    ``mean = s2d(x) + α·g(x)``, ``decode(z) = s2d⁻¹(z) + α·h(z)``. With α = 0, or with
    untrained zero-initialised last layers, it computes exactly ``s2d-f{f}c{C}``."""

    def __init__(self, name: str, model: AutoencoderKL, *, alpha: float = 1.0, **kwargs: Any) -> None:
        if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise CodecError(f"codec {name!r}: residual alpha must be a number in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        super().__init__(name, model, **kwargs)
        if self.in_channels != 1 or self.out_channels != 1:
            raise CodecError(f"codec {name!r}: residual-s2d models have 1 input and 1 output channel")
        if self.latent_channels not in s2d_channels(self.f):
            raise CodecError(
                f"codec {name!r}: residual-s2d needs C in {s2d_channels(self.f)} at f={self.f} "
                f"(a square whose root divides f), got C={self.latent_channels}"
            )

    arch_kind = "residual-s2d"

    @property
    def fingerprint(self) -> str:
        arch = {k: v for k, v in self.config.items() if k not in _OUTPUT_NEUTRAL_CONFIG}
        arch["latentds_arch_kind"] = self.arch_kind
        arch["residual_alpha"] = self.alpha
        arch["residual_base"] = f"s2d-f{self.f}c{self.latent_channels}"
        return compute_fingerprint(
            name=self.name, arch=arch, weights_sha256=self._weights_sha256, preprocessing=self.preprocessing
        )

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        base = s2d_encode(x.float(), self.f, self.latent_channels)
        g, logvar = torch.chunk(super()._moments(x), 2, dim=1)
        return torch.cat([base + self.alpha * g, logvar], dim=1)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        base = s2d_decode(z.float(), self.f, self.latent_channels)  # before the lean decoder sees z
        # super() gives (h_raw + 1) / 2; the correction is h_raw / 2 (exactly 0 for h_raw = 0).
        return base + self.alpha * (super()._decode_tile(z) - 0.5)


def make_kl_codec(name: str, model: AutoencoderKL, alpha: float | None, **kwargs: Any) -> KLCodec:
    """A plain KLCodec, or a ResidualKLCodec when the weights say residual-s2d (α not None)."""
    if alpha is None:
        return KLCodec(name, model, **kwargs)
    return ResidualKLCodec(name, model, alpha=alpha, **kwargs)
