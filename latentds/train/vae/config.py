"""Trainer configuration: nested dicts, YAML files and dotted command-line overrides.

``load_config(paths, overrides)`` starts from :data:`DEFAULTS`, merges each YAML file in
order, then applies ``key.sub=value`` overrides (values parsed as YAML, so ``1e-4``,
``true``, ``[1,2]`` and ``null`` work). Unknown keys are errors: a typo never silently
trains the wrong model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "DEFAULTS", "dump_config", "load_config", "parse_override", "validate"]

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {
        "f": 8,                    # downsampling factor per side: 4, 8 or 16
        "arch_kind": "plain",      # plain (paper / ldm AutoencoderKL) | residual-s2d (s2d baseline + learned correction)
        "latent_channels": 4,      # C
        "base_channels": 128,      # ldm ``ch``; channels per level = base_channels * ch_mult
        "ch_mult": None,           # default: latentds.codecs.build.CH_MULT[f] (ldm kl-f4/f8/f16)
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "attn_levels": [],         # levels with self-attention (ldm attn_resolutions); mid-block attn always on
        "logvar_init": None,       # e.g. -10: start the posterior near-deterministic (see module.init_logvar)
        "arch": {},                # raw diffusers AutoencoderKL config overrides (applied last)
    },
    "init": {                      # fine-tune from published / previous weights
        "codec": None,             # e.g. "medvae-f8c4", "sd-vae-f8c4", "kl-f8c4" or a save_kl_codec file
        "weights": None,           # path; None = packaged default / local Hugging Face cache (never downloaded)
        "arch": None,              # AutoencoderKL config overrides for a raw checkpoint
    },
    "loss": {
        "l1_weight": 1.0,
        "hf_l1_weight": 0.0,       # extra L1 between high-pass images x - G_sigma*x (detail bicubic removes)
        "hf_sigma": 1.0,           # Gaussian sigma (px) of that high-pass
        "kl_weight": 1.0e-6,
        "disc_weight": 0.5,
        "disc_start": 50001,       # generator step at which the adversarial terms switch on
        "disc_factor": 1.0,
        "adaptive_weight": True,   # ||grad nll|| / ||grad g|| at decoder.conv_out.weight (ldm)
        "adaptive_max": 1.0e4,
    },
    "perceptual": {
        "kind": "auto",            # auto | lpips | ms-ssim | none
        "weight": 1.0,
        "weights_path": None,      # LPIPS linear heads (``vgg.pth`` of the lpips / taming packages)
        "vgg_path": None,          # torchvision vgg16 ImageNet weights; default: torch hub cache if present
        "ms_ssim_kernel": 11,
    },
    "disc": {
        "ndf": 64,
        "n_layers": 3,
        "norm": "batch",           # batch (pix2pix / ldm) | none
    },
    "optim": {
        "lr": 4.5e-6,              # per-sample base rate, as in ldm: lr = base * batch * accumulate * world
        "scale_lr": True,
        "betas": [0.5, 0.9],
        "disc_lr": None,           # default: same as lr
        "grad_clip": None,
        "schedule": "constant",    # constant (ldm) | cosine: generator lr decays to min_lr_ratio*lr at trainer.steps
        "warmup_steps": 0,         # linear warm-up of the generator lr
        "min_lr_ratio": 0.0,
    },
    "data": {
        "train": {"source": "synthetic"},
        "val": None,               # None: split from train (val_fraction); or a source like train
        "val_fraction": 0.1,
        "preprocess": {"crop_roi": True, "size": None},
        "crop": 256,
        "crop_mode": "mixed",      # random | resized | mixed
        "resized_prob": 0.5,
        "resized_scale": [0.25, 1.0],
        "resized_ratio": [0.75, 1.3333333],
        "hflip": True,
        # random 1-x, x**gamma, and a random window clip((x-lo)/width) that saturates both ends
        "intensity_aug": {"invert_prob": 0.0, "gamma": [1.0, 1.0], "window_prob": 0.0, "window_width": [0.5, 1.0]},
        "val_crop": None,          # default: crop
        "val_max": 16,             # validation images (centre crops)
        "cache": True,             # keep preprocessed images in RAM
        "batch_size": 4,
        "num_workers": 0,
    },
    "trainer": {
        "steps": 15000,            # generator (optimizer) steps
        "max_time": None,          # wall-clock limit in seconds (stops early; the run ends at a clean step)
        "progress": False,         # progress bar
        "accumulate": 1,           # micro-batches per step
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",        # auto | ddp | ddp_spawn ...
        "precision": "32-true",    # 32-true | bf16-mixed
        "val_every": 500,          # steps between validations (and best-checkpoint checks)
        "ckpt_every": 500,         # steps between 'last' checkpoints
        "log_every": 10,
        "out_dir": "runs/vae",
        "name": None,              # run name; default kl-f{f}c{C}
        "resume": None,            # checkpoint path, or "last" for <run>/checkpoints/last.ckpt
        "tensorboard": "auto",     # auto | true | false (auto: if tensorboard is installed)
        "export": True,            # write codec-best / codec-last .safetensors at the end
        "deterministic": False,
    },
}


class ConfigError(ValueError):
    pass


def _merge(base: dict[str, Any], new: Mapping[str, Any], where: str, *, strict: bool = True) -> dict[str, Any]:
    for k, v in new.items():
        if strict and k not in base:
            raise ConfigError(f"{where}: unknown key {k!r}; known: {sorted(base)}")
        if isinstance(base.get(k), dict) and isinstance(v, Mapping) and k not in _FREE:
            _merge(base[k], v, f"{where}.{k}")
        else:
            base[k] = copy.deepcopy(v) if not isinstance(v, Mapping) else dict(copy.deepcopy(v))
    return base


# dict-valued keys whose contents are free-form (not checked against DEFAULTS)
_FREE = {"arch", "train", "val", "preprocess"}


def _set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = cfg
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(parts[:i])} is not a section")
        if p not in node or node[p] is None:
            if ".".join(parts[:i + 1]) in ("data.val", "init.arch") or p in _FREE:
                node[p] = {}
            else:
                raise ConfigError(f"--set {dotted}: unknown key {'.'.join(parts[:i + 1])!r}")
        node = node[p]
    leaf = parts[-1]
    free = any(p in _FREE for p in parts[:-1]) or (len(parts) >= 2 and parts[-2] in ("val",))
    if not isinstance(node, dict) or (leaf not in node and not free):
        raise ConfigError(f"--set {dotted}: unknown key; known here: {sorted(node) if isinstance(node, dict) else []}")
    node[leaf] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def load_config(paths: Iterable[str | Path] = (), overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cfg = copy.deepcopy(DEFAULTS)
    if base:
        _merge(cfg, base, "config")
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{p}: top level must be a mapping")
        _merge(cfg, data, str(p))
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: Mapping[str, Any]) -> None:
    m = cfg["model"]
    if m["f"] not in (4, 8, 16):
        raise ConfigError(f"model.f must be 4, 8 or 16, got {m['f']!r}")
    if not isinstance(m["latent_channels"], int) or m["latent_channels"] < 1:
        raise ConfigError(f"model.latent_channels must be a positive int, got {m['latent_channels']!r}")
    if m.get("arch_kind", "plain") not in ("plain", "residual-s2d"):
        raise ConfigError(f"model.arch_kind must be plain or residual-s2d, got {m.get('arch_kind')!r}")
    if m.get("arch_kind") == "residual-s2d":
        c, f = m["latent_channels"], m["f"]
        r = int(round(c ** 0.5))
        if r * r != c or f % r:
            raise ConfigError(f"model.arch_kind=residual-s2d needs C a square whose root divides f; got f={f}, C={c}")
    if float(cfg["loss"].get("hf_l1_weight", 0.0)) < 0 or float(cfg["loss"].get("hf_sigma", 1.0)) <= 0:
        raise ConfigError("loss.hf_l1_weight must be >= 0 and loss.hf_sigma > 0")
    if cfg["perceptual"]["kind"] not in ("auto", "lpips", "ms-ssim", "none"):
        raise ConfigError("perceptual.kind must be auto, lpips, ms-ssim or none")
    if cfg["data"]["crop_mode"] not in ("random", "resized", "mixed"):
        raise ConfigError("data.crop_mode must be random, resized or mixed")
    t = cfg["trainer"]
    if int(t["accumulate"]) < 1 or int(t["steps"]) < 1:
        raise ConfigError("trainer.accumulate and trainer.steps must be >= 1")
    if cfg["optim"]["schedule"] not in ("constant", "cosine"):
        raise ConfigError("optim.schedule must be constant or cosine")
    if cfg["disc"]["norm"] not in ("batch", "none"):
        raise ConfigError("disc.norm must be batch or none")
    crop = int(cfg["data"]["crop"])
    if crop % m["f"]:
        raise ConfigError(f"data.crop={crop} must be a multiple of model.f={m['f']}")


def dump_config(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)
