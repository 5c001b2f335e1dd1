"""Probe trainer: any timm backbone (default ``hrnet_w64``) or a linear probe on latents.

API::

    fit_probe(train, test, *, in_chans, num_classes, backbone="hrnet_w64", mode="full"|"linear",
              input_fit="pad"|"resize"|"none", output=DIR, ...)
        -> ProbeResult(auroc, ci_lo, ci_hi, gmacs, seconds, input_fit, backbone_input_shape, ...)
    load_config(paths, overrides) / run_from_config(cfg) / main(argv)   # python -m trainers.probe --config
    save_probe(module, path) / load_probe(path) -> ProbeModule            # output: DIR -> DIR/probe.pt
    bootstrap_auroc(scores, targets, num_classes) -> AurocCI
"""

from .metrics import AurocCI, auroc, bootstrap_auroc
from .model import INPUT_FITS, MODES, SMALL_CNN, ProbeModel, ProbeShapeError, build_backbone, required_multiple
from .module import Indexed, ProbeModule
from .run import (DEFAULTS, ImageSource, ProbeResult, build_datasets, count_probe_gmacs, fit_probe, load_config,
                  load_probe, main, predict, run_from_config, save_predictions, save_probe, stratified_split,
                  write_predictions, write_result)

__all__ = ["AurocCI", "DEFAULTS", "INPUT_FITS", "ImageSource", "Indexed", "MODES", "ProbeModel", "ProbeModule",
           "ProbeResult", "ProbeShapeError", "SMALL_CNN", "auroc", "bootstrap_auroc", "build_backbone", "build_datasets",
           "count_probe_gmacs", "fit_probe", "load_config", "load_probe", "main", "predict", "required_multiple",
           "run_from_config", "save_predictions", "save_probe", "stratified_split", "write_predictions", "write_result"]
