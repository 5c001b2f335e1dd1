"""The codec file: one safetensors file holding a KL codec's weights and architecture
(written by :func:`save_kl_codec`, read by ``create_codec(path)`` and by
``create_codec("<kl name>", weights=path)``), and the path rule by which ``create_codec``
tells a file from a registered name.

Metadata: ``{"latentds_codec": name, "config": <AutoencoderKL config JSON>,
"latentds_codec_format": "<version>"}``, plus for the residual architecture
``{"latentds_arch_kind": "residual-s2d", "latentds_residual_alpha": "<α>"}``; a file
without ``latentds_arch_kind`` is the plain architecture.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latentds.canonical import canonical_json
from latentds.codecs.base import CODEC_FORMAT_VERSION
from latentds.codecs.build import AutoencoderKL, autoencoder_cls, clean_config, config_f, load_model
from latentds.codecs.checkpoints import StateDict, read_weights_file
from latentds.codecs.kl import RUNTIME_KWARGS, KLCodec, ResidualKLCodec, make_kl_codec
from latentds.codecs.residual import ARCH_KINDS, RESIDUAL_S2D, ResidualS2DAutoencoder, residual_metadata
from latentds.errors import CodecError

__all__ = ["load_exported_kl_codec", "looks_like_codec_path", "parse_codec_file", "save_kl_codec"]

_METADATA_NAME_KEY = "latentds_codec"
_METADATA_CONFIG_KEY = "config"


def looks_like_codec_path(name_or_path: str) -> bool:
    """The path rule of ``create_codec``: a ``.safetensors`` name, anything with a path
    separator, or an existing file is a codec file; everything else is a registry name."""
    return (
        name_or_path.endswith(".safetensors")
        or os.sep in name_or_path
        or "/" in name_or_path
        or Path(name_or_path).is_file()
    )


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

    cls = autoencoder_cls()
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
    config = clean_config(model.config)
    m = re.fullmatch(r"kl-f(\d+)c(\d+)", name)
    if m:
        f_cfg = config_f(config)
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
        _METADATA_CONFIG_KEY: canonical_json(config, strict=True),
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


def parse_codec_file(
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


def load_exported_kl_codec(path: str, **kwargs: Any) -> KLCodec:
    """``create_codec(path)``: a save_kl_codec file, named by its metadata."""
    unknown = sorted(set(kwargs) - set(RUNTIME_KWARGS))
    if unknown:
        raise CodecError(f"create_codec({path!r}): unknown option(s) {unknown}; allowed: {list(RUNTIME_KWARGS)}")
    if not Path(path).is_file():
        raise CodecError(f"create_codec({path!r}): no such file, and not a registered codec name")
    sd, metadata = read_weights_file(path)
    export = parse_codec_file(sd, metadata, path)
    if export is None:
        raise CodecError(
            f"{path!r} is not a latentds codec file (no '{_METADATA_NAME_KEY}' metadata). Write it with "
            "save_kl_codec, or load a raw checkpoint with create_codec('<codec name>', weights=path)"
        )
    name, config, alpha = export
    model = load_model(config, sd, where=f"codec file {path!r}")
    return make_kl_codec(name, model, alpha, source=str(path), **kwargs)

