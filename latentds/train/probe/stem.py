"""The depth-to-space (d2s) probe for the probe trainer: ``model.backbone: d2s+<name>``.

A plain CNN shares weights across *latent* pixels, so on a space-to-depth-like latent every
sub-pixel phase of a finding must be learned separately and a lossless latent scores like an
erased one (benchmarks/RESULTS.md, issue 12). ``d2s+<name>`` puts the learned depth-to-space
stem of :mod:`latentds.probes` in front of ``<name>`` (``small-cnn`` or a timm backbone), as the
sweep does. The stem's scale depends on the codec's factor f, which the trainer reads from the
dataset's codec; both are recorded in the saved probe so :func:`load_probe` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from latentds.probes import STEM_PREFIX, ProbeError, make_probe_module

from .module import ProbeModule

#: ``model.stem`` defaults (the sweep's: :class:`latentds.sweep.SweepConfig`).
STEM_DEFAULTS: dict[str, Any] = {"f": None, "chans": 4, "kernel": 1, "init": "d2s", "lr_scale": 0.1}


def is_stem_backbone(backbone: str) -> bool:
    return isinstance(backbone, str) and backbone.startswith(STEM_PREFIX)


def codec_factor(dataset: Dataset) -> int | None:
    """The downsampling factor f of the codec behind ``dataset`` (a ``LatentDataset``, or a
    ``Subset`` of one), or None when it has no codec (a plain tensor dataset)."""
    seen = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        codec = getattr(dataset, "codec", None)
        if codec is not None and getattr(codec, "f", None):
            return int(codec.f)
        dataset = getattr(dataset, "dataset", None)
    return None


def stem_probe_module(backbone: str, in_chans: int, num_classes: int, *, f: int | None, mode: str = "full",
                      lr: float = 1e-4, weight_decay: float = 0.01, flip: bool = True, standardize: bool = True,
                      backbone_kwargs: dict | None = None, stem: Mapping[str, Any] | None = None,
                      where: str = "the training set") -> ProbeModule:
    """A ``d2s+<name>`` probe module (:func:`latentds.probes.make_probe_module`) for a C =
    ``in_chans`` latent of factor ``f``; its hyper-parameters carry ``stem`` (f included) so the
    saved probe can be rebuilt."""
    s = {**STEM_DEFAULTS, **{k: v for k, v in dict(stem or {}).items() if v is not None}}
    if f is None:
        f = s["f"]
    if f is None:
        raise ProbeError(f"probe {backbone!r}: the d2s stem needs the codec's factor f, and {where} has no codec "
                         "to read it from; set model.stem.f (e.g. 8 for kl-f8c4)")
    s["f"] = int(f)
    module = make_probe_module(backbone, in_chans, num_classes, f=s["f"], mode=mode, lr=lr, weight_decay=weight_decay,
                               flip=flip, standardize=standardize, stem_chans=int(s["chans"]),
                               stem_kernel=int(s["kernel"]), stem_init=str(s["init"]),
                               stem_lr_scale=float(s["lr_scale"]), backbone_kwargs=backbone_kwargs)
    # the flags the stem took over from the module (saved hparams say False for both)
    module.hparams["stem"] = {**s, "flip": bool(flip), "standardize": bool(standardize)}
    module.hparams["backbone_kwargs"] = backbone_kwargs
    return module


def load_stem_probe(hp: dict[str, Any]) -> ProbeModule:
    """Rebuild a saved ``d2s+`` probe module (weights not loaded) from its hyper-parameters."""
    s = dict(hp["stem"])
    return stem_probe_module(hp["backbone"], int(hp["in_chans"]), int(hp["num_classes"]), f=s["f"],
                             mode=hp.get("mode", "full"), lr=float(hp.get("lr", 1e-4)),
                             weight_decay=float(hp.get("weight_decay", 0.01)), flip=s.get("flip", True),
                             standardize=s.get("standardize", True), backbone_kwargs=hp.get("backbone_kwargs"),
                             stem=s)


__all__ = ["STEM_DEFAULTS", "codec_factor", "is_stem_backbone", "load_stem_probe", "stem_probe_module"]
