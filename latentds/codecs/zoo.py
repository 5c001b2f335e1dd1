"""Build a registered KL codec from its catalogue entry: check the options, resolve the
weights (:func:`latentds.codecs.weights.resolve_weights`), load them into the right
architecture, and wrap the model in the runtime codec. :func:`register_kl_codecs` puts
one factory per catalogue entry in the registry; nothing is built until it is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from latentds.codecs.build import AutoencoderKL, build_model, clean_config, config_f, load_model, merge_arch
from latentds.codecs.build import to_diffusers_state_dict
from latentds.codecs.catalogue import SPECS, KLSpec
from latentds.codecs.checkpoints import read_diffusers_folder, read_weights_file
from latentds.codecs.codec_file import parse_codec_file
from latentds.codecs.kl import RUNTIME_KWARGS, KLCodec, make_kl_codec
from latentds.codecs.registry import register_codec
from latentds.codecs.weights import HUB_KWARGS, resolve_weights
from latentds.errors import CodecError

__all__ = ["create_kl_codec", "register_kl_codecs"]

_OPTIONS = frozenset({"weights", "seed", "arch", *HUB_KWARGS, *RUNTIME_KWARGS})


def _load_weights(
    spec: KLSpec, path: str, arch: Mapping[str, Any] | None
) -> tuple[AutoencoderKL, str, list[str], int, float | None]:
    """A local file or diffusers folder -> (model, source, ignored keys, LoRA merges, residual α or None)."""
    where = f"codec {spec.name!r}, weights {path!r}"
    p = Path(path)
    if p.is_dir():
        config, sd = read_diffusers_folder(p)
        if arch:
            config = merge_arch(config, arch)
        sd, ignored, n_lora = to_diffusers_state_dict(sd, config)
        return load_model(config, sd, where=where), str(p), ignored, n_lora, None
    sd, metadata = read_weights_file(p)
    export = parse_codec_file(sd, metadata, p)
    if export is not None:
        file_name, config, alpha = export
        if arch:
            raise CodecError(f"{where}: the file carries its own architecture ({file_name!r}); drop arch=")
        cfg = clean_config(config)
        f_file = config_f(cfg)
        if (f_file, cfg["latent_channels"]) != (spec.f, spec.latent_channels):
            raise CodecError(
                f"{where}: the file holds {file_name!r} with f={f_file}, C={cfg['latent_channels']}, but "
                f"{spec.name!r} needs f={spec.f}, C={spec.latent_channels}; use create_codec(path) instead "
                f"(command line: --codec {p} without --weights)"
            )
        return load_model(config, sd, where=where), str(p), [], 0, alpha
    config = merge_arch(spec.config, arch)
    try:
        sd, ignored, n_lora = to_diffusers_state_dict(sd, config)
    except CodecError as exc:
        raise CodecError(f"{where}: {exc}") from exc
    return load_model(config, sd, where=where), str(p), ignored, n_lora, None


def _check_spec(spec: KLSpec, model: AutoencoderKL, source: str) -> None:
    cfg = model.config
    f = config_f(cfg)
    if (f, cfg["latent_channels"]) != (spec.f, spec.latent_channels):
        raise CodecError(
            f"codec {spec.name!r}: weights/architecture from {source} give f={f}, C={cfg['latent_channels']} "
            f"but {spec.name!r} is f={spec.f}, C={spec.latent_channels}; use the matching codec name"
        )


def create_kl_codec(spec: KLSpec, **kwargs: Any) -> KLCodec:
    """``create_codec(spec.name, **kwargs)`` for a catalogue entry."""
    unknown = sorted(set(kwargs) - _OPTIONS)
    if unknown:
        raise CodecError(f"codec {spec.name!r}: unknown option(s) {unknown}; allowed: {sorted(_OPTIONS)}")
    weights = kwargs.pop("weights", None)
    seed = kwargs.pop("seed", None)
    arch = kwargs.pop("arch", None)
    hub = {k: kwargs.pop(k, None) for k in HUB_KWARGS}
    if arch is not None and not isinstance(arch, Mapping):
        raise CodecError(f"codec {spec.name!r}: arch must be a dict of AutoencoderKL config overrides")
    if seed is not None and weights != "random":
        raise CodecError(f"codec {spec.name!r}: seed= only applies with weights='random'")

    found = resolve_weights(spec.name, weights, hf_defaults=spec.hf_sources, hub=hub, hint=spec.notes)
    if found.path is None:  # weights="random"
        config = merge_arch(spec.config, arch)
        seed = 0 if seed is None else seed
        model = build_model(config, seed=seed, where=f"codec {spec.name!r}")
        _check_spec(spec, model, "arch=")
        return KLCodec(spec.name, model, source=f"random(seed={seed})", **kwargs)
    model, source, ignored, n_lora, alpha = _load_weights(spec, found.path, arch)
    _check_spec(spec, model, source)
    return make_kl_codec(spec.name, model, alpha, source=source, ignored_keys=ignored, lora_merged=n_lora, **kwargs)


def register_kl_codecs() -> None:
    """One registry entry per catalogue spec (a partial: cheap, builds nothing)."""
    for spec in SPECS.values():
        register_codec(spec.name, partial(create_kl_codec, spec))
