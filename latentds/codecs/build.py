"""Building diffusers ``AutoencoderKL`` models for the KL codecs: the ldm-equivalent
configs, random-initialised and strictly loaded models, and the conversion of any
supported checkpoint layout to diffusers keys.

diffusers is imported on first use only: it takes seconds, and bicubic / s2d users never
need it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch

from latentds.canonical import canonical_json
from latentds.codecs.checkpoints import (
    StateDict,
    detect_layout,
    fix_deprecated_attention_names,
    ldm_to_diffusers,
    merge_lora,
    split_autoencoder_keys,
    strip_wrapper_prefix,
)
from latentds.errors import CodecError

__all__ = [
    "CH_MULT",
    "AutoencoderKL",
    "autoencoder_cls",
    "build_model",
    "clean_config",
    "config_f",
    "ldm_config",
    "load_model",
    "merge_arch",
    "to_diffusers_state_dict",
]

# diffusers.AutoencoderKL; spelled Any for type checkers, which cannot follow diffusers'
# dynamically built module attributes (encoder, decoder, config, ...).
AutoencoderKL = Any

#: ldm ``ch_mult`` per downsampling factor (ch=128): f4 = CompVis kl-f4, f8 = kl-f8 /
#: the Stable Diffusion VAE, f16 = kl-f16.
CH_MULT: dict[int, tuple[int, ...]] = {4: (1, 2, 4), 8: (1, 2, 4, 4), 16: (1, 1, 2, 2, 4)}


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


def config_f(config: Mapping[str, Any]) -> int:
    """Downsampling factor of an AutoencoderKL config: one halving per level but the last."""
    return int(2 ** (len(config["block_out_channels"]) - 1))


def autoencoder_cls() -> type[AutoencoderKL]:
    from diffusers import AutoencoderKL as cls

    return cls


def clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Drop diffusers' private keys (``_class_name``, ``_diffusers_version`` …) and make
    tuples lists, so configs compare and hash by content."""
    return json.loads(canonical_json({k: v for k, v in dict(config).items() if not k.startswith("_")}, strict=True))


def _validate_config(config: Mapping[str, Any], where: str) -> dict[str, Any]:
    cls = autoencoder_cls()
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    cfg = clean_config(config)
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise CodecError(f"{where}: unknown AutoencoderKL config key(s) {unknown}; allowed: {sorted(allowed)}")
    return cfg


def build_model(config: Mapping[str, Any], *, seed: int | None = None, where: str) -> AutoencoderKL:
    """Random-initialised model (deterministic from ``seed``, global RNG untouched)."""
    cls = autoencoder_cls()
    cfg = _validate_config(config, where)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        try:
            return cls(**cfg)
        except Exception as exc:
            raise CodecError(f"{where}: cannot build AutoencoderKL from config {cfg}: {exc}") from exc


def load_model(config: Mapping[str, Any], sd: StateDict, *, where: str) -> AutoencoderKL:
    """Model with exactly the tensors of ``sd`` (strict: no missing, no extra, same shapes)."""
    cls = autoencoder_cls()
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


def to_diffusers_state_dict(sd: StateDict, config: Mapping[str, Any]) -> tuple[StateDict, list[str], int]:
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


def merge_arch(config: Mapping[str, Any], arch: Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply ``arch=`` overrides. A ``block_out_channels`` of another length without
    explicit block types gets plain (attention-free) down/up blocks of that length."""
    merged = {**config, **(arch or {})}
    n = len(merged["block_out_channels"])
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if arch and key not in arch and len(merged[key]) != n:
            merged[key] = [kind] * n
    return merged
