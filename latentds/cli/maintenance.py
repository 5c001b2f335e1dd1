"""Cache maintenance: ``inspect``, ``compact``, ``verify``, ``repair``, ``gc``, ``export`` (docs/store.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import add_source_options, fs_url, json_object, open_stores, storage_options_of

__all__ = ["add_maintenance"]


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..store.ops import describe

    stores = open_stores(args)
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
    stores = open_stores(args)
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
    from ..store.ops import verify

    stores = open_stores(args)
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
    from ..dataset import LatentDataset
    from ..errors import ConfigError

    if not args.codec:
        raise ConfigError(f"{what} --sources needs --codec NAME (and the --image-size/--fit/--size/--no-crop the "
                          "cache was filled with) to find the namespace of those sources")
    return LatentDataset(args.sources, codec=args.codec, cache=args.cache, storage_options=storage_options_of(args),
                         crop_roi=not args.no_crop, size=args.size,
                         image_size=tuple(args.image_size) if args.image_size else None, fit=args.fit)


def _cmd_repair(args: argparse.Namespace) -> int:
    """``repair`` / ``verify --repair``: drop (or re-encode) exactly the bad committed rows."""
    from ..store import repair

    stores = open_stores(args)
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
    from ..store.ops import verify_sources

    ds = _sources_dataset(args, "verify")
    r = verify_sources(ds)
    print(f"sources {args.sources}: {r.checked} cached samples re-read, {r.not_cached} not cached; "
          f"{len(r.stale)} stale")
    for _path, why in r.stale:
        print(f"  STALE {why}")
    return len(r.stale)


def _cmd_gc(args: argparse.Namespace) -> int:
    from ..store import gc

    for store in open_stores(args):
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
    from ..store.export import export_webdataset, export_zarr

    from ..errors import CacheError

    stores = open_stores(args)
    if len(stores) != 1:  # none is open_stores' CacheError
        names = ", ".join(st.cache.namespace for st in stores)
        raise CacheError(f"{args.cache}: {len(stores)} namespaces ({names}); choose one with --namespace NAME "
                         "(`latentds inspect CACHE` shows the codec and preprocessing of each)")
    fn = export_webdataset if args.format == "webdataset" else export_zarr
    dest_opts = args.dest_storage_options if args.dest_storage_options else storage_options_of(args)
    r = fn(stores[0], args.dest, dest_opts)
    print(f"exported {r.samples} samples as {args.format} to {r.destination}")
    return 0


def add_maintenance(sub: Any) -> None:
    """``inspect`` and the store commands that share CACHE / --storage-options / --namespace."""
    i = sub.add_parser("inspect", help="describe a cache: codec, preprocessing, counts, bytes",
                       description="Print each namespace in CACHE: codec, fingerprint, preprocessing, counts, bytes.",
                       epilog="examples:\n  latentds inspect /data/latents\n  latentds inspect s3://bucket/latents "
                              "--storage-options '{\"profile\": \"lab\"}'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("cache", type=fs_url, help="cache folder or fsspec URL")
    i.add_argument("--storage-options", type=json_object, help="fsspec options as JSON")
    i.add_argument("--namespace", help="only this namespace (default: all)")
    i.set_defaults(func=_cmd_inspect)

    def store_cmd(name: str, help_: str, func: Any, example: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_, description=help_, epilog=f"examples:\n{example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("cache", type=fs_url, help="cache folder or fsspec URL (s3://bucket/prefix, ...)")
        q.add_argument("--storage-options", type=json_object,
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
    add_source_options(q)
    q = store_cmd("repair", "drop exactly the committed rows whose bytes fail verification (missing, truncated or "
                  "corrupt shard, checksum mismatch, another sample's tar member) and commit a new manifest "
                  "generation without them; with --sources, encode them again and commit them. Also removes "
                  "corrupt staging objects and re-points an unreadable CURRENT.json. Exit 1 if damage is left "
                  "that repair does not fix (listed as LEFT)", _cmd_repair,
                  "  latentds repair /data/latents                       # dropped rows re-encode on next access\n"
                  "  latentds repair s3://bucket/latents --sources /data/cmmd --codec bicubic-f8   # re-encode now")
    q.add_argument("--sources", default=None, metavar="SRC",
                   help="re-encode the dropped samples from the source tree SRC now (needs --codec)")
    add_source_options(q)
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
    q.add_argument("dest", type=fs_url, help="destination folder or fsspec URL")
    q.add_argument("--format", choices=["webdataset", "zarr"], default="webdataset",
                   help="webdataset tar shards + shardlist.json, or one zarr array (default: %(default)s)")
    q.add_argument("--dest-storage-options", type=json_object,
                   help="fsspec options for DEST as JSON (default: --storage-options)")
