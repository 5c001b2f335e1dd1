"""KL autoencoder codecs (latent-diffusion ``AutoencoderKL`` via diffusers).

Three families share one implementation, :class:`KLCodec`:

* ``kl-f{f}c{C}``   the paper's domain-specific autoencoders (1 input channel);
* ``sd-vae-*``      the natural-image latent-diffusion autoencoders (3 input channels);
* ``medvae-*``      the published MedVAE checkpoints (1 or 3 input channels).

They differ only in default architecture and in where default weights are looked up
(:class:`KLSpec`). Codec-side preprocessing is fixed by the model's ``in_channels``:
[0,1] -> [-1,1]; 3-channel models get the gray channel repeated on encode and the
three output channels averaged on decode.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from latentds.codecs.base import (
    CODEC_FORMAT_VERSION,
    Codec,
    canonical_json,
    check_image_batch,
    check_latent_batch,
    compute_fingerprint,
    pad_to_multiple,
    state_dict_sha256,
)
from latentds.codecs.checkpoints import (
    HFSource,
    StateDict,
    detect_layout,
    find_in_hf_cache,
    fix_deprecated_attention_names,
    hf_cache_dir,
    ldm_to_diffusers,
    merge_lora,
    read_diffusers_folder,
    read_weights_file,
    split_autoencoder_keys,
    strip_wrapper_prefix,
)
from latentds.codecs.lean import decoder_forward, encoder_forward, supports_lean
from latentds.codecs.tiling import blend_tiles
from latentds.errors import CodecError

# diffusers.AutoencoderKL; spelled Any for type checkers, which cannot follow diffusers'
# dynamically built module attributes (encoder, decoder, config, ...).
AutoencoderKL = Any

#: ldm ``ch_mult`` per downsampling factor (ch=128): f4 = CompVis kl-f4, f8 = kl-f8 /
#: the Stable Diffusion VAE, f16 = kl-f16.
CH_MULT: dict[int, tuple[int, ...]] = {4: (1, 2, 4), 8: (1, 2, 4, 4), 16: (1, 1, 2, 2, 4)}
KL_GRID = [(f, c) for f in (4, 8, 16) for c in (1, 4, 16)]

PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
_PRECISIONS = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
_OUTPUT_NEUTRAL_CONFIG = frozenset(
    {"sample_size", "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast"}
)
_METADATA_NAME_KEY = "latentds_codec"
_METADATA_CONFIG_KEY = "config"


def ldm_config(
    f: int, latent_channels: int, in_channels: int, *, ch: int = 128, attn_levels: tuple[int, ...] = ()
) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config equivalent to an ldm ``ddconfig``.

    ``attn_levels`` lists the resolution levels (0 = full resolution) that carry
    self-attention after every ResNet block (ldm ``attn_resolutions``); the mid-block
    attention is always present, as in ldm.
    """
    if f not in CH_MULT:
        raise CodecError(f"KL codec: f must be one of {sorted(CH_MULT)}, got {f}")
    n = len(CH_MULT[f])
    return {
        "in_channels": in_channels,
        "out_channels": in_channels,
        "down_block_types": ["AttnDownEncoderBlock2D" if i in attn_levels else "DownEncoderBlock2D" for i in range(n)],
        # diffusers lists decoder blocks from the bottom (lowest resolution) up.
        "up_block_types": [
            "AttnUpDecoderBlock2D" if (n - 1 - i) in attn_levels else "UpDecoderBlock2D" for i in range(n)
        ],
        "block_out_channels": [ch * m for m in CH_MULT[f]],
        "layers_per_block": 2,
        "latent_channels": latent_channels,
        "norm_num_groups": 32,
        "act_fn": "silu",
    }


@dataclass(frozen=True)
class KLSpec:
    """Everything that distinguishes one registered KL codec from another."""

    name: str
    f: int
    latent_channels: int
    config: dict[str, Any]
    hf_sources: tuple[HFSource, ...] = ()
    notes: str = ""


# --------------------------------------------------------------------------- model building


def _autoencoder_cls() -> type[AutoencoderKL]:
    # diffusers is imported lazily: it takes seconds, and bicubic users never need it.
    from diffusers import AutoencoderKL

    return AutoencoderKL


def _clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Drop diffusers' private keys (``_class_name``, ``_diffusers_version`` …) and make
    tuples lists, so configs compare and hash by content."""
    return json.loads(canonical_json({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def _validate_config(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    cls = _autoencoder_cls()
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    cfg = _clean_config(config)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise CodecError(f"{where}: unknown AutoencoderKL config key(s) {unknown}; allowed: {sorted(allowed)}")
    return cfg


def build_model(config: Mapping[str, Any], *, seed: int | None = None, where: str) -> AutoencoderKL:
    """Random-initialised model (deterministic from ``seed``, global RNG untouched)."""
    cls = _autoencoder_cls()
    cfg = _validate_config(config, where)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        try:
            return cls(**cfg)
        except Exception as exc:
            raise CodecError(f"{where}: cannot build AutoencoderKL from config {cfg}: {exc}") from exc


def load_model(config: Mapping[str, Any], sd: StateDict, *, where: str) -> AutoencoderKL:
    """Model with exactly the tensors of ``sd`` (strict: no missing, no extra, same shapes)."""
    cls = _autoencoder_cls()
    cfg = _validate_config(config, where)
    # Build on the meta device: random init of an 84M-parameter model would be wasted work.
    with torch.device("meta"):
        try:
            model = cls(**cfg)
        except Exception as exc:
            raise CodecError(f"{where}: cannot build AutoencoderKL from config {cfg}: {exc}") from exc
    sd32 = {k: v.to(torch.float32).contiguous() for k, v in sd.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd32))
    unexpected = sorted(set(sd32) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd32) if tuple(expected[k].shape) != tuple(sd32[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} with other shapes (e.g. {k}: checkpoint {tuple(sd32[k].shape)} vs "
                f"architecture {tuple(expected[k].shape)})"
            )
        raise CodecError(
            f"{where}: weights do not match the architecture "
            f"(block_out_channels={cfg.get('block_out_channels')}, latent_channels={cfg.get('latent_channels')}, "
            f"in_channels={cfg.get('in_channels')}): {'; '.join(details)}. "
            "Pass arch={...} with the checkpoint's AutoencoderKL config, or use the matching codec name."
        )
    model.load_state_dict(sd32, strict=True, assign=True)
    return model


def _to_diffusers_state_dict(sd: StateDict, config: Mapping[str, Any]) -> tuple[StateDict, list[str], int]:
    """Any supported layout -> diffusers keys. Returns (state dict, ignored keys, LoRA merges)."""
    sd = strip_wrapper_prefix(sd)
    sd, n_lora = merge_lora(sd)
    sd, ignored = split_autoencoder_keys(sd)
    if not sd:
        raise CodecError(f"no encoder/decoder tensors found (keys: {ignored[:6]})")
    if detect_layout(sd) == "ldm":
        sd = ldm_to_diffusers(sd, dict(config))
    else:
        sd = fix_deprecated_attention_names(sd)
    return sd, ignored, n_lora


# --------------------------------------------------------------------------- the codec


class KLCodec(Codec):
    """A diffusers ``AutoencoderKL`` as a deterministic latentds codec.

    ``encode`` returns the posterior mean (diffusers ``latent_dist.mode()``), computed as
    ``encoder -> quant_conv -> first half of the moments``; no scaling factor is applied
    (latents are the raw posterior mean; scaling/standardising is the consumer's job).
    """

    #: "plain" (the paper's / ldm's AutoencoderKL) or "residual-s2d" (ResidualKLCodec).
    arch_kind = "plain"

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
        source: str = "",
        ignored_keys: list[str] | None = None,
        lora_merged: int = 0,
    ) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        model_: Any = model
        cfg = _clean_config(model_.config)
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
            "memory_format": "channels_last" if self._lean else "contiguous",
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
                h = encoder_forward(self.model.encoder, box)
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
                y = decoder_forward(self.model.decoder, box)
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
        from latentds.codecs.s2d import s2d_channels

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
        from latentds.codecs.s2d import s2d_encode

        base = s2d_encode(x.float(), self.f, self.latent_channels)
        g, logvar = torch.chunk(super()._moments(x), 2, dim=1)
        return torch.cat([base + self.alpha * g, logvar], dim=1)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        from latentds.codecs.s2d import s2d_decode

        base = s2d_decode(z.float(), self.f, self.latent_channels)  # before the lean decoder sees z
        # super() gives (h_raw + 1) / 2; the correction is h_raw / 2 (exactly 0 for h_raw = 0).
        return base + self.alpha * (super()._decode_tile(z) - 0.5)


# --------------------------------------------------------------------------- export format


def shipped_kl_defaults() -> list[str]:
    """Names of the KL codecs whose small default weights ship inside the package."""
    return sorted(p.name[: -len(".safetensors")] for p in PACKAGED_WEIGHTS_DIR.glob("kl-*.safetensors"))


def save_kl_codec(
    codec_or_model: KLCodec | AutoencoderKL | Any,
    path: str | os.PathLike[str],
    *,
    name: str,
    arch_kind: str | None = None,
    alpha: float | None = None,
    tensor_dtype: str = "fp32",
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write weights + architecture as one safetensors file that ``create_codec(path)``
    (and ``create_codec(<kl name>, weights=path)``) can load.

    Metadata: ``{"latentds_codec": name, "config": <AutoencoderKL config JSON>,
    "latentds_codec_format": "<version>"}``, plus for the residual architecture
    ``{"latentds_arch_kind": "residual-s2d", "latentds_residual_alpha": "<α>"}`` (a file
    without ``latentds_arch_kind`` is the plain architecture). ``arch_kind`` / ``alpha``
    default to what a ResidualKLCodec / ResidualS2DAutoencoder carries. Tensors are
    stored as float32, or float16 with ``tensor_dtype="fp16"`` (half the size; loaders
    upcast to float32, and the weights hash is taken after that). The file is written to
    a temporary name and renamed, so a reader never sees half a file.
    """
    from safetensors.torch import save_file

    from latentds.codecs.residual import ARCH_KINDS, RESIDUAL_S2D, ResidualS2DAutoencoder, residual_metadata

    cls = _autoencoder_cls()
    if isinstance(codec_or_model, ResidualKLCodec):
        arch_kind = arch_kind or RESIDUAL_S2D
        alpha = codec_or_model.alpha if alpha is None else alpha
        model = codec_or_model.model
    elif isinstance(codec_or_model, ResidualS2DAutoencoder):
        arch_kind = arch_kind or RESIDUAL_S2D
        alpha = codec_or_model.alpha if alpha is None else alpha
        model = codec_or_model
    else:
        model = codec_or_model.model if isinstance(codec_or_model, KLCodec) else codec_or_model
        if not isinstance(model, cls):
            raise CodecError(
                "save_kl_codec expects a KLCodec, a diffusers AutoencoderKL or a ResidualS2DAutoencoder, got "
                f"{type(codec_or_model).__name__}"
            )
    arch_kind = arch_kind or "plain"
    if arch_kind not in ARCH_KINDS:
        raise CodecError(f"save_kl_codec: arch_kind must be one of {ARCH_KINDS}, got {arch_kind!r}")
    if tensor_dtype not in ("fp32", "fp16"):
        raise CodecError(f"save_kl_codec: tensor_dtype must be 'fp32' or 'fp16', got {tensor_dtype!r}")
    if not isinstance(name, str) or not name.strip():
        raise CodecError(f"save_kl_codec: name must be a non-empty string, got {name!r}")
    out = Path(path)
    if out.suffix != ".safetensors":
        raise CodecError(f"save_kl_codec: {str(out)!r} must end in .safetensors (create_codec recognises it by that)")
    config = _clean_config(model.config)
    m = re.fullmatch(r"kl-f(\d+)c(\d+)", name)
    if m:
        f_cfg = 2 ** (len(config["block_out_channels"]) - 1)
        if (int(m.group(1)), int(m.group(2))) != (f_cfg, config["latent_channels"]):
            raise CodecError(
                f"save_kl_codec: name {name!r} says f={m.group(1)}, C={m.group(2)} but the model has "
                f"f={f_cfg}, C={config['latent_channels']}; use a matching name"
            )
    store = torch.float16 if tensor_dtype == "fp16" else torch.float32
    tensors = {k: v.detach().to("cpu", store).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        **(extra_metadata or {}),
        _METADATA_NAME_KEY: name,
        _METADATA_CONFIG_KEY: canonical_json(config),
        "latentds_codec_format": str(CODEC_FORMAT_VERSION),
    }
    if arch_kind == RESIDUAL_S2D:
        alpha = 1.0 if alpha is None else alpha
        if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise CodecError(f"save_kl_codec: residual alpha must be a number in [0, 1], got {alpha!r}")
        metadata.update(residual_metadata(float(alpha)))
    elif alpha is not None:
        raise CodecError("save_kl_codec: alpha= applies to arch_kind='residual-s2d' only")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _parse_export(
    sd: StateDict, metadata: Mapping[str, str], path: str | os.PathLike[str]
) -> tuple[str, dict[str, Any], float | None] | None:
    """(name, config, residual α or None for the plain architecture) if the file was
    written by save_kl_codec, else None."""
    if _METADATA_NAME_KEY not in metadata:
        return None
    try:
        config = json.loads(metadata[_METADATA_CONFIG_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CodecError(
            f"{str(path)!r}: latentds codec file has no valid 'config' metadata ({exc}); re-export it"
        ) from exc
    kind = metadata.get("latentds_arch_kind", "plain")
    if kind == "plain":
        return metadata[_METADATA_NAME_KEY], config, None
    if kind != "residual-s2d":
        raise CodecError(
            f"{str(path)!r}: unknown architecture kind {kind!r} (this latentds knows plain and residual-s2d); "
            "upgrade latentds or re-export the file"
        )
    try:
        alpha = float(metadata["latentds_residual_alpha"])
    except (KeyError, ValueError) as exc:
        raise CodecError(f"{str(path)!r}: residual-s2d codec file without a valid 'latentds_residual_alpha' ({exc})") from exc
    if not 0.0 <= alpha <= 1.0:
        raise CodecError(f"{str(path)!r}: residual alpha {alpha} is outside [0, 1]; re-export the file")
    return metadata[_METADATA_NAME_KEY], config, alpha


def _make_codec(name: str, model: AutoencoderKL, alpha: float | None, **kwargs: Any) -> KLCodec:
    """A plain KLCodec, or a ResidualKLCodec when the weights file says residual-s2d."""
    if alpha is None:
        return KLCodec(name, model, **kwargs)
    return ResidualKLCodec(name, model, alpha=alpha, **kwargs)


_RUNTIME_KWARGS = ("device", "dtype", "autocast", "tile_size", "tile_overlap")


def load_exported_kl_codec(path: str, **kwargs: Any) -> KLCodec:
    """``create_codec(path)``: a save_kl_codec file, named by its metadata."""
    unknown = sorted(set(kwargs) - set(_RUNTIME_KWARGS))
    if unknown:
        raise CodecError(f"create_codec({path!r}): unknown option(s) {unknown}; allowed: {list(_RUNTIME_KWARGS)}")
    if not Path(path).is_file():
        raise CodecError(f"create_codec({path!r}): no such file, and not a registered codec name")
    sd, metadata = read_weights_file(path)
    export = _parse_export(sd, metadata, path)
    if export is None:
        raise CodecError(
            f"{path!r} is not a latentds codec file (no '{_METADATA_NAME_KEY}' metadata). Write it with "
            "save_kl_codec, or load a raw checkpoint with create_codec('<codec name>', weights=path)"
        )
    name, config, alpha = export
    model = load_model(config, sd, where=f"codec file {path!r}")
    return _make_codec(name, model, alpha, source=str(path), **kwargs)


# --------------------------------------------------------------------------- factories


def _weights_from_path(
    spec: KLSpec, path: str, arch: Mapping[str, Any] | None
) -> tuple[AutoencoderKL, str, list[str], int, float | None]:
    """(model, source, ignored keys, LoRA merges, residual α or None)."""
    where = f"codec {spec.name!r}, weights {path!r}"
    p = Path(path)
    if p.is_dir():
        config, sd = read_diffusers_folder(p)
        if arch:
            config = _merge_arch(config, arch)
        sd, ignored, n_lora = _to_diffusers_state_dict(sd, config)
        return load_model(config, sd, where=where), str(p), ignored, n_lora, None
    sd, metadata = read_weights_file(p)
    export = _parse_export(sd, metadata, p)
    if export is not None:
        file_name, config, alpha = export
        if arch:
            raise CodecError(f"{where}: the file carries its own architecture ({file_name!r}); drop arch=")
        cfg = _clean_config(config)
        f_file = 2 ** (len(cfg["block_out_channels"]) - 1)
        if (f_file, cfg["latent_channels"]) != (spec.f, spec.latent_channels):
            raise CodecError(
                f"{where}: the file holds {file_name!r} with f={f_file}, C={cfg['latent_channels']}, but "
                f"{spec.name!r} needs f={spec.f}, C={spec.latent_channels}; use create_codec(path) instead"
            )
        return load_model(config, sd, where=where), str(p), [], 0, alpha
    config = _merge_arch(spec.config, arch)
    try:
        sd, ignored, n_lora = _to_diffusers_state_dict(sd, config)
    except CodecError as exc:
        raise CodecError(f"{where}: {exc}") from exc
    return load_model(config, sd, where=where), str(p), ignored, n_lora, None


def _hf_sources(spec: KLSpec, repo_id: str | None, filename: str | None, subfolder: str | None) -> list[HFSource]:
    if repo_id is None and filename is None and subfolder is None:
        return list(spec.hf_sources)
    if filename is not None:
        repo = repo_id or (spec.hf_sources[0].repo_id if spec.hf_sources else None)
        if repo is None:
            raise CodecError(f"codec {spec.name!r}: filename= needs repo_id= (no default repository is known)")
        return [HFSource(repo, filename, "file")]
    if repo_id is None:
        raise CodecError(f"codec {spec.name!r}: subfolder= needs repo_id=")
    # A repo id alone: the codec's default file in that repo if it has one, else a diffusers layout.
    defaults = [s for s in spec.hf_sources if s.layout == "file"]
    if subfolder is None and defaults:
        return [HFSource(repo_id, s.filename, "file") for s in defaults]
    return [HFSource(repo_id, subfolder or "", "diffusers")]


def _merge_arch(config: Mapping[str, Any], arch: Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply ``arch=`` overrides. A ``block_out_channels`` of another length without
    explicit block types gets plain (attention-free) down/up blocks of that length."""
    merged = {**config, **(arch or {})}
    n = len(merged["block_out_channels"])
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if arch and key not in arch and len(merged[key]) != n:
            merged[key] = [kind] * n
    return merged


def _check_spec(spec: KLSpec, model: AutoencoderKL, source: str) -> None:
    cfg = model.config
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    if (f, cfg["latent_channels"]) != (spec.f, spec.latent_channels):
        raise CodecError(
            f"codec {spec.name!r}: weights/architecture from {source} give f={f}, C={cfg['latent_channels']} "
            f"but {spec.name!r} is f={spec.f}, C={spec.latent_channels}; use the matching codec name"
        )


def _kl_factory(spec: KLSpec, **kwargs: Any) -> KLCodec:
    allowed = {"weights", "seed", "arch", "repo_id", "filename", "subfolder", "revision", "cache_dir", *_RUNTIME_KWARGS}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise CodecError(f"codec {spec.name!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    weights = kwargs.pop("weights", None)
    seed = kwargs.pop("seed", None)
    arch = kwargs.pop("arch", None)
    hub = {k: kwargs.pop(k, None) for k in ("repo_id", "filename", "subfolder", "revision", "cache_dir")}
    if arch is not None and not isinstance(arch, Mapping):
        raise CodecError(f"codec {spec.name!r}: arch must be a dict of AutoencoderKL config overrides")
    if seed is not None and weights != "random":
        raise CodecError(f"codec {spec.name!r}: seed= only applies with weights='random'")

    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if weights == "random":
        config = _merge_arch(spec.config, arch)
        seed = 0 if seed is None else seed
        model = build_model(config, seed=seed, where=f"codec {spec.name!r}")
        _check_spec(spec, model, "arch=")
        return KLCodec(spec.name, model, source=f"random(seed={seed})", **kwargs)
    if isinstance(weights, str):
        model, source, ignored, n_lora, alpha = _weights_from_path(spec, weights, arch)
        _check_spec(spec, model, source)
        return _make_codec(spec.name, model, alpha, source=source, ignored_keys=ignored, lora_merged=n_lora, **kwargs)
    if weights is not None:
        raise CodecError(f"codec {spec.name!r}: weights must be a path, 'random' or None, got {type(weights).__name__}")

    # No weights given: packaged defaults, then the local Hugging Face cache. Never the network.
    looked: list[str] = []
    packaged = PACKAGED_WEIGHTS_DIR / f"{spec.name}.safetensors"
    looked.append(str(packaged))
    if packaged.is_file() and not any(hub.values()):
        model, source, ignored, n_lora, alpha = _weights_from_path(spec, str(packaged), arch)
        _check_spec(spec, model, source)
        return _make_codec(spec.name, model, alpha, source=source, ignored_keys=ignored, lora_merged=n_lora, **kwargs)
    sources = _hf_sources(spec, hub["repo_id"], hub["filename"], hub["subfolder"])
    cache_dir = hub["cache_dir"] or hf_cache_dir()
    found, hf_looked = find_in_hf_cache(sources, cache_dir=cache_dir, revision=hub["revision"])
    looked += hf_looked
    if found is not None:
        _, local = found
        model, source, ignored, n_lora, alpha = _weights_from_path(spec, local, arch)
        _check_spec(spec, model, source)
        return _make_codec(spec.name, model, alpha, source=source, ignored_keys=ignored, lora_merged=n_lora, **kwargs)
    hint = spec.notes or (
        f"no default weights are shipped for {spec.name} (shipped: {', '.join(shipped_kl_defaults()) or 'none'}; "
        "train one with `latentds train-vae`); pass weights=PATH "
        "(a file from save_kl_codec or a trained checkpoint), or weights='random' for an untrained model"
    )
    raise CodecError(
        f"codec {spec.name!r}: no weights found. Looked at: " + "; ".join(looked) + f". {hint}. "
        "latentds never downloads weights."
    )


# --------------------------------------------------------------------------- the registered specs

_SD_F8_SOURCES = (
    HFSource("stabilityai/sd-vae-ft-mse", "", "diffusers"),
    HFSource("stabilityai/sd-vae-ft-ema", "", "diffusers"),
    HFSource("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.safetensors"),
    HFSource("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.ckpt"),
    HFSource("stabilityai/sd-vae-ft-ema-original", "vae-ft-ema-560000-ema-pruned.safetensors"),
    HFSource("stabilityai/sd-vae-ft-ema-original", "vae-ft-ema-560000-ema-pruned.ckpt"),
    HFSource("CompVis/stable-diffusion-v1-4", "vae", "diffusers"),
)
_COMPVIS_NOTE = (
    "CompVis publishes kl-{} only as a zip (https://ommer-lab.com/files/latent-diffusion/kl-{}.zip, "
    "model.ckpt inside) and there is no official Hugging Face repo; pass weights=PATH to that model.ckpt, "
    "or repo_id=/filename= of a mirror you have in your cache"
)
MEDVAE_REPO = "stanfordmimi/MedVAE"


def _specs() -> list[KLSpec]:
    specs = [KLSpec(f"kl-f{f}c{c}", f, c, ldm_config(f, c, 1)) for f, c in KL_GRID]
    specs += [
        KLSpec("sd-vae-f4c3", 4, 3, ldm_config(4, 3, 3), notes=_COMPVIS_NOTE.format("f4", "f4")),
        KLSpec(
            "sd-vae-f8c4",
            8,
            4,
            ldm_config(8, 4, 3),
            hf_sources=_SD_F8_SOURCES,
            notes="download it once with `huggingface-cli download stabilityai/sd-vae-ft-mse` or pass weights=PATH "
            "(an ldm .ckpt/.safetensors or a diffusers folder)",
        ),
        # CompVis kl-f16 has attn_resolutions [16] at resolution 256: self-attention in the
        # deepest level (index 4), unlike kl-f4 / kl-f8.
        KLSpec(
            "sd-vae-f16c16", 16, 16, ldm_config(16, 16, 3, attn_levels=(4,)), notes=_COMPVIS_NOTE.format("f16", "f16")
        ),
    ]
    medvae = {
        "medvae-f4c1": (4, 1, 1, "vae_4x_1c_2D.ckpt"),
        "medvae-f8c1": (8, 1, 1, "vae_8x_1c_2D.ckpt"),
        "medvae-f4c3": (4, 3, 3, "vae_4x_3c_2D.ckpt"),
        "medvae-f8c4": (8, 4, 3, "vae_8x_4c_2D.ckpt"),
    }
    for name, (f, c, cin, fname) in medvae.items():
        specs.append(
            KLSpec(
                name,
                f,
                c,
                ldm_config(f, c, cin),
                hf_sources=(HFSource(MEDVAE_REPO, f"model_weights/{fname}"),),
                notes=f"download it once with `huggingface-cli download {MEDVAE_REPO} model_weights/{fname}` "
                "or pass weights=PATH",
            )
        )
    return specs


SPECS: dict[str, KLSpec] = {s.name: s for s in _specs()}


def register_kl_codecs() -> None:
    from latentds.codecs.registry import register_codec

    for spec in SPECS.values():
        register_codec(spec.name, partial(_kl_factory, spec))
