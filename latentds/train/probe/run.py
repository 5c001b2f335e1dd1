"""Probe training: configuration, data, ``fit_probe`` and the command line.

``python -m latentds.train.probe --config cfg.yaml [key.sub=value ...]`` (also
``latentds train-probe --config cfg.yaml``) trains a probe on a ``LatentDataset`` (or on the
preprocessed full-size images, ``data.source: image``), evaluates AUROC with a bootstrap
confidence interval on the test split and prints / writes ``result.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Subset

from latentds.errors import ConfigError, ImageReadError

from .epochs import changes_with_epoch
from .metrics import bootstrap_auroc
from .model import INPUT_FITS, MODES, ProbeShapeError
from .module import Indexed, ProbeModule
from .stem import STEM_DEFAULTS, codec_factor, is_stem_backbone, load_stem_probe, stem_probe_module

__all__ = [
    "build_datasets", "build_parser", "count_probe_gmacs", "DEFAULTS", "fit_probe", "ImageSource",
    "load_config", "load_probe", "main", "predict", "ProbeResult", "resolve_precision", "run_from_config",
    "save_predictions", "save_probe", "stratified_split", "write_predictions", "write_result",
]

#: Paper B.1 defaults: hrnet_w64, AdamW lr 1e-4, batch 128, mixed precision where supported.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {
        "backbone": "hrnet_w64",   # any timm model name (pretrained=False, in_chans=C), or "small-cnn";
                                   # "d2s+<either>": a learned depth-to-space stem first (latentds.probes)
        "stem": dict(STEM_DEFAULTS),  # d2s+ only: f (None: the codec's), chans, kernel, init, lr_scale
        "mode": "full",            # full | linear (frozen backbone + linear head)
        "standardize": True,       # per-image, per-channel standardisation (no weights)
        "kwargs": {},              # extra timm.create_model keyword arguments
        "input_fit": "pad",        # pad | resize | none: fit inputs to the backbone's required multiple
    },
    "data": {
        "root": None,              # ImageFolder-style folder or fsspec URL (classes = sub-folders)
        "test_root": None,         # a separate test folder; otherwise a stratified split of root
        "test_fraction": 0.5,
        "source": "latent",        # latent (via the codec) | image (preprocessed full-size images)
        "codec": "bicubic-f8",
        "cache": None,             # latent cache URL; default <root>/../latent-cache
        "image_size": None,        # [H, W]: fixed-size inputs so batches collate
        "crop_roi": True,
        "storage_options": {},
        "codec_kwargs": {},
        "num_workers": 0,
        "fill": True,              # encode every latent up front (batched) before training
    },
    "task": {"num_classes": None},  # default: the number of class sub-folders
    "optim": {"lr": 1.0e-4, "weight_decay": 0.01, "batch_size": 128, "epochs": 100, "flip": True},
    "trainer": {"accelerator": "auto", "devices": "auto", "num_nodes": 1, "strategy": "auto",
                "precision": "auto"},  # auto: bf16-mixed on GPUs that support it, 16-mixed on others, 32 on CPU
    "eval": {"bootstrap": 1000, "level": 0.95},
    "output": None,                # folder for result.json
}


class UnknownConfigKey(ConfigError, KeyError):
    """A config key the probe does not have: a user's ConfigError (one line from the CLI), and the
    KeyError it always was for callers."""

    __str__ = BaseException.__str__  # the message as written, not KeyError's repr of it


def _merge(base: dict, over: Mapping, prefix: str = "") -> None:
    for k, v in over.items():
        if k not in base:
            raise UnknownConfigKey(f"unknown config key {prefix + k!r}; `latentds train-probe --print-config` "
                                   "shows every key")
        if isinstance(base[k], dict) and isinstance(v, Mapping) and k not in ("kwargs", "storage_options",
                                                                              "codec_kwargs"):
            _merge(base[k], v, prefix + k + ".")
        else:
            if isinstance(v, str) and isinstance(base[k], float):
                try:  # PyYAML reads "1e-4" (no dot) as a string
                    v = float(v)
                except ValueError:
                    raise ConfigError(f"config key {prefix + k!r} must be a number, got {v!r}") from None
            base[k] = v


def load_config(paths: Iterable[str | os.PathLike] = (), overrides: Iterable[str] = ()) -> dict[str, Any]:
    """DEFAULTS, then each YAML file, then ``key.sub=value`` overrides (YAML values). Unknown
    keys are errors."""
    cfg = copy.deepcopy(DEFAULTS)
    for p in paths:
        data = yaml.safe_load(Path(p).read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{p}: a probe config must be a mapping")
        _merge(cfg, data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.epochs=10)")
        node: Any = {}
        top = node
        parts = key.split(".")
        for part in parts[:-1]:
            node[part] = {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(value)
        _merge(cfg, top)
    if cfg["model"]["mode"] not in MODES:
        raise ConfigError(f"model.mode must be one of {MODES}, got {cfg['model']['mode']!r}")
    if cfg["model"]["input_fit"] not in INPUT_FITS:
        raise ConfigError(f"model.input_fit must be one of {INPUT_FITS}, got {cfg['model']['input_fit']!r}")
    return cfg


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


# ----------------------------------------------------------------------------- data

class ImageSource(Dataset):
    """The preprocessed full-size images of a ``LatentDataset`` (``1×H×W``, no codec): the
    "full size" row. Set ``image_size`` on the dataset so the images collate."""

    def __init__(self, latent_dataset) -> None:
        self.ds = latent_dataset
        self.targets = list(latent_dataset.targets)
        self.classes = list(latent_dataset.classes)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        img, _ = self.ds.load_source(i)
        return torch.from_numpy(np.ascontiguousarray(img))[None].float(), self.ds.targets[i]


def stratified_split(targets: Sequence[int], test_fraction: float = 0.5, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic per-class split into (train, test) indices."""
    rng = np.random.default_rng(seed)
    train: list[int] = []
    test: list[int] = []
    targets = list(targets)
    for c in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == c]
        rng.shuffle(idx)
        k = int(round(len(idx) * test_fraction))
        test += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(test)


def build_datasets(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset, int, int]:
    """(train, test, in_chans, num_classes) from the ``data`` section."""
    from latentds.dataset import LatentDataset

    d = cfg["data"]
    if not d["root"]:
        raise ConfigError("data.root is required: the ImageFolder tree to train on, in --config FILE or as "
                          "data.root=/path (`latentds train-probe --print-config` shows every key)")
    cache = d["cache"] or os.path.join(os.path.dirname(os.path.abspath(str(d["root"]).rstrip("/"))), "latent-cache")
    codec = d["codec"] if d["source"] == "latent" else "bicubic-f4"  # image source: codec unused

    def make(root):
        ds = LatentDataset(root, codec=codec, cache=cache, storage_options=d["storage_options"] or None,
                           crop_roi=d["crop_roi"], image_size=tuple(d["image_size"]) if d["image_size"] else None,
                           codec_kwargs=d["codec_kwargs"] or None)
        if d["source"] == "image":
            return ImageSource(ds), 1
        if d["source"] != "latent":
            raise ConfigError(f"data.source must be 'latent' or 'image', got {d['source']!r}")
        if d["fill"]:
            report = ds.fill(progress=True)
            if report.failures:
                f = report.failures[0]
                raise ImageReadError(f"{len(report.failures)} sources failed to encode, first {f.path}: {f.error_type}: "
                                     f"{f.message}; fix or remove those files (`latentds encode` lists them all)")
        return ds, ds.codec.latent_channels

    full, in_chans = make(d["root"])
    num_classes = cfg["task"]["num_classes"] or len(full.classes)
    if d["test_root"]:
        test, _ = make(d["test_root"])
        return full, test, in_chans, num_classes
    tr, te = stratified_split(full.targets, d["test_fraction"], cfg["seed"])
    return Subset(full, tr), Subset(full, te), in_chans, num_classes


# ----------------------------------------------------------------------------- training

@dataclass
class ProbeResult:
    auroc: float
    ci_lo: float
    ci_hi: float
    ci_level: float
    n_train: int
    n_test: int
    num_classes: int
    backbone: str
    mode: str
    input_shape: tuple[int, ...]   # one input as the dataset gives it (C, H, W)
    gmacs: float               # backbone + head at backbone_input_shape, latentds.flops rule; NaN: not counted
    seconds: float             # training + evaluation wall time
    input_fit: str = "none"    # pad | resize | none: how inputs were fitted to the backbone
    backbone_input_shape: tuple[int, ...] = ()  # what the backbone sees (after padding / resizing)
    extra: dict[str, Any] = field(default_factory=dict)
    module: Any = field(default=None, repr=False)
    scores: Any = field(default=None, repr=False)   # test-set scores (N, or N×K), test-set order
    targets: Any = field(default=None, repr=False)  # test-set targets (N)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("module", "scores", "targets")}  # no deepcopy of the model
        out["input_shape"] = list(self.input_shape)
        out["backbone_input_shape"] = list(self.backbone_input_shape)
        if self.gmacs != self.gmacs:  # NaN (not counted) is not JSON: null, with extra.gmacs_error
            out["gmacs"] = None
        return out


@torch.no_grad()
def predict(module: ProbeModule, dataset: Dataset, *, batch_size: int = 128, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, targets) over ``dataset`` in eval mode."""
    module.eval()
    device = next(module.parameters()).device
    scores, targets = [], []
    amp = device.type == "cuda"  # mixed precision for inference where training used it (GPU)
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            logits = module(x.to(device))
        scores.append(module.scores(logits).cpu())
        targets.append(torch.as_tensor(y))
    return torch.cat(scores), torch.cat(targets)


def _shape_of(dataset: Dataset, what: str) -> tuple[int, ...]:
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ProbeShapeError(f"the {what} set is empty: there is no input to train or score a probe on; "
                              f"check data.root / data.test_root and data.test_fraction")
    x0, _ = dataset[0]
    return tuple(int(s) for s in torch.as_tensor(x0).shape)


def count_probe_gmacs(module: ProbeModule, input_shape: Sequence[int]) -> tuple[float, str | None]:
    """(GMACs, None) of backbone + head on one input of ``input_shape`` (C, H, W) as the backbone
    sees it (after padding / resizing), under the paper's rule (``latentds.flops``, eval mode,
    meta device); ``(nan, message)`` if the count failed, the message saying what was not counted."""
    from latentds.flops import FlopCountError, gmacs

    fitted = module.model.backbone_input_shape(input_shape)
    counted = torch.nn.Sequential(module.model.backbone, module.model.head)
    try:
        return gmacs(counted, (1, *fitted)), None
    except FlopCountError as exc:
        return float("nan"), (f"GMACs of {module.model.backbone_label()} + head at input "
                               f"1x{'x'.join(map(str, fitted))} not counted: {exc}")


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename: a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fit_probe(train: Dataset, test: Dataset, *, in_chans: int, num_classes: int, backbone: str = "hrnet_w64",
              mode: str = "full", epochs: int = 100, batch_size: int = 128, lr: float = 1e-4,
              weight_decay: float = 0.01, flip: bool = True, standardize: bool = True,
              backbone_kwargs: dict | None = None, seed: int = 0, num_workers: int = 0,
              accelerator: str = "auto", devices: Any = "auto", num_nodes: int = 1, strategy: Any = "auto",
              precision: str = "auto", bootstrap: int = 1000, level: float = 0.95, val: Dataset | None = None,
              progress: bool = False, module: ProbeModule | None = None, input_fit: str = "pad",
              output: str | os.PathLike | None = None, config: Mapping[str, Any] | None = None,
              stem: Mapping[str, Any] | None = None) -> ProbeResult:
    """Train a probe on ``train`` with Lightning and score AUROC (bootstrap CI) on ``test``.

    Items are ``(C×H×W tensor, int target)``. ``module``: a prepared :class:`ProbeModule` to
    train instead of a fresh one (the model arguments, ``input_fit`` included, are then ignored).
    ``backbone="d2s+<name>"``: the depth-to-space stem probe (:mod:`.stem`; ``stem`` overrides
    :data:`~.stem.STEM_DEFAULTS`, f defaults to the factor of ``train``'s codec).

    Shapes: inputs are fitted to the backbone's required multiple (``input_fit``: ``pad``,
    ``resize`` or ``none``; see :class:`~latentds.train.probe.model.ProbeModel`). The train and test
    shapes are checked before any training: a backbone that cannot take them raises
    :class:`~latentds.train.probe.model.ProbeShapeError`. GMACs count the input the backbone sees
    (padded / resized), in eval mode under the paper's rule; a count that fails anyway gives
    ``gmacs`` NaN, ``extra["gmacs_error"]`` (what was not counted) and a warning, never a lost run.
    A training batch of one is never formed where batch norm would refuse it (the last,
    one-sample batch of an epoch is dropped then; with shuffling, a different sample each epoch).

    ``output``: a folder (global rank 0 writes it) that receives each output as soon as it
    exists: ``probe.pt`` after training, ``predictions.csv`` after the test pass, then
    ``result.json`` (``{"config": config, "result": ...}``), so a late failure loses nothing
    already computed.

    DDP (``strategy="ddp"``, ``devices``/``num_nodes``): every rank ends training with rank 0's
    weights (checked; the per-rank state-dict hashes are in ``extra["rank_state_hashes"]``). The
    test set is scored with ``Trainer.test``, split across the ranks; the ``(index, score,
    target)`` triples of all ranks are gathered and each test sample is kept exactly once (the
    distributed sampler's padding is dropped), so AUROC and its CI are those of a single-process
    evaluation of the same weights on the whole test set. They are computed on global rank 0 and
    broadcast: every rank returns the same result (``extra["global_rank"]`` tells which one it
    is; ``extra["n_test_gathered"]`` is the count before de-duplication). ``result.scores`` /
    ``result.targets``: the test predictions in test-set order."""
    import warnings

    import lightning as L

    t0 = time.perf_counter()
    shape = _shape_of(train, "training")
    test_shape = _shape_of(test, "test")
    L.seed_everything(seed, workers=True, verbose=False)
    if module is None and is_stem_backbone(backbone):
        module = stem_probe_module(backbone, in_chans, num_classes, f=codec_factor(train), mode=mode, lr=lr,
                                   weight_decay=weight_decay, flip=flip, standardize=standardize,
                                   backbone_kwargs=backbone_kwargs, stem=stem)
        module.model.check_input(shape)
    elif module is None:  # the shape is checked at construction, before any training
        module = ProbeModule(backbone, in_chans, num_classes, mode=mode, lr=lr, weight_decay=weight_decay, flip=flip,
                             standardize=standardize, backbone_kwargs=backbone_kwargs, input_fit=input_fit,
                             input_shape=shape)
    else:
        module.model.check_input(shape)
    if test_shape != shape:
        module.model.check_input(test_shape)
    fitted = module.model.backbone_input_shape(shape)
    # Counted now (the count needs no trained weights): a failure is known before training,
    # and is recorded rather than raised, so that it can never cost the run.
    macs, macs_error = count_probe_gmacs(module, shape)
    if macs_error:
        warnings.warn(macs_error, RuntimeWarning, stacklevel=2)
    out_dir = Path(output) if output else None

    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=strategy, precision=resolve_precision(precision, accelerator), logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
                        num_sanity_val_steps=0, limit_val_batches=1.0 if val is not None else 0)
    per_rank = -(-len(train) // max(1, trainer.world_size))  # type: ignore[arg-type]
    drop_last = per_rank > 1 and per_rank % batch_size == 1 and module.model.needs_batch_of_two(shape)
    gen = torch.Generator().manual_seed(seed)
    # persistent workers spare a worker start per epoch, but keep the dataset copy they started
    # with: a training set that changes with the epoch (cached views) would serve epoch 0's views
    # every epoch, so it gets workers made afresh for each epoch (they copy it after set_epoch)
    persistent = num_workers > 0 and not changes_with_epoch(train)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=num_workers, generator=gen,
                              persistent_workers=persistent, drop_last=drop_last)
    val_loader = DataLoader(val, batch_size=batch_size, num_workers=num_workers) if val is not None else None
    trainer.fit(module, train_loader, val_loader)
    if out_dir is not None and trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_probe(module, out_dir / "probe.pt")
    num_classes = module.num_classes
    module.test_size = len(test)
    test_loader = DataLoader(Indexed(test), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    trainer.test(module, test_loader, verbose=False)
    scores, targets = module.test_predictions
    if out_dir is not None and trainer.is_global_zero:
        write_predictions(scores, targets, out_dir / "predictions.csv")
    ci = bootstrap_auroc(scores, targets, num_classes, n_boot=bootstrap, level=level, seed=seed) \
        if trainer.is_global_zero else None
    ci = trainer.strategy.broadcast(ci, src=0)
    hp = module.hparams
    extra = {"world_size": trainer.world_size, "global_rank": trainer.global_rank, "n_boot_used": ci.n_boot,
             "n_test_gathered": module.test_gathered,
             "rank_state_hashes": list(getattr(module, "rank_state_hashes", [])),
             "multiple": module.model.multiple, "dropped_last_batch_of_one": drop_last}
    if macs_error:
        extra["gmacs_error"] = macs_error
    result = ProbeResult(ci.auroc, ci.lo, ci.hi, level, len(train), len(test), num_classes, hp.backbone, hp.mode,
                         shape, macs, time.perf_counter() - t0, module.model.input_fit, fitted, extra=extra,
                         module=module, scores=scores, targets=targets)
    if out_dir is not None and trainer.is_global_zero:
        write_result(result, out_dir / "result.json", config)
    return result


def run_from_config(cfg: Mapping[str, Any]) -> ProbeResult:
    """Datasets from ``cfg["data"]``, then :func:`fit_probe`; ``cfg["output"]`` receives
    ``probe.pt``, ``predictions.csv`` and ``result.json`` as each exists."""
    train, test, in_chans, num_classes = build_datasets(cfg)
    m, o, t, e = cfg["model"], cfg["optim"], cfg["trainer"], cfg["eval"]
    return fit_probe(train, test, in_chans=in_chans, num_classes=num_classes, backbone=m["backbone"],
                     mode=m["mode"], standardize=m["standardize"], backbone_kwargs=m["kwargs"] or None,
                     input_fit=m["input_fit"], epochs=o["epochs"], batch_size=o["batch_size"], lr=o["lr"],
                     weight_decay=o["weight_decay"], flip=o["flip"], seed=cfg["seed"],
                     num_workers=cfg["data"]["num_workers"], accelerator=t["accelerator"], devices=t["devices"],
                     num_nodes=t["num_nodes"], strategy=t["strategy"], precision=t["precision"],
                     bootstrap=e["bootstrap"], level=e["level"], progress=True, output=cfg["output"], config=cfg,
                     stem=m.get("stem"))


def save_probe(module: ProbeModule, path: str | os.PathLike) -> None:
    """``{"hparams": ..., "state_dict": ...}`` of the trained probe; :func:`load_probe` reads it."""
    _atomic_write(Path(path), lambda tmp: torch.save({"hparams": dict(module.hparams),
                                                      "state_dict": module.model.state_dict()}, tmp))


def load_probe(path: str | os.PathLike, map_location: Any = "cpu") -> ProbeModule:
    """The :class:`ProbeModule` saved by :func:`save_probe` (``output: DIR`` → ``DIR/probe.pt``)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    hp = dict(ckpt["hparams"])
    hp.setdefault("input_fit", "none")  # probes saved before input fitting existed saw inputs as they were
    if hp.get("stem"):
        module = load_stem_probe(hp)
    else:
        module = ProbeModule(hp.pop("backbone"), hp.pop("in_chans"), hp.pop("num_classes"), **hp)
    module.model.load_state_dict(ckpt["state_dict"])
    return module


def write_predictions(scores: torch.Tensor, targets: torch.Tensor, path: str | os.PathLike) -> None:
    """``index,target,score`` (binary) or ``index,target,score_0..score_{K-1}``, one row per test sample."""
    s = scores.reshape(len(targets), -1)
    cols = ["score"] if s.shape[1] == 1 else [f"score_{k}" for k in range(s.shape[1])]
    lines = [",".join(["index", "target", *cols])]
    lines += [",".join([str(i), str(int(t)), *(repr(float(v)) for v in row)])
              for i, (t, row) in enumerate(zip(targets.tolist(), s.tolist()))]
    text = "\n".join(lines) + "\n"
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def save_predictions(result: ProbeResult, path: str | os.PathLike) -> None:
    """:func:`write_predictions` of a :class:`ProbeResult`."""
    write_predictions(result.scores, result.targets, path)


def write_result(result: ProbeResult, path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> None:
    """``{"config": config, "result": result.to_dict()}`` as JSON (``gmacs`` null if not counted)."""
    text = json.dumps({"config": config, "result": result.to_dict()}, indent=2, default=str)
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latentds.train.probe",
        description="Train an HRNet (any timm backbone) or linear probe on latents; AUROC with a bootstrap CI.",
        epilog="example: python -m latentds.train.probe --config probe.yaml model.mode=linear optim.epochs=10")
    p.add_argument("--config", action="append", default=[], help="YAML config (repeatable; later files win)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.codec=bicubic-f4")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a user error (a backbone that cannot take the inputs, ...) is one line
    on stderr and exit status 2, as in ``latentds``. A run whose GMACs could not be counted is
    saved whole and reported, then exits with status 2 too."""
    import sys

    from latentds.errors import LatentdsError

    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False))
        return 0
    try:
        r = run_from_config(cfg)
    except LatentdsError as exc:
        print(f"latentds: error: {exc}", file=sys.stderr)
        return 2
    if r.extra.get("global_rank", 0) != 0:
        return 0
    shape = "x".join(map(str, r.input_shape))
    if tuple(r.backbone_input_shape) != tuple(r.input_shape):
        shape += f" ({r.input_fit} -> {'x'.join(map(str, r.backbone_input_shape[1:]))})"
    macs = "GMACs not counted" if r.extra.get("gmacs_error") else f"{r.gmacs:.4f} GMACs"
    print(f"AUROC {r.auroc:.4f} [{r.ci_lo:.4f}, {r.ci_hi:.4f}] ({int(r.ci_level * 100)}% bootstrap CI); "
          f"{r.backbone} {r.mode}; input {shape}; {macs}; "
          f"{r.n_train} train / {r.n_test} test; {r.seconds:.1f} s")
    if r.extra.get("gmacs_error"):
        saved = f"; the probe, predictions and result are saved in {cfg['output']}" if cfg["output"] else ""
        print(f"latentds: error: {r.extra['gmacs_error']}{saved}", file=sys.stderr)
        return 2
    return 0
