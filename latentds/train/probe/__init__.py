"""Probe trainer: any timm backbone (default ``hrnet_w64``) or a linear probe on latents.

API::

    fit_probe(train, test, *, in_chans, num_classes, backbone="hrnet_w64", mode="full"|"linear",
              input_fit="pad"|"resize"|"none", output=DIR, ...)
        -> ProbeResult(auroc, ci_lo, ci_hi, gmacs, seconds, input_fit, backbone_input_shape, ...)
    load_config(paths, overrides) / run_from_config(cfg) / main(argv)   # python -m latentds.train.probe --config
    save_probe(module, path) / load_probe(path) -> ProbeModule            # output: DIR -> DIR/probe.pt
    bootstrap_auroc(scores, targets, num_classes) -> AurocCI
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy (PEP 562): the model and metrics need only torch, the module and runner need Lightning
# (the train extra). ``latentds demo`` builds its probe from ``.model`` on a plain install.
_LAZY = {
    **dict.fromkeys(["AurocCI", "auroc", "bootstrap_auroc"], ".metrics"),
    **dict.fromkeys(["INPUT_FITS", "MODES", "SMALL_CNN", "ProbeModel", "ProbeShapeError", "build_backbone",
                     "required_multiple"], ".model"),
    **dict.fromkeys(["Indexed", "ProbeModule"], ".module"),
    **dict.fromkeys(["EpochSubset", "set_dataset_epoch"], ".epochs"),
    **dict.fromkeys(["DEFAULTS", "ImageSource", "ProbeResult", "build_datasets", "count_probe_gmacs", "fit_probe",
                     "load_config", "load_probe", "main", "predict", "run_from_config", "save_predictions",
                     "save_probe", "stratified_split", "write_predictions", "write_result"], ".run"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'latentds.train.probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = ["AurocCI", "DEFAULTS", "EpochSubset", "INPUT_FITS", "ImageSource", "Indexed", "MODES", "ProbeModel",
           "ProbeModule", "ProbeResult", "ProbeShapeError", "SMALL_CNN", "auroc", "bootstrap_auroc", "build_backbone",
           "build_datasets", "count_probe_gmacs", "fit_probe", "load_config", "load_probe", "main", "predict",
           "required_multiple", "run_from_config", "save_predictions", "save_probe", "set_dataset_epoch",
           "stratified_split", "write_predictions", "write_result"]
