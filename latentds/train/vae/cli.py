"""Command line: ``python -m latentds.train.vae`` / ``latentds train-vae``.

    python -m latentds.train.vae fit --config latentds/train/vae/configs/f8c4.yaml --set trainer.steps=2000 data.batch_size=8
    python -m latentds.train.vae fit --config cfg.yaml --set trainer.resume=last      # continue the run
    python -m latentds.train.vae export runs/vae/kl-f8c4/checkpoints/best.ckpt kl-f8c4.safetensors
    python -m latentds.train.vae print-config --config cfg.yaml --set model.f=4

``fit`` is the default subcommand (``python -m latentds.train.vae --config cfg.yaml`` works).
``--config`` may repeat (later files override earlier ones); ``--set key.sub=value``
takes YAML values and may repeat or list several pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from collections.abc import Sequence

from latentds.train.vae.config import ConfigError, dump_config, load_config

__all__ = ["main"]


_EXAMPLES = """examples:
  latentds train-vae fit -c latentds/train/vae/configs/tiny-cpu.yaml      # seconds on a CPU, SYNTHETIC crops
  latentds train-vae fit -c latentds/train/vae/configs/f8c4.yaml --set trainer.devices=8 trainer.strategy=ddp
  latentds train-vae fit -c cfg.yaml --set trainer.resume=last           # continue the run
  latentds train-vae print-config -c cfg.yaml --set model.f=4            # the merged config, every key
  latentds train-vae export runs/vae/kl-f8c4/checkpoints/best.ckpt kl-f8c4.safetensors

See docs/train_vae.md. Needs the train extra: pip install 'latentds[train]'.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentds train-vae", description="Train the KL autoencoder (paper §2.1, A.2).",
                                epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    for name in ("fit", "print-config"):
        s = sub.add_parser(name, help="train" if name == "fit" else "print the merged config")
        s.add_argument("--config", "-c", action="append", default=[], help="YAML config (repeatable)")
        s.add_argument("--set", "-s", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="dotted override, e.g. model.lr=1e-4 (repeatable)")
    e = sub.add_parser("export", help="checkpoint -> latentds codec file")
    e.add_argument("checkpoint")
    e.add_argument("output", help="path ending in .safetensors")
    e.add_argument("--name", default=None, help="codec name (default kl-f{f}c{C})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["fit", *argv]
    args = _parser().parse_args(argv)
    if args.cmd is None:
        _parser().print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "export":
            if not Path(args.checkpoint).is_file():
                raise ConfigError(f"no such checkpoint file: {args.checkpoint!r} (a trainer run writes them under "
                                  "runs/vae/<name>/checkpoints/, e.g. best.ckpt)")
            from latentds.train.vae.run import export_checkpoint

            out = export_checkpoint(args.checkpoint, args.output, name=args.name)
            print(out)
            return 0
        cfg = load_config(args.config, args.set)
        if args.cmd == "print-config":
            print(dump_config(cfg), end="")
            return 0
        from latentds.train.vae.run import fit

        result = fit(cfg)
        print(json.dumps(result, indent=2))
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
