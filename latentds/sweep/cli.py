"""The sweep's command line (``latentds sweep`` and ``benchmarks/tradeoff.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Sequence

from .._argtypes import non_negative_int, positive_int
from .config import FULL, PAPER, REDUCED, SweepConfig
from .methods import check_methods, default_methods, unavailable_codecs, with_controls
from .report import write_outputs
from .run import SizeBreakdown, run_sweep


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = REDUCED
    p.add_argument("--out", default=d.out, help="output folder for tradeoff.md/.csv/.png (default %(default)s)")
    p.add_argument("--workdir", default=d.workdir, help="synthetic data and latent caches (default %(default)s)")
    p.add_argument("--data-root", default=None, help="an ImageFolder-style task folder instead of the synthetic task")
    p.add_argument("--paper", action="store_true",
                   help="the paper's configuration: d2s+hrnet_w64, 1024x1024, batch 128, AdamW 1e-4, 100 epochs (GPU)")
    p.add_argument("--budget", type=float, default=None,
                   help="report the cheapest (f, C) whose AUROC is within this drop of full size, e.g. 0.02 "
                        "(only among rows whose f passed its lossless control)")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods to run: '{FULL}', codec names, or NAME=WEIGHTS for your own weights file "
                        "(e.g. kl-f8c1=runs/vae/kl-f8c1/codec-best.safetensors); the lossless control s2d-f{f}c{f^2} "
                        "of every f is added unless --no-controls; default: full size, bicubic, codecs with weights, "
                        "their s2d baselines and the controls")
    p.add_argument("--no-controls", action="store_true",
                   help="with --methods: do not add the lossless s2d controls (rows are then not checked)")
    p.add_argument("--kind", choices=("calcification", "fracture"), default=None,
                   help=f"synthetic finding (default {d.kind})")
    p.add_argument("--fine", action="store_true", help="the fine synthetic task (1-3 px findings) instead of the graded one")
    p.add_argument("--n-per-class", type=positive_int, default=None,
                   help=f"synthetic images per class (default {d.n_per_class}; --paper {PAPER.n_per_class})")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help=f"image size fed to full size and the codecs (default {d.shape[0]} {d.shape[1]}; "
                        f"--paper {PAPER.shape[0]} {PAPER.shape[1]})")
    p.add_argument("--backbone", default=None,
                   help="probe: small-cnn, a timm name, or d2s+<either> (learned depth-to-space stem first; "
                        f"default {d.backbone})")
    p.add_argument("--stem-chans", type=int, default=None, help=f"d2s stem channels per pixel (default {d.stem_chans})")
    p.add_argument("--stem-kernel", type=int, default=None, help=f"d2s stem kernel (default {d.stem_kernel})")
    p.add_argument("--stem-init", choices=("d2s", "random"), default=None,
                   help=f"d2s stem initialisation (default {d.stem_init})")
    p.add_argument("--stem-lr-scale", type=float, default=None,
                   help=f"d2s stem learning rate: --lr x this x 16 / C, at most --lr (default {d.stem_lr_scale:g})")
    p.add_argument("--mode", choices=("full", "linear"), default=None,
                   help=f"probe: train everything, or a linear head on a frozen backbone (default {d.mode})")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"probe epochs per row and seed (default {d.epochs}; --paper {PAPER.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"probe batch size (default {d.batch_size}; --paper {PAPER.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"probe learning rate, AdamW (default {d.lr:g}; "
                                                          f"--paper {PAPER.lr:g})")
    p.add_argument("--seed", type=int, default=None, help="synthetic data seed (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help=f"probe seeds, one train/test split and initialisation each (default {' '.join(map(str, d.seeds))})")
    p.add_argument("--bootstrap", type=non_negative_int, default=None,
                   help=f"bootstrap resamples for each AUROC's 95%% CI; 0: no CI (default {d.bootstrap})")
    p.add_argument("--views", type=positive_int, default=None,
                   help="codec rows: cache K augmented views per image and train on one per epoch (test on view 0; "
                        "docs/views.md); default 1")


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    cfg = PAPER if args.paper else REDUCED
    over: dict[str, Any] = {"out": args.out, "workdir": args.workdir, "data_root": args.data_root,
                            "budget": args.budget}
    if args.methods:
        over["methods"] = tuple(args.methods)
    if args.size:
        over["shape"] = tuple(args.size)
    if getattr(args, "no_controls", False):
        over["controls"] = False
    if getattr(args, "fine", False):
        over["graded"] = False
    if getattr(args, "seeds", None):
        over["seeds"] = tuple(args.seeds)
    for name in ("kind", "n_per_class", "backbone", "mode", "epochs", "batch_size", "lr", "seed", "bootstrap",
                 "stem_chans", "stem_kernel", "stem_init", "stem_lr_scale", "views"):
        if getattr(args, name, None) is not None:
            over[name] = getattr(args, name)
    return dataclasses.replace(cfg, **over)


def _check_backbone(name: str) -> None:
    from ..probes import parse_probe
    from ..train.probe.model import check_backbone_name

    check_backbone_name(parse_probe(name).backbone)


def run_cli(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    if cfg.methods:
        methods = with_controls(cfg.methods, baselines=False) if cfg.controls else list(cfg.methods)
    else:
        methods = default_methods()
    if cfg.methods:  # chosen by hand: each one is built now (the default ones were, to be listed)
        check_methods(methods)
    _check_backbone(cfg.backbone)
    # "not run for lack of weights" only means something when the methods were not chosen by hand
    skipped = [] if cfg.methods else unavailable_codecs(methods)
    print(f"methods: {', '.join(methods)}")
    if skipped:
        print(f"no local weights, not run: {', '.join(skipped)}")
    cfg = dataclasses.replace(cfg, methods=tuple(methods))
    breakdown: list[SizeBreakdown] = []
    # outputs are rewritten after every method: a stopped sweep keeps its finished rows
    rows = run_sweep(cfg, breakdown=breakdown,
                     on_row=lambda done: write_outputs(done, cfg, skipped=skipped, breakdown=breakdown))
    paths = write_outputs(rows, cfg, skipped=skipped, breakdown=breakdown)
    print()
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/tradeoff.py", description="FLOPs vs AUROC sweep (Table 1 trade-off).")
    add_arguments(p)
    return run_cli(p.parse_args(argv))


__all__ = ["add_arguments", "config_from_args", "main", "run_cli"]
