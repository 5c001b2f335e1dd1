"""The ``latentds`` command line.

One error style (docs/cli.md): a user's mistake -> ``latentds: error: <what, where, how to fix>``
on stderr, exit 2; bad data found during a job -> the failure report, exit 1; a bug -> a
traceback. ``--debug`` or ``LATENTDS_DEBUG=1`` shows the traceback for any of them.

Imports are lazy: ``latentds --help`` and every sub-command's ``--help`` load no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``latentds: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"latentds: error: {self.prog}: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def _json_object(text: str) -> dict:
    """argparse type of ``--storage-options``: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at character {exc.pos}): {text!r}; "
                                         """write a JSON object, e.g. '{"anon": false}'""") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"anon\": false}}', got {text!r}")
    return value


def _url(text: str) -> str:
    """argparse type of a folder or fsspec URL: an unknown protocol (``s4://``) is a typo, said at once."""
    if "://" in text:
        import fsspec

        protocol = text.split("://", 1)[0]
        if protocol not in fsspec.available_protocols():
            raise argparse.ArgumentTypeError(
                f"unknown storage protocol {protocol!r} in {text!r}; use a local folder or an fsspec URL such as "
                "s3://bucket/prefix, gs://..., az://..., memory://...")
    return text


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value

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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import TASK_LINE, format_table, run_demo

    t0 = time.perf_counter()
    rows = run_demo(args.workdir, n_per_class=args.n_per_class, shape=(args.height, args.width), epochs=args.epochs,
                    seed=args.seed, codecs=tuple(args.codec) if args.codec else None)
    print()
    print(TASK_LINE)
    print(format_table(rows))
    from .demo_figure import finding_crop_figure

    methods = [r.method for r in rows if getattr(r, "f", 1) != 1]
    picture = finding_crop_figure(methods, os.path.join(args.workdir, "demo-crops.png"),
                                  shape=(args.height, args.width))
    print(f"\npicture: {picture} (a crop around one finding: original beside each codec's reconstruction)")
    print(f"total {time.perf_counter() - t0:.0f} s; data and cache under {args.workdir}/")
    return 0


def _source_kind(source: str) -> str:
    """'table', 'imagefolder', 'flat' or 'remote'; a local source that does not exist is a user error."""
    from .discovery import LAYOUT_HINT, is_remote
    from .errors import SourceError

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


def _cmd_encode(args: argparse.Namespace) -> int:
    storage = args.storage_options
    image_size = tuple(args.image_size) if args.image_size else None
    kind = _source_kind(args.source)
    # Flat folders and tables have no ImageFolder classes: they always take the bulk path (one
    # local worker unless --workers says otherwise), so both paths accept the same sources.
    if args.workers or args.scheduler or args.retry_failed or kind in ("table", "flat"):
        from .bulk import encode, format_report

        codec_kwargs = {"weights": args.weights} if args.weights else None
        report = encode(args.source, args.codec, args.cache, scheduler=args.scheduler, n_workers=args.workers or 1,
                        device=args.device, batch_size=args.batch_size, shard_samples=args.shard_samples,
                        prefetch=args.prefetch, torch_threads=args.torch_threads, storage_options=storage,
                        codec_kwargs=codec_kwargs, crop_roi=not args.no_crop, size=args.size,
                        image_size=image_size, fit=args.fit, retry_failed=args.retry_failed,
                        source_id=args.source_id, progress=not args.quiet)
        text = format_report(report)
        head, _, rest = text.partition("\n")
        print(head)
        if rest:
            print(rest, file=sys.stderr)
        return 1 if report.failures else 0

    from .dataset import LatentDataset

    codec_kwargs = {"weights": args.weights} if args.weights else None
    ds = LatentDataset(args.source, codec=args.codec, cache=args.cache, storage_options=storage,
                       crop_roi=not args.no_crop, size=args.size, image_size=image_size, fit=args.fit,
                       device=args.device, codec_kwargs=codec_kwargs, source_id=args.source_id)
    print(f"{len(ds)} images in {len(ds.classes)} classes -> {ds.cache.location.url} (namespace {ds.namespace})")
    report = ds.fill(batch_size=args.batch_size, progress=not args.quiet)
    print(f"encoded {report.encoded}, already cached {report.cached}, failed {len(report.failures)}")
    for f in report.failures:
        print(f"  FAILED {f.path}: {f.error_type}: {f.message}", file=sys.stderr)
    return 1 if report.failures else 0


def _storage(args: argparse.Namespace) -> dict | None:
    return getattr(args, "storage_options", None) or None


def _stores(args: argparse.Namespace) -> list:
    """One ShardedStore per namespace under CACHE (or only --namespace)."""
    from .cache import LatentCache, list_namespaces
    from .store import ShardedStore

    storage = _storage(args)
    names = list_namespaces(args.cache, storage)
    if getattr(args, "namespace", None):
        names = [n for n in names if n == args.namespace]
    return [ShardedStore(LatentCache(args.cache, ns, storage_options=storage)) for ns in names]


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .ops import describe

    stores = _stores(args)
    if not stores:
        print(f"{args.cache}: no latentds namespaces")
        return 1
    for store in stores:
        cache = store.cache
        info, d = cache.read_info(), describe(store)
        stats = d["staging"]
        print(f"namespace {cache.namespace}")
        print(f"  codec        {info.get('codec')}  (f={info.get('f')}, C={info.get('latent_channels')})")
        print(f"  fingerprint  {info.get('codec_fingerprint')}")
        print(f"  preprocess   {json.dumps(info.get('preprocessing'), sort_keys=True)}")
        print(f"  samples      {stats['samples']}  ({stats['bytes']:,} bytes)  [staging objects]")
        m = d["manifest"]
        if m is None:
            print("  manifest     none committed (run `latentds compact`)")
        elif "error" in m:
            print(f"  manifest     ERROR {m['error']}")
        else:
            print(f"  manifest     {m['generation']}: {m['rows']} samples in {m['shards']} shards "
                  f"({m['bytes']:,} bytes manifest)")
            st = m.get("stats") or {}
            if st.get("mean"):
                fmt = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v) + "]"  # noqa: E731
                print(f"  latent stats C={st['channels']} mean={fmt(st['mean'])} std={fmt(st['std'])}")
        print(f"  shards       {d['shard_files']} files ({d['shard_bytes']:,} bytes)")
        print(f"  failures     {d['failures']}")
        if d.get("bulk_partitions"):
            print(f"  bulk         {d['bulk_partitions']} partition records (`latentds encode` skips these on a re-run)")
        if stats["temp_leftovers"]:
            print(f"  temp files   {stats['temp_leftovers']} (left by interrupted writers; never read; `latentds gc`)")
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    stores = _stores(args)
    if not stores:
        print(f"{args.cache}: no latentds namespaces")
        return 1
    bad = 0
    for store in stores:
        r = store.compact(shard_bytes=int(args.shard_mb * (1 << 20)), shard_samples=args.shard_samples)
        print(f"namespace {store.cache.namespace}: packed {r.packed} samples into {len(r.shards)} shards, "
              f"{r.already_committed} already committed; generation {r.generation}")
        bad += _print_bad(r.bad)
    return 1 if bad else 0


def _print_bad(bad: list[tuple[str, str]]) -> int:
    """List bad objects by name (compact and verify share this); returns how many."""
    for name, why in bad:
        print(f"  BAD {name}: {why}")
    return len(bad)


def _cmd_verify(args: argparse.Namespace) -> int:
    from .ops import verify

    stores = _stores(args)
    if not stores:
        print(f"{args.cache}: no latentds namespaces")
        return 1
    bad = 0
    for store in stores:
        r = verify(store, staging=not args.shards_only)
        print(f"namespace {store.cache.namespace}: {r.samples} committed samples in {r.shards} shards, "
              f"{r.staging} staging objects, {r.partitions} bulk partition records checked; {len(r.bad)} problems")
        bad += _print_bad(r.bad)
        if r.failures:  # files a bulk job could not encode: not damage, but outstanding work
            print(f"  {len(r.failures)} failure records (files a bulk job could not encode; `latentds encode "
                  f"... --retry-failed` retries them):")
            for name, etype, reason in r.failures:
                print(f"  FAILED {name}: {etype}: {reason}")
    rc = _cmd_repair(args) if args.repair else (1 if bad else 0)  # after a repair, what it left decides
    if args.sources:
        rc = max(rc, 1 if _verify_sources(args) else 0)
    return rc


def _sources_dataset(args: argparse.Namespace, what: str) -> Any:
    """The LatentDataset over ``--sources`` (with the preprocessing options the cache was filled with)."""
    from .dataset import LatentDataset
    from .errors import ConfigError

    if not args.codec:
        raise ConfigError(f"{what} --sources needs --codec NAME (and the --image-size/--fit/--size/--no-crop the "
                          "cache was filled with) to find the namespace of those sources")
    return LatentDataset(args.sources, codec=args.codec, cache=args.cache, storage_options=_storage(args),
                         crop_roi=not args.no_crop, size=args.size,
                         image_size=tuple(args.image_size) if args.image_size else None, fit=args.fit)


def _cmd_repair(args: argparse.Namespace) -> int:
    """``repair`` / ``verify --repair``: drop (or re-encode) exactly the bad committed rows."""
    from .ops import repair

    stores = _stores(args)
    if not stores:
        print(f"{args.cache}: no latentds namespaces")
        return 1
    ds = _sources_dataset(args, "repair") if args.sources else None
    left = 0
    for store in stores:
        r = repair(store, reencode_from=ds)
        ns = store.cache.namespace
        if r.pointer_recovered:
            print(f"namespace {ns}: {store.manifests.pointer_path} was unreadable; re-pointed at the newest "
                  f"readable generation")
        print(f"namespace {ns}: {r.checked} committed samples checked; {len(r.dropped)} bad rows dropped"
              + (f", generation {r.generation}" if r.dropped else ""))
        for key, why in r.dropped:
            how = ("re-encoded from the sources" if key in r.reencoded else "re-packed from its staging copy"
                   if key in r.restored else "a miss again: the next dataset[i] or fill() re-encodes it")
            print(f"  DROPPED {key}: {how} ({why})")
        for name, why in r.staging_removed:
            print(f"  REMOVED {name}: {why}")
        if r.packed_generation and (r.reencoded or r.restored):
            print(f"  {len(r.reencoded) + len(r.restored)} samples committed again in generation {r.packed_generation}")
        for name, why in r.remaining:
            print(f"  LEFT {name}: {why}")
        left += len(r.remaining)
    return 1 if left else 0


def _verify_sources(args: argparse.Namespace) -> int:
    """``verify --sources SRC``: re-read every source and compare it with the content hash stored
    at encode time (a file changed under the same size and mtime keeps its key and is served stale)."""
    from .ops import verify_sources

    ds = _sources_dataset(args, "verify")
    r = verify_sources(ds)
    print(f"sources {args.sources}: {r.checked} cached samples re-read, {r.not_cached} not cached; "
          f"{len(r.stale)} stale")
    for _path, why in r.stale:
        print(f"  STALE {why}")
    return len(r.stale)


def _cmd_gc(args: argparse.Namespace) -> int:
    from .ops import gc

    for store in _stores(args):
        r = gc(store, grace_s=args.grace_hours * 3600.0, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        print(f"namespace {store.cache.namespace}: {verb} {len(r.removed)} objects ({r.bytes_freed:,} bytes); "
              f"{r.kept_young} younger than the grace period kept")
        if r.in_flight_grace_s > args.grace_hours * 3600.0:  # the floor that protects running writers
            print(f"  temp files, uncommitted shards and superseded generations kept for at least "
                  f"{r.in_flight_grace_s:.0f} s (the minimum grace; LATENTDS_GC_MIN_GRACE_S changes it)")
        for p in r.removed:
            print(f"  {p}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_webdataset, export_zarr

    from .errors import CacheError

    stores = _stores(args)
    if len(stores) != 1:
        if not stores:
            raise CacheError(f"{args.cache}: no latentds namespace" + (f" named {args.namespace!r}" if args.namespace
                             else "") + " (`latentds inspect CACHE` lists what is there)")
        names = ", ".join(st.cache.namespace for st in stores)
        raise CacheError(f"{args.cache}: {len(stores)} namespaces ({names}); choose one with --namespace NAME "
                         "(`latentds inspect CACHE` shows the codec and preprocessing of each)")
    fn = export_webdataset if args.format == "webdataset" else export_zarr
    dest_opts = args.dest_storage_options if args.dest_storage_options else _storage(args)
    r = fn(stores[0], args.dest, dest_opts)
    print(f"exported {r.samples} samples as {args.format} to {r.destination}")
    return 0


def _cmd_codecs(args: argparse.Namespace) -> int:
    from .codecs import create_codec, list_codecs
    from .codecs.kl import shipped_kl_defaults
    from .errors import CodecError

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


def _cmd_train_probe(args: argparse.Namespace) -> int:
    from latentds.train.probe.run import main as probe_main

    argv = [x for c in args.config for x in ("--config", c)] + list(args.overrides)
    return probe_main(argv + (["--print-config"] if args.print_config else []))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_cli

    return run_cli(args)


def _source_options(q: argparse.ArgumentParser) -> None:
    """The options that name the namespace of ``--sources`` (as given to encode)."""
    q.add_argument("--codec", default=None, help="with --sources: the codec the cache was filled with")
    q.add_argument("--size", type=_positive_int, default=None, help="with --sources: as given to encode")
    q.add_argument("--no-crop", action="store_true", help="with --sources: as given to encode")
    q.add_argument("--image-size", type=_positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="with --sources: as given to encode")
    q.add_argument("--fit", choices=["pad", "resize"], default="pad", help="with --sources: as given to encode")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="latentds",
        description="Serve cached autoencoder latents of DICOM/PNG folders to training code.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback for any error (same as LATENTDS_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run the end-to-end demo on synthetic data (offline, CPU, minutes)",
                       description="Generate a SYNTHETIC DICOM dataset, encode it with each codec, train a small CNN "
                                   "on latents and on full-size images, and print AUROC, GFLOPs, time and bytes. "
                                   "Writes demo-crops.png: a crop around a finding, original beside each codec's "
                                   "reconstruction.",
                       epilog="examples:\n  latentds demo\n  latentds demo --n-per-class 32 --epochs 10   "
                              "# a quicker, noisier run\n  latentds demo --codec bicubic-f4 --codec s2d-f4c16",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--workdir", default="latentds-demo", help="where data and cache go (default: %(default)s)")
    d.add_argument("--n-per-class", type=_positive_int, default=96, help="images per class (default: %(default)s)")
    d.add_argument("--height", type=_positive_int, default=192, help="image height (default: %(default)s)")
    d.add_argument("--width", type=_positive_int, default=160, help="image width (default: %(default)s)")
    d.add_argument("--epochs", type=_positive_int, default=40, help="training epochs per row (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--codec", action="append", help="codec to compare (repeatable; default: bicubic-f4, bicubic-f8 "
                                                     "and the shipped KL codecs)")
    d.set_defaults(func=_cmd_demo)

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
    e.add_argument("--cache", required=True, type=_url, help="cache folder or fsspec URL")
    e.add_argument("--batch-size", type=_positive_int, default=8, help="images per codec call (default: %(default)s)")
    e.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    e.add_argument("--size", type=_positive_int, default=None, help="resize so the longest side is SIZE")
    e.add_argument("--image-size", type=_positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="fix every image to H x W after preprocessing (LatentDataset's image_size=)")
    e.add_argument("--fit", choices=["pad", "resize"], default="pad",
                   help="how --image-size is reached: pad (keeps pixels, default) or resize")
    e.add_argument("--weights", default=None, help="codec weights file or URL (codec_kwargs={'weights': ...})")
    e.add_argument("--source-id", default=None, metavar="NAME",
                   help="name this tree in every sample key instead of its resolved path, so the cache survives "
                        "moving or re-mounting it (give LatentDataset the same source_id=)")
    e.add_argument("--no-crop", action="store_true", help="skip the region-of-interest crop")
    e.add_argument("--storage-options", type=_json_object, help="fsspec options as JSON, e.g. '{\"anon\": false}'")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    g = e.add_argument_group("bulk encoding on Dask (docs/bulk.md); any of these selects the Dask path")
    g.add_argument("--workers", type=_positive_int, default=None, help="start a LocalCluster with N worker processes")
    g.add_argument("--scheduler", default=None, help="address of an existing Dask scheduler (tcp://host:8786)")
    g.add_argument("--retry-failed", action="store_true", help="encode only the files recorded as failed")
    g.add_argument("--shard-samples", type=_positive_int, default=1024,
                   help="files per partition = per Dask task = per shard (default: %(default)s)")
    g.add_argument("--prefetch", type=_positive_int, default=4, help="reader threads per task (default: %(default)s)")
    g.add_argument("--torch-threads", type=_positive_int, default=None, help="torch intra-op threads per worker")
    e.set_defaults(func=_cmd_encode)

    i = sub.add_parser("inspect", help="describe a cache: codec, preprocessing, counts, bytes",
                       description="Print each namespace in CACHE: codec, fingerprint, preprocessing, counts, bytes.",
                       epilog="examples:\n  latentds inspect /data/latents\n  latentds inspect s3://bucket/latents "
                              "--storage-options '{\"profile\": \"lab\"}'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("cache", type=_url, help="cache folder or fsspec URL")
    i.add_argument("--storage-options", type=_json_object, help="fsspec options as JSON")
    i.add_argument("--namespace", help="only this namespace (default: all)")
    i.set_defaults(func=_cmd_inspect)

    def store_cmd(name: str, help_: str, func: Any, example: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_, description=help_, epilog=f"examples:\n{example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("cache", type=_url, help="cache folder or fsspec URL (s3://bucket/prefix, ...)")
        q.add_argument("--storage-options", type=_json_object,
                       help="fsspec options as JSON (credentials are never printed)")
        q.add_argument("--namespace", help="only this namespace (default: all)")
        q.set_defaults(func=func)
        return q

    q = store_cmd("compact", "pack staging objects into immutable shards and commit a new manifest generation "
                  "(safe while others read and write; safe to repeat or interrupt)", _cmd_compact,
                  "  latentds compact /data/latents\n  latentds compact s3://bucket/latents --shard-mb 128")
    q.add_argument("--shard-mb", type=float, default=64.0, help="target shard size in MiB (default: %(default)s)")
    q.add_argument("--shard-samples", type=int, default=4096, help="max samples per shard (default: %(default)s)")
    q = store_cmd("verify", "recompute every checksum (shards, manifest, staging objects); lists bad objects "
                  "by name and exits 1 if any", _cmd_verify,
                  "  latentds verify /data/latents\n  latentds verify s3://bucket/latents --shards-only\n"
                  "  latentds verify /data/latents --sources /data/cmmd --codec bicubic-f8   # stale sources too\n"
                  "  latentds verify /data/latents --repair                  # then drop the bad rows (= repair)")
    q.add_argument("--shards-only", action="store_true", help="skip the staging objects")
    q.add_argument("--repair", action="store_true",
                   help="then repair: what `latentds repair` does (with --sources: re-encode the bad rows)")
    q.add_argument("--sources", default=None, metavar="SRC",
                   help="also re-read the source tree SRC and compare each file with the content hash stored at "
                        "encode time (finds files changed under the same size and mtime); needs --codec")
    _source_options(q)
    q = store_cmd("repair", "drop exactly the committed rows whose bytes fail verification (missing, truncated or "
                  "corrupt shard, checksum mismatch, another sample's tar member) and commit a new manifest "
                  "generation without them; with --sources, encode them again and commit them. Also removes "
                  "corrupt staging objects and re-points an unreadable CURRENT.json. Exit 1 if damage is left "
                  "that repair does not fix (listed as LEFT)", _cmd_repair,
                  "  latentds repair /data/latents                       # dropped rows re-encode on next access\n"
                  "  latentds repair s3://bucket/latents --sources /data/cmmd --codec bicubic-f8   # re-encode now")
    q.add_argument("--sources", default=None, metavar="SRC",
                   help="re-encode the dropped samples from the source tree SRC now (needs --codec)")
    _source_options(q)
    q = store_cmd("gc", "remove temp files, orphan shards, superseded manifests and staging objects already "
                  "committed, once older than the grace period", _cmd_gc,
                  "  latentds gc /data/latents --dry-run\n  latentds gc s3://bucket/latents --grace-hours 48")
    q.add_argument("--grace-hours", type=float, default=24.0, help="minimum age to remove (default: %(default)s)")
    q.add_argument("--dry-run", action="store_true", help="list what would be removed")
    q = store_cmd("export", "export committed latents as webdataset shards (+ shardlist.json) or a zarr array; "
                  "class names travel with them", _cmd_export,
                  "  latentds export /data/latents /data/wds                       # webdataset (default)\n"
                  "  latentds export /data/latents /data/lat.zarr --format zarr\n"
                  "  latentds export s3://b/latents s3://b/wds --namespace 3f2a...  # several namespaces: pick one")
    q.add_argument("dest", help="destination folder or fsspec URL")
    q.add_argument("--format", choices=["webdataset", "zarr"], default="webdataset")
    q.add_argument("--dest-storage-options", type=_json_object,
                   help="fsspec options for DEST as JSON (default: --storage-options)")

    tp = sub.add_parser("train-probe", help="train an HRNet / linear probe on latents (latentds.train.probe)",
                        description="Train a timm backbone (default hrnet_w64) or a linear probe on a LatentDataset "
                                    "and report AUROC with a bootstrap CI. Same as python -m latentds.train.probe.",
                        epilog="examples:\n  latentds train-probe --config probe.yaml\n"
                               "  latentds train-probe --config probe.yaml model.mode=linear optim.epochs=10\n"
                               "  latentds train-probe --config probe.yaml --print-config\n\n"
                               "Needs the train extra: pip install 'latentds[train]'. See docs/probe.md.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tp.add_argument("--config", action="append", default=[], type=_existing_file,
                    help="YAML config (repeatable; later files win)")
    tp.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.codec=bicubic-f4")
    tp.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    tp.set_defaults(func=_cmd_train_probe)

    from .sweep import add_arguments as _sweep_arguments
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
    c = sub.add_parser("codecs", help="list the registered codecs (-v: f, C and where their weights come from)",
                       description="List the registered codecs, one per line (-v: f, C and where weights come from).",
                       epilog="examples:\n  latentds codecs\n  latentds codecs -v",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("-v", "--verbose", action="store_true",
                   help="also show f, C and whether weights are available locally (loads each codec)")
    c.set_defaults(func=_cmd_codecs)
    return p


def _check_config_args(argv: list[str], command: str) -> None:
    """A missing ``-c/--config FILE`` of ``train-vae`` is a user error, said in one line."""
    from .errors import ConfigError

    for flag, value in zip(argv, argv[1:]):
        if flag in ("-c", "--config") and not Path(value).is_file():
            raise ConfigError(f"{command}: no such config file: {value!r} (the YAML files under "
                              "latentds/train/vae/configs/ are examples; `latentds train-vae print-config` shows every key)")


_CURRENT: dict[str, Any] = {}


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "train-vae":  # the trainer parses its own YAML + --set overrides
        _check_config_args(argv[1:], "train-vae")
        from latentds.train.vae.cli import main as train_vae

        return int(train_vae(argv[1:]))
    if argv and argv[0] == "review":  # `latentds review` has its own sub-commands (latentds/review/)
        from .review.cli import main as review

        return int(review(argv[1:]))
    args = build_parser().parse_args(argv)
    _CURRENT["storage_options"] = _storage(args)  # so an error message can redact their secrets
    return int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``latentds``; returns the exit code (0 ok, 1 bad data in a job, 2 user error)."""
    from .errors import LatentdsError, missing_extra

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("LATENTDS_DEBUG", "") not in ("", "0") or "--debug" in argv[:1]
    if argv[:1] == ["--debug"]:
        argv = argv[1:]
    try:
        return _run(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("latentds: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        err = missing_extra(exc, f"`latentds {argv[0]}`" if argv else None)
        if debug or not isinstance(err, LatentdsError):
            raise  # a module that no extra provides: a packaging bug, keep the traceback
        print(f"latentds: error: {err}", file=sys.stderr)
        return 2
    except LatentdsError as exc:
        if debug:
            raise
        from .storage import redact

        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"latentds: error: {redact(message, _CURRENT.get('storage_options'))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
