"""The ``latentds`` argument parser: one sub-parser per command, in the order ``--help`` lists them."""

from __future__ import annotations

import argparse
import textwrap

from ._common import Parser
from .apps import add_apps, add_demo
from .codecs import add_codecs
from .encode import add_encode
from .maintenance import add_maintenance

__all__ = ["EPILOG", "build_parser"]


EPILOG = textwrap.dedent(
    """\
    examples:
      latentds demo                                   # synthetic data, offline, a few minutes on a CPU
      latentds encode /data/cmmd --codec bicubic-f8 --cache /data/latents
      latentds inspect /data/latents
      latentds compact s3://bucket/latents            # pack lazily filled latents into shards
      latentds verify s3://bucket/latents             # recompute every checksum; exit 1 on damage
      latentds gc s3://bucket/latents --grace-hours 24
      latentds export /data/latents /data/wds --format webdataset
      latentds codecs                                 # what can be used as --codec

    In Python, swap torchvision's ImageFolder for LatentDataset:
      ds = latentds.LatentDataset("/data/cmmd", codec="kl-f8c4", cache="/data/latents")
    """
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="latentds",
        description="Serve cached autoencoder latents of DICOM/PNG folders to training code.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback for any error (same as LATENTDS_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_demo(sub)
    add_encode(sub)
    add_maintenance(sub)
    add_apps(sub)
    add_codecs(sub)
    return p
