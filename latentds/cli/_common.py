"""What every command shares: the one-line-error parser, argument types, and opening the
stores of a cache (one per namespace)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from .._argtypes import positive_int

__all__ = [
    "Parser",
    "add_source_options",
    "existing_file",
    "fs_url",
    "json_object",
    "open_stores",
    "positive_int",
    "storage_options_of",
]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``latentds: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"latentds: error: {self.prog}: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def json_object(text: str) -> dict:
    """argparse type of ``--storage-options``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at character {exc.pos}): {text!r}; "
                                         """write a JSON object, e.g. '{"anon": false}'""") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"anon\": false}}', got {text!r}")
    return value


def fs_url(text: str) -> str:
    """argparse type of a folder or fsspec URL: an unknown protocol (``s4://``) is a typo, said at once;
    so is a local path that is an existing file (it would fail deep in a write with NotADirectoryError)."""
    if ("://" in text and not text.startswith("file://")) or "::" in text:
        import fsspec

        parts = text.split("::")  # a chained URL (simplecache::s3://...): every link's protocol is checked
        protocols = [p.split("://", 1)[0] for p in parts[:-1]] + [parts[-1].split("://", 1)[0]] * ("://" in parts[-1])
        for protocol in protocols:
            if protocol not in fsspec.available_protocols():
                raise argparse.ArgumentTypeError(
                    f"unknown storage protocol {protocol!r} in {text!r}; use a local folder or an fsspec URL such "
                    "as s3://bucket/prefix, gs://..., az://..., memory://...")
    elif Path(text[len("file://"):] if text.startswith("file://") else text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder; give a folder (created if missing) "
                                         "or an fsspec URL such as s3://bucket/prefix")
    return text


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def storage_options_of(args: argparse.Namespace) -> dict | None:
    return getattr(args, "storage_options", None) or None


def open_stores(args: argparse.Namespace) -> list:
    """One ShardedStore per namespace under CACHE (or only --namespace); none is a CacheError."""
    from ..store.entries import LatentCache, list_namespaces
    from ..store import ShardedStore

    storage = storage_options_of(args)
    found = names = list_namespaces(args.cache, storage)
    if getattr(args, "namespace", None):
        names = [n for n in names if n == args.namespace]
    if not names:  # pointing a command at the wrong folder is a user's mistake (docs/cli.md): one line, exit 2
        from ..errors import CacheError

        if found:
            raise CacheError(f"{args.cache}: no latentds namespace named {args.namespace!r}; the namespaces here are "
                             f"{', '.join(found)} (`latentds inspect CACHE` shows the codec and preprocessing of each)")
        raise CacheError(f"{args.cache}: no latentds namespace here; a cache is the folder or URL given to "
                         "`latentds encode --cache` or LatentDataset(cache=), not the image folder")
    return [ShardedStore(LatentCache(args.cache, ns, storage_options=storage)) for ns in names]


def add_source_options(q: argparse.ArgumentParser) -> None:
    """The options that name the namespace of ``--sources`` (as given to encode)."""
    q.add_argument("--codec", default=None, help="with --sources: the codec the cache was filled with")
    q.add_argument("--size", type=positive_int, default=None, help="with --sources: as given to encode")
    q.add_argument("--no-crop", action="store_true", help="with --sources: as given to encode")
    q.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="with --sources: as given to encode")
    q.add_argument("--fit", choices=["pad", "resize"], default="pad", help="with --sources: as given to encode")
