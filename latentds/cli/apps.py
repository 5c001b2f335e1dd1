"""The paper's applications on the command line: ``demo``, ``train-probe``, ``sweep``, and the
entries of ``train-vae`` and ``review`` (which parse their own arguments; see :mod:`latentds.cli.entry`)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ._common import existing_file, positive_int

__all__ = ["add_apps", "add_demo"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import TASK_LINE, format_table, run_demo

    t0 = time.perf_counter()
    rows = run_demo(args.workdir, n_per_class=args.n_per_class, shape=(args.height, args.width), epochs=args.epochs,
                    seed=args.seed, codecs=tuple(args.codec) if args.codec else None)
    print()
    print(TASK_LINE)
    print(format_table(rows))
    from ..demo_figure import finding_crop_figure

    methods = [r.method for r in rows if getattr(r, "f", 1) != 1]
    picture = finding_crop_figure(methods, os.path.join(args.workdir, "demo-crops.png"),
                                  shape=(args.height, args.width))
    print(f"\npicture: {picture} (a crop around one finding: original beside each codec's reconstruction)")
    print(f"total {time.perf_counter() - t0:.0f} s; data and cache under {args.workdir}/")
    return 0


def _cmd_train_probe(args: argparse.Namespace) -> int:
    from latentds.train.probe.run import main as probe_main

    argv = [x for c in args.config for x in ("--config", c)] + list(args.overrides)
    return probe_main(argv + (["--print-config"] if args.print_config else []))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..sweep import run_cli

    return run_cli(args)


def add_demo(sub: Any) -> None:
    """The ``demo`` sub-command."""
    d = sub.add_parser("demo", help="run the end-to-end demo on synthetic data (offline, CPU, minutes)",
                       description="Generate a SYNTHETIC DICOM dataset, encode it with each codec, train a small CNN "
                                   "on latents and on full-size images, and print AUROC, GFLOPs, time and bytes. "
                                   "Writes demo-crops.png: a crop around a finding, original beside each codec's "
                                   "reconstruction.",
                       epilog="examples:\n  latentds demo\n  latentds demo --n-per-class 32 --epochs 10   "
                              "# a quicker, noisier run\n  latentds demo --codec bicubic-f4 --codec s2d-f4c16",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--workdir", default="latentds-demo", help="where data and cache go (default: %(default)s)")
    d.add_argument("--n-per-class", type=positive_int, default=96, help="images per class (default: %(default)s)")
    d.add_argument("--height", type=positive_int, default=192, help="image height (default: %(default)s)")
    d.add_argument("--width", type=positive_int, default=160, help="image width (default: %(default)s)")
    d.add_argument("--epochs", type=positive_int, default=40, help="training epochs per row (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--codec", action="append", help="codec to compare (repeatable; default: bicubic-f4, bicubic-f8 "
                                                     "and the shipped KL codecs)")
    d.set_defaults(func=_cmd_demo)


def add_apps(sub: Any) -> None:
    """``train-probe``, ``sweep``, and the help entries of ``train-vae`` and ``review``."""
    tp = sub.add_parser("train-probe", help="train an HRNet / linear probe on latents (latentds.train.probe)",
                        description="Train a timm backbone (default hrnet_w64) or a linear probe on a LatentDataset "
                                    "and report AUROC with a bootstrap CI. Same as python -m latentds.train.probe.",
                        epilog="examples:\n  latentds train-probe --config probe.yaml\n"
                               "  latentds train-probe --config probe.yaml model.mode=linear optim.epochs=10\n"
                               "  latentds train-probe --config probe.yaml --print-config\n\n"
                               "Needs the train extra: pip install 'latentds[train]'. See docs/probe.md.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tp.add_argument("--config", action="append", default=[], type=existing_file,
                    help="YAML config (repeatable; later files win)")
    tp.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.codec=bicubic-f4")
    tp.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    tp.set_defaults(func=_cmd_train_probe)

    from ..sweep import add_arguments as _sweep_arguments
    sw = sub.add_parser("sweep", help="FLOPs vs AUROC sweep over full size, bicubic and codecs with weights",
                        description="Run full size, bicubic f=4/8/16 and every codec whose weights are present on a "
                                    "task (default: the SYNTHETIC fine-grained task, reduced CPU configuration) and "
                                    "write tradeoff.md / .csv / .png. See docs/probe.md.",
                        epilog="examples:\n  latentds sweep --budget 0.02\n  latentds sweep --paper --out results/\n"
                               "  latentds sweep --data-root /data/task   # an ImageFolder task of your own\n\n"
                               "Needs the train extra: pip install 'latentds[train]'.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _sweep_arguments(sw)
    sw.set_defaults(func=_cmd_sweep)

    sub.add_parser("train-vae", add_help=False,
                   help="train the KL autoencoder: latentds train-vae --config cfg.yaml [--set k=v] "
                        "(docs/train_vae.md)")
    sub.add_parser("review", add_help=False,
                   help="the reader study: latentds review create|serve|analyze STUDY ... (docs/review.md)")
