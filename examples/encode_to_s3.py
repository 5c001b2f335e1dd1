"""Encode a folder of DICOM/PNG images into a latent cache on S3 (or MinIO, Ceph, R2), then
pack it into shards and read it back as a training dataset.

    python examples/encode_to_s3.py /data/cmmd s3://my-bucket/latents \\
        --endpoint-url http://minio:9000 --codec bicubic-f8 --size 1024

Credentials: --key/--secret, or the usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment
variables (never printed). Nothing touches the network until main() runs.
"""

from __future__ import annotations

import argparse
import os
import sys


def storage_options(endpoint_url: str | None, key: str | None, secret: str | None) -> dict:
    """fsspec/s3fs options: a custom endpoint (MinIO etc.) plus optional explicit credentials."""
    opts: dict = {}
    if endpoint_url:
        opts["endpoint_url"] = endpoint_url  # s3fs passes it on to botocore
    if key and secret:
        opts["key"], opts["secret"] = key, secret
    return opts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="local folder or s3:// prefix in ImageFolder layout (one sub-folder per class)")
    p.add_argument("cache", help="cache URL, e.g. s3://bucket/latents")
    p.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL_S3"),
                   help="S3-compatible endpoint, e.g. http://minio:9000 (default: $AWS_ENDPOINT_URL_S3)")
    p.add_argument("--key", default=os.environ.get("AWS_ACCESS_KEY_ID"))
    p.add_argument("--secret", default=os.environ.get("AWS_SECRET_ACCESS_KEY"))
    p.add_argument("--codec", default="bicubic-f8", help="codec name (latentds codecs) or weights file")
    p.add_argument("--size", type=int, default=None, help="resize so the longest side is SIZE")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from latentds import LatentDataset  # imported here: nothing heavy (or networked) at import time

    opts = storage_options(args.endpoint_url, args.key, args.secret)
    remote_source = args.source.startswith(("s3://", "gs://", "az://"))
    ds = LatentDataset(args.source, codec=args.codec, cache=args.cache, size=args.size, device=args.device,
                       storage_options=opts if remote_source else None, cache_storage_options=opts)
    print(f"{len(ds)} images, classes {ds.classes} -> {args.cache} (namespace {ds.namespace})")
    report = ds.fill(batch_size=args.batch_size)       # or latentds encode ... --workers N (Dask)
    print(f"encoded {report.encoded}, already cached {report.cached}, failed {len(report.failures)}")
    for f in report.failures:
        print(f"  FAILED {f.path}: {f.error_type}: {f.message}", file=sys.stderr)
    compacted = ds.compact()                            # immutable shards + a new manifest generation
    print(f"compacted: {compacted}")
    latent, target = ds[0]                              # a warm read: one ranged GET
    print(f"dataset[0]: latent {tuple(latent.shape)} {latent.dtype}, target {target}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
