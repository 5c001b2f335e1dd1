"""A remote source's identity is the same whether it came from a listing or from a HEAD.

Bulk encoding lists the source tree (one listing with details); ``LatentDataset`` asks for one
file's info (a HEAD, now that no location keeps fsspec's listings cache). Both must give the same
identity, hence the same key, or a cache filled by one is re-encoded by the other (docs/design.md
invariant 5). Run on the S3 server on 127.0.0.1, directly and through the loopback proxy (whose
HEAD answers said size 0 until it forwarded the object's own Content-Length), with keys pinned to
the formula caches were always keyed by (zero re-encodes of an existing cache).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest

from latentds.sample.source import etag, identity, root_identity, stamp
from latentds.sources import list_sources
from latentds.store.entries import sample_key
from latentds.store.fsio import Location

FILES = {"benign/a.dcm": b"first file", "benign/b.dcm": b"x" * 4097, "malignant/c.dcm": b""}


@pytest.fixture(params=["proxy", "direct"])
def tree(request: pytest.FixtureRequest, s3_env: Any) -> tuple[str, dict[str, Any]]:
    """A small ImageFolder tree on S3, and the options that reach it (through the proxy or not)."""
    import s3fs

    bucket = s3_env.new_bucket()
    opts = s3_env.options() if request.param == "proxy" else {**s3_env.options(),
                                                               "client_kwargs": {"endpoint_url": s3_env.moto.endpoint,
                                                                                 "region_name": "us-east-1"}}
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    for rel, data in FILES.items():
        fs.pipe_file(f"{bucket}/src/{rel}", data)
    return f"s3://{bucket}/src", opts


def _pinned(root_id: str, rel: str) -> str:
    """The key caches were written under: a single PUT's ETag is the quoted MD5 of the bytes."""
    data = FILES[rel]
    return sample_key({"etag": f'"{hashlib.md5(data).hexdigest()}"', "path": rel, "root": root_id, "size": len(data)})


def test_listing_and_head_give_one_identity(tree: tuple[str, dict[str, Any]]) -> None:
    src, opts = tree
    loc = Location(src, opts)
    root_id = root_identity(src, opts)
    listed = {p.rsplit("/src/", 1)[1]: i for p, i in loc.fs.find(loc.path, detail=True).items()}
    assert sorted(listed) == sorted(FILES)
    for rel in FILES:
        url = f"{src}/{rel}"
        from_listing = identity(url, rel, root_id, info=listed[rel])
        from_head = identity(url, rel, root_id, loc=loc)  # no info: one HEAD
        assert from_listing == from_head, rel
        assert sample_key(from_head) == _pinned(root_id, rel)


def test_bulk_listing_keys_equal_lazy_keys(tree: tuple[str, dict[str, Any]]) -> None:
    """The two real callers: ``list_sources`` (bulk; listing info) and a per-file identity as
    ``LatentDataset`` makes it (HEAD info), over the same tree."""
    src, opts = tree
    listed = list_sources(src, storage_options=opts)
    assert [it.rel for it in listed.items] == sorted(FILES)
    loc = Location(src, opts)
    root_id = root_identity(src, opts)
    for it in listed.items:
        assert dict(it.identity) == identity(it.url, it.rel, root_id, loc=loc)
        assert it.key == _pinned(root_id, it.rel)


def test_stamp_reads_either_shape() -> None:
    head = {"ETag": '"abc"', "size": 7, "LastModified": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)}
    listing = {"Key": "b/k", "ETag": '"abc"', "Size": 7, "size": 7, "type": "file"}
    assert stamp(head) == stamp(listing) == {"etag": '"abc"', "size": 7}
    assert stamp({"etag": "v1", "ContentLength": 3}) == {"etag": "v1", "size": 3}


def test_a_time_tag_is_one_instant_in_one_spelling() -> None:
    """A store without ETags is keyed by its modification time: a listing (local time) and a
    HEAD (UTC) of the same object give one string, the one a UTC machine always wrote."""
    utc = dt.datetime(2026, 11, 28, 1, 45, 30, tzinfo=dt.timezone.utc)
    elsewhere = utc.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    assert etag({"LastModified": elsewhere}) == etag({"LastModified": utc}) == str(utc)
    assert etag({"created": 1700000000.5}) == "1700000000.5"  # memory://: unchanged
