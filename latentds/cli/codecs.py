"""``latentds codecs``: the registered codecs (``-v``: f, C and where their weights come from)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_codecs"]


def _cmd_codecs(args: argparse.Namespace) -> int:
    from ..codecs import create_codec, list_codecs
    from ..codecs import shipped_kl_defaults
    from ..errors import CodecError

    if not args.verbose:  # one name per line: stays easy to use in shell loops
        print("\n".join(list_codecs()))
        return 0
    shipped = set(shipped_kl_defaults())
    for name in list_codecs():
        try:
            codec = create_codec(name)  # local files only: never downloads
        except CodecError:
            how = ("train one (`latentds train-vae`) and pass weights=PATH" if name.startswith("kl-")
                   else "pass weights=PATH or put the checkpoint in the Hugging Face cache")
            print(f"{name:15s} {'':12s} no weights here: {how} (docs/codecs.md)")
            continue
        source = getattr(codec, "source", None)  # learned codecs say where their weights came from
        if name in shipped:
            where = f"shipped weights (not clinical; model card latentds/weights/{name}.json)"
        elif source is None:
            where = "no weights needed"
        else:
            where = f"weights: {source}"
        print(f"{name:15s} f={codec.f:<3d} C={codec.latent_channels:<3d} {where}")
    return 0


def add_codecs(sub: Any) -> None:
    """The ``codecs`` sub-command."""
    c = sub.add_parser("codecs", help="list the registered codecs (-v: f, C and where their weights come from)",
                       description="List the registered codecs, one per line (-v: f, C and where weights come from).",
                       epilog="examples:\n  latentds codecs\n  latentds codecs -v",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("-v", "--verbose", action="store_true",
                   help="also show f, C and whether weights are available locally (loads each codec)")
    c.set_defaults(func=_cmd_codecs)
