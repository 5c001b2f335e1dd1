"""``latentds encode``: fill a cache from a folder, bucket or table (in process, or on Dask)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ._common import fs_url, json_object, positive_int

__all__ = ["add_encode"]


def _source_kind(source: str) -> str:
    """'table', 'imagefolder', 'flat' or 'remote'; a local source that does not exist is a user error."""
    from ..discovery import LAYOUT_HINT, is_remote
    from ..errors import SourceError

    if source.lower().endswith((".csv", ".parquet", ".pq")):
        if not is_remote(source) and not Path(source).is_file():
            raise SourceError(f"{source}: no such table file")
        return "table"
    if is_remote(source):
        return "remote"
    path = Path(source[len("file://"):] if source.startswith("file://") else source)
    if not path.exists():
        raise SourceError(f"{source}: no such folder. {LAYOUT_HINT}")
    if not path.is_dir():
        raise SourceError(f"{source}: not a folder or a .csv/.parquet table. {LAYOUT_HINT}")
    try:
        has_class_dirs = any(e.is_dir() for e in os.scandir(path))
    except OSError as exc:
        raise SourceError(f"{source}: cannot list the folder ({exc.strerror}); check its permissions") from None
    return "imagefolder" if has_class_dirs else "flat"


def _check_device(device: str, remote: bool) -> None:
    """``--device`` is a torch device this machine has: said at once, not as a torch traceback (in
    process) or as every file recorded as a failure (Dask) after the job started."""
    import torch

    from ..errors import ConfigError

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if remote:  # an existing scheduler's workers may have the GPU this client lacks
        return
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch {torch.__version__} sees no CUDA device on this machine "
                          "(torch.cuda.is_available() is False); use --device cpu, or --scheduler ADDRESS "
                          "for a Dask cluster whose workers have GPUs")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")


def _cmd_encode(args: argparse.Namespace) -> int:
    _check_device(args.device, remote=bool(args.scheduler))
    storage = args.storage_options
    image_size = tuple(args.image_size) if args.image_size else None
    kind = _source_kind(args.source)
    # Flat folders and tables have no ImageFolder classes: they always take the bulk path (one
    # local worker unless --workers says otherwise), so both paths accept the same sources.
    if args.workers or args.scheduler or args.retry_failed or kind in ("table", "flat"):
        from ..bulk import encode, format_report

        codec_kwargs = {"weights": args.weights} if args.weights else None
        report = encode(args.source, args.codec, args.cache, scheduler=args.scheduler, n_workers=args.workers or 1,
                        device=args.device, batch_size=args.batch_size, shard_samples=args.shard_samples,
                        prefetch=args.prefetch, torch_threads=args.torch_threads, storage_options=storage,
                        codec_kwargs=codec_kwargs, crop_roi=not args.no_crop, size=args.size,
                        image_size=image_size, fit=args.fit, retry_failed=args.retry_failed,
                        source_id=args.source_id, views=args.views, progress=not args.quiet)
        text = format_report(report)
        head, _, rest = text.partition("\n")
        print(head)
        if rest:
            print(rest, file=sys.stderr)
        return 1 if report.failures else 0

    from ..dataset import LatentDataset

    codec_kwargs = {"weights": args.weights} if args.weights else None
    ds = LatentDataset(args.source, codec=args.codec, cache=args.cache, storage_options=storage,
                       crop_roi=not args.no_crop, size=args.size, image_size=image_size, fit=args.fit,
                       device=args.device, codec_kwargs=codec_kwargs, source_id=args.source_id,
                       views=args.views)
    print(f"{len(ds)} images in {len(ds.classes)} classes -> {ds.cache.location.url} (namespace {ds.namespace})")
    report = ds.fill(batch_size=args.batch_size, progress=not args.quiet)
    print(f"encoded {report.encoded}, already cached {report.cached}, failed {len(report.failures)}")
    for f in report.failures:
        print(f"  FAILED {f.path}: {f.error_type}: {f.message}", file=sys.stderr)
    return 1 if report.failures else 0


def add_encode(sub: Any) -> None:
    """The ``encode`` sub-command."""
    e = sub.add_parser("encode", help="encode every image of a folder into the cache",
                       description="Encode every image under SOURCE (ImageFolder layout) with CODEC and store the "
                                   "latents in CACHE. Already cached images are skipped; files that fail are listed "
                                   "and the exit code is 1. With --workers or --scheduler the job runs on Dask: "
                                   "one task per shard-sized partition, resumable (re-run the same command), "
                                   "failures recorded in the cache (--retry-failed retries only those).",
                       epilog="examples:\n"
                              "  latentds encode /data/cmmd --codec bicubic-f8 --cache /data/latents\n"
                              "  latentds encode /data/cmmd --codec kl-f8c4 --cache s3://b/lat --workers 4\n"
                              "  latentds encode labels.csv --codec kl-f8c4 --cache s3://b/lat "
                              "--scheduler tcp://sched:8786 --device cuda\n"
                              "  latentds encode /data/cmmd --codec bicubic-f8 --cache /data/latents --workers 4 "
                              "--retry-failed\n"
                              "  latentds encode /data/mammo/train --codec kl-f8c4 --cache /data/lat "
                              "--image-size 512 416   # the namespace LatentDataset(..., image_size=(512, 416)) reads\n\n"
                              "Every option that changes the latents (codec, --size, --no-crop, --image-size, --fit, "
                              "--weights) is part of the cache namespace: give LatentDataset the same values and it "
                              "reads what this command wrote without encoding anything.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("source", help="folder (ImageFolder layout or flat), fsspec URL / s3:// prefix, or a CSV / "
                                  "Parquet table of (path, label[, split]) (tables: Dask path only)")
    e.add_argument("--codec", required=True, help="codec name (see `latentds codecs`) or a weights file")
    e.add_argument("--cache", required=True, type=fs_url, help="cache folder or fsspec URL")
    e.add_argument("--batch-size", type=positive_int, default=8, help="images per codec call (default: %(default)s)")
    e.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    e.add_argument("--size", type=positive_int, default=None, help="resize so the longest side is SIZE")
    e.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="fix every image to H x W after preprocessing (LatentDataset's image_size=)")
    e.add_argument("--fit", choices=["pad", "resize"], default="pad",
                   help="how --image-size is reached: pad (keeps pixels, default) or resize")
    e.add_argument("--weights", default=None, help="codec weights file or URL (codec_kwargs={'weights': ...})")
    e.add_argument("--source-id", default=None, metavar="NAME",
                   help="name this tree in every sample key instead of its resolved path, so the cache survives "
                        "moving or re-mounting it (give LatentDataset the same source_id=)")
    e.add_argument("--views", type=positive_int, default=1, metavar="K",
                   help="cache K augmented views per image (docs/views.md; LatentDataset's views=)")
    e.add_argument("--no-crop", action="store_true", help="skip the region-of-interest crop")
    e.add_argument("--storage-options", type=json_object, help="fsspec options as JSON, e.g. '{\"anon\": false}'")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    g = e.add_argument_group("bulk encoding on Dask (docs/bulk.md); any of these selects the Dask path")
    g.add_argument("--workers", type=positive_int, default=None, help="start a LocalCluster with N worker processes")
    g.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (tcp://host:8786)")
    g.add_argument("--retry-failed", action="store_true", help="encode only the files recorded as failed")
    g.add_argument("--shard-samples", type=positive_int, default=1024,
                   help="files per partition = per Dask task = per shard (default: %(default)s)")
    g.add_argument("--prefetch", type=positive_int, default=4, help="reader threads per task (default: %(default)s)")
    g.add_argument("--torch-threads", type=positive_int, default=None, help="torch intra-op threads per worker")
    e.set_defaults(func=_cmd_encode)
