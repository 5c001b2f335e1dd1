"""Probe trainer: any timm backbone (default ``hrnet_w64``) or a linear probe on latents.

API::

    fit_probe(train, test, *, in_chans, num_classes, backbone="hrnet_w64", mode="full"|"linear", ...)
        -> ProbeResult(auroc, ci_lo, ci_hi, gmacs, seconds, ...)
    load_config(paths, overrides) / run_from_config(cfg) / main(argv)   # python -m trainers.probe --config
    save_probe(module, path) / load_probe(path) -> ProbeModule            # output: DIR -> DIR/probe.pt
    bootstrap_auroc(scores, targets, num_classes) -> AurocCI
"""

from .metrics import AurocCI, auroc, bootstrap_auroc
from .model import MODES, SMALL_CNN, ProbeModel, build_backbone
from .module import Indexed, ProbeModule
from .run import (DEFAULTS, ImageSource, ProbeResult, build_datasets, fit_probe, load_config, load_probe, main,
                  predict, run_from_config, save_predictions, save_probe, stratified_split)

__all__ = ["AurocCI", "DEFAULTS", "ImageSource", "Indexed", "MODES", "ProbeModel", "ProbeModule", "ProbeResult", "SMALL_CNN",
           "auroc", "bootstrap_auroc", "build_backbone", "build_datasets", "fit_probe", "load_config", "load_probe",
           "main", "predict", "run_from_config", "save_predictions", "save_probe", "stratified_split"]
