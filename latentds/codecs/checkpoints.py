"""Reading autoencoder weights safely and turning them into diffusers ``AutoencoderKL``
state dicts: ldm (CompVis / MedVAE) or diffusers key layouts and MedVAE LoRA merging.
Where a file comes from (packaged, a path, the local Hugging Face cache) is
:mod:`latentds.codecs.weights`' job.

Only safetensors and ``torch.load(weights_only=True)`` are used (docs/design.md invariant 7).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from latentds.errors import CodecError

__all__ = [
    "DIFFUSERS_WEIGHT_NAMES",
    "StateDict",
    "detect_layout",
    "fix_deprecated_attention_names",
    "ldm_to_diffusers",
    "merge_lora",
    "read_diffusers_folder",
    "read_weights_file",
    "split_autoencoder_keys",
    "strip_wrapper_prefix",
]

StateDict = dict[str, torch.Tensor]

_TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_AE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
#: Prefixes under which full latent-diffusion checkpoints keep their autoencoder.
_LDM_WRAPPER_PREFIXES = ("first_stage_model.", "vae.")

DIFFUSERS_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


# --------------------------------------------------------------------------- reading


def read_weights_file(path: str | os.PathLike[str]) -> tuple[StateDict, dict[str, str]]:
    """Read tensors (and safetensors metadata) from ``path``.

    ``.safetensors`` is read with safetensors; ``.ckpt/.pt/.pth/.bin`` with
    ``torch.load(map_location="cpu", weights_only=True)``, which refuses arbitrary
    pickled objects. A ``{"state_dict": ...}`` wrapper (ldm / MedVAE) is unwrapped.
    """
    p = Path(path)
    if not p.is_file():
        raise CodecError(f"weights file {str(p)!r} does not exist or is not a file; check the path")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as fh:
                metadata = dict(fh.metadata() or {})
                sd = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise CodecError(f"weights file {str(p)!r} is not a readable safetensors file: {exc}") from exc
        return sd, metadata
    if suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CodecError(
                f"weights file {str(p)!r} could not be loaded with torch.load(weights_only=True) "
                f"(latentds never unpickles arbitrary objects): {exc}. Re-save it as safetensors."
            ) from exc
        return _unwrap_state_dict(obj, p), {}
    raise CodecError(
        f"weights file {str(p)!r}: unsupported extension {suffix!r}; "
        f"use .safetensors or one of {', '.join(_TORCH_SUFFIXES)}"
    )


def _unwrap_state_dict(obj: Any, path: Path) -> StateDict:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CodecError(f"weights file {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CodecError(f"weights file {str(path)!r} holds no tensors (keys: {list(obj)[:8]})")
    return sd


# --------------------------------------------------------------------------- LoRA


def merge_lora(sd: StateDict, scale: float = 1.0) -> tuple[StateDict, int]:
    """Fold cloneofsimo-style LoRA wrappers back into plain weights.

    MedVAE's ``inject_trainable_lora_extended`` wraps a conv ``P`` as ``P.conv`` (the
    original, with bias), ``P.lora_down`` (same kernel/stride/padding, r outputs, no
    bias) and ``P.lora_up`` (1×1, r -> out, no bias); the forward is
    ``conv(x) + scale·up(down(x))``. Because ``up`` is 1×1, ``up∘down`` is one conv with
    kernel ``W_up[o,r]·W_down[r,i,kh,kw]``, so ``P.weight = conv.weight + scale·that`` is
    exact (dropout is inactive at inference). Linear LoRA (2-D weights) is ``up @ down``.
    Returns the merged dict and how many wrappers were merged.
    """
    prefixes = sorted(k[: -len(".lora_down.weight")] for k in sd if k.endswith(".lora_down.weight"))
    if not prefixes:
        return sd, 0
    out = dict(sd)
    for p in prefixes:
        try:
            base, down, up = (
                out.pop(f"{p}.conv.weight"),
                out.pop(f"{p}.lora_down.weight"),
                out.pop(f"{p}.lora_up.weight"),
            )
        except KeyError as exc:
            raise CodecError(
                f"LoRA wrapper {p!r} is incomplete: missing {exc.args[0]!r}; "
                "expected <name>.conv.weight, <name>.lora_down.weight and <name>.lora_up.weight"
            ) from None
        if base.ndim == 4:
            if up.shape[-2:] != (1, 1):
                raise CodecError(f"LoRA wrapper {p!r}: lora_up must be a 1×1 conv, got shape {tuple(up.shape)}")
            delta = torch.einsum("or,rihw->oihw", up[:, :, 0, 0].double(), down.double())
        elif base.ndim == 2:
            delta = up.double() @ down.double()
        else:
            raise CodecError(f"LoRA wrapper {p!r}: unsupported weight rank {base.ndim}")
        if delta.shape != base.shape:
            raise CodecError(
                f"LoRA wrapper {p!r}: up·down has shape {tuple(delta.shape)} but the wrapped weight has "
                f"{tuple(base.shape)}"
            )
        # float64 accumulation then one rounding, so the merge is as exact as fp32 allows.
        out[f"{p}.weight"] = (base.double() + scale * delta).to(base.dtype)
        if f"{p}.conv.bias" in out:
            out[f"{p}.bias"] = out.pop(f"{p}.conv.bias")
    return out, len(prefixes)


# --------------------------------------------------------------------------- layouts


def strip_wrapper_prefix(sd: StateDict) -> StateDict:
    """Keep only the autoencoder of a full latent-diffusion checkpoint (``first_stage_model.*``)."""
    for prefix in _LDM_WRAPPER_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def split_autoencoder_keys(sd: StateDict) -> tuple[StateDict, list[str]]:
    """Separate encoder/decoder/quant-conv tensors from everything else (losses,
    discriminator, MedVAE's stage-2 ``channel_ds``/``channel_proj`` head), which the
    codec does not use. Returns (autoencoder tensors, sorted ignored keys)."""
    keep = {k: v for k, v in sd.items() if k.startswith(_AE_PREFIXES)}
    ignored = sorted(k for k in sd if k not in keep)
    return keep, ignored


def detect_layout(sd: StateDict) -> str:
    """``"ldm"`` (``encoder.down.0.block.0...``) or ``"diffusers"`` (``encoder.down_blocks.0...``)."""
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd):
        return "diffusers"
    if any(k.startswith(("encoder.down.", "encoder.mid.")) for k in sd):
        return "ldm"
    raise CodecError(
        "state dict is neither ldm layout (encoder.down.0.block.0.conv1.weight, ...) nor diffusers layout "
        f"(encoder.down_blocks.0.resnets.0.conv1.weight, ...); first keys: {sorted(sd)[:6]}"
    )


_LEVEL_ATTN = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.attn\.(\d+)\.")


def ldm_to_diffusers(sd: StateDict, config: dict[str, Any]) -> StateDict:
    """Convert ldm autoencoder keys to diffusers ``AutoencoderKL`` keys.

    The bulk is diffusers' own ``convert_ldm_vae_checkpoint``. It only knows the
    mid-block attention, so attention *inside* resolution levels (CompVis kl-f16 has
    ``attn_resolutions: [16]``) is mapped here with diffusers' attention-key helper.
    """
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        update_vae_attentions_ldm_to_diffusers,
    )

    n_up = len(config["up_block_types"])
    level_attn: StateDict = {}
    groups: dict[tuple[str, int, int], list[str]] = {}
    rest: StateDict = {}
    for k, v in sd.items():
        m = _LEVEL_ATTN.match(k)
        if m:
            level_attn[k] = v
            groups.setdefault((m.group(1), int(m.group(2)), int(m.group(3))), []).append(k)
        else:
            rest[k] = v
    converted: StateDict = dict(convert_ldm_vae_checkpoint(rest, config))
    for (where, level, j), keys in sorted(groups.items()):
        if where == "encoder.down":
            new = f"encoder.down_blocks.{level}.attentions.{j}"
        else:  # ldm numbers decoder levels from the bottom, diffusers from the top
            new = f"decoder.up_blocks.{n_up - 1 - level}.attentions.{j}"
        update_vae_attentions_ldm_to_diffusers(
            keys, converted, level_attn, mapping={"old": f"{where}.{level}.attn.{j}", "new": new}
        )
    if len(converted) != len(sd):
        lost = len(sd) - len(converted)
        raise CodecError(
            f"ldm->diffusers conversion dropped {lost} tensor(s); the checkpoint has keys "
            "this converter does not know (not an AutoencoderKL?)"
        )
    return converted


_DEPRECATED_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def fix_deprecated_attention_names(sd: StateDict) -> StateDict:
    """Old diffusers VAE files (e.g. early ``sd-vae-ft-mse`` uploads) name the attention
    projections query/key/value/proj_attn; current diffusers calls them to_q/to_k/to_v/to_out.0."""
    out: StateDict = {}
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) >= 3 and "attentions" in parts and parts[-2] in _DEPRECATED_ATTN:
            parts[-2] = _DEPRECATED_ATTN[parts[-2]]
            k = ".".join(parts)
            if v.ndim == 4:  # 1×1 conv stored for a linear projection
                v = v[:, :, 0, 0]
        out[k] = v
    return out


def read_diffusers_folder(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], StateDict]:
    """Read ``config.json`` + ``diffusion_pytorch_model.safetensors`` (or ``.bin``)."""
    d = Path(folder)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise CodecError(f"diffusers folder {str(d)!r} has no config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CodecError(f"{str(cfg_path)!r} is not valid JSON: {exc}") from exc
    for name in DIFFUSERS_WEIGHT_NAMES:
        if (d / name).is_file():
            sd, _ = read_weights_file(d / name)
            return config, sd
    raise CodecError(f"diffusers folder {str(d)!r} has none of {', '.join(DIFFUSERS_WEIGHT_NAMES)}")
