"""The ``latentds`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time

EPILOG = textwrap.dedent(
    """\
    examples:
      latentds demo                                   # synthetic data, offline, a few minutes on a CPU
      latentds encode /data/cmmd --codec bicubic-f8 --cache /data/latents
      latentds inspect /data/latents
      latentds codecs                                 # what can be used as --codec

    In Python, swap torchvision's ImageFolder for LatentDataset:
      ds = latentds.LatentDataset("/data/cmmd", codec="kl-f8c4", cache="/data/latents")
    """
)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    t0 = time.perf_counter()
    rows = run_demo(args.workdir, n_per_class=args.n_per_class, shape=(args.height, args.width), epochs=args.epochs,
                    seed=args.seed, codecs=tuple(args.codec) if args.codec else None)
    print()
    print("SYNTHETIC fine-grained task (calcification clusters of 1-3 px); small CNN; test half of the data.")
    print(format_table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; data and cache under {args.workdir}/")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from .dataset import LatentDataset

    storage = json.loads(args.storage_options) if args.storage_options else None
    ds = LatentDataset(args.source, codec=args.codec, cache=args.cache, storage_options=storage,
                       crop_roi=not args.no_crop, size=args.size, device=args.device)
    print(f"{len(ds)} images in {len(ds.classes)} classes -> {ds.cache.location.url}")
    report = ds.fill(batch_size=args.batch_size, progress=not args.quiet)
    print(f"encoded {report.encoded}, already cached {report.cached}, failed {len(report.failures)}")
    for f in report.failures:
        print(f"  FAILED {f.path}: {f.error_type}: {f.message}", file=sys.stderr)
    return 1 if report.failures else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .cache import LatentCache, list_namespaces

    storage = json.loads(args.storage_options) if args.storage_options else None
    namespaces = list_namespaces(args.cache, storage)
    if not namespaces:
        print(f"{args.cache}: no latentds namespaces")
        return 1
    for ns in namespaces:
        cache = LatentCache(args.cache, ns, storage_options=storage)
        info, stats = cache.read_info(), cache.stats()
        print(f"namespace {ns}")
        print(f"  codec        {info.get('codec')}  (f={info.get('f')}, C={info.get('latent_channels')})")
        print(f"  fingerprint  {info.get('codec_fingerprint')}")
        print(f"  preprocess   {json.dumps(info.get('preprocessing'), sort_keys=True)}")
        print(f"  samples      {stats['samples']}  ({stats['bytes']:,} bytes)")
        if stats["temp_leftovers"]:
            print(f"  temp files   {stats['temp_leftovers']} (left by interrupted writers; never read)")
    return 0


def _cmd_codecs(args: argparse.Namespace) -> int:
    from .codecs import list_codecs

    print("\n".join(list_codecs()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="latentds",
        description="Serve cached autoencoder latents of DICOM/PNG folders to training code.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the end-to-end demo on synthetic data (offline, CPU, minutes)",
                       description="Generate a SYNTHETIC DICOM dataset, encode it with each codec, train a small CNN "
                                   "on latents and on full-size images, and print AUROC, GFLOPs, time and bytes.")
    d.add_argument("--workdir", default="latentds-demo", help="where data and cache go (default: %(default)s)")
    d.add_argument("--n-per-class", type=int, default=96, help="images per class (default: %(default)s)")
    d.add_argument("--height", type=int, default=192, help="image height (default: %(default)s)")
    d.add_argument("--width", type=int, default=160, help="image width (default: %(default)s)")
    d.add_argument("--epochs", type=int, default=40, help="training epochs per row (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--codec", action="append", help="codec to compare (repeatable; default: bicubic-f4, bicubic-f8 "
                                                     "and the shipped KL codecs)")
    d.set_defaults(func=_cmd_demo)

    e = sub.add_parser("encode", help="encode every image of a folder into the cache",
                       description="Encode every image under SOURCE (ImageFolder layout) with CODEC and store the "
                                   "latents in CACHE. Already cached images are skipped; files that fail are listed "
                                   "and the exit code is 1.")
    e.add_argument("source", help="folder or fsspec URL, one sub-folder per class")
    e.add_argument("--codec", required=True, help="codec name (see `latentds codecs`) or a weights file")
    e.add_argument("--cache", required=True, help="cache folder or fsspec URL")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    e.add_argument("--size", type=int, default=None, help="resize so the longest side is SIZE")
    e.add_argument("--no-crop", action="store_true", help="skip the region-of-interest crop")
    e.add_argument("--storage-options", help="fsspec options as JSON, e.g. '{\"anon\": false}'")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_cmd_encode)

    i = sub.add_parser("inspect", help="describe a cache: codec, preprocessing, counts, bytes",
                       description="Print each namespace in CACHE: codec, fingerprint, preprocessing, counts, bytes.")
    i.add_argument("cache")
    i.add_argument("--storage-options", help="fsspec options as JSON")
    i.set_defaults(func=_cmd_inspect)

    c = sub.add_parser("codecs", help="list the registered codecs")
    c.set_defaults(func=_cmd_codecs)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import LatentdsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LatentdsError as exc:
        print(f"latentds: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
