"""Where everything lives in a namespace: the ONE module that turns names into paths.

Layout under ``<cache>/<namespace>/`` (docs/store.md)::

    info.json                       what produced the namespace
    staging/<kk>/<key>.npz          lazy-fill tier: one object per sample
    shards/shard-<sha>.tar          immutable webdataset-layout tars
    shards/shard-<sha>.index.json   per-shard byte offsets + checksums, written after the shard
    manifest/g-<time>-<id>.parquet  committed generations
    manifest/CURRENT.json           pointer to the committed generation, written LAST
    manifest/.commit.lock           local disk only: the compare-and-swap lock of the pointer
    failures/<hash>.json            sources that could not be encoded (no paths: PHI)
    bulk/<partition>.json           bulk partition records

Every name read from a store (a manifest row, a listing, a pointer, a record) is checked here
against the exact form latentds writes before it becomes a path, so no crafted name can reach
outside the cache root (docs/design.md invariant 10). Paths are relative to the namespace
root; :class:`~latentds.store.backend.Backend` joins them to its root.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ManifestError, ShardError

__all__ = ["BULK", "FAILURES", "GENERATION_NAME", "INDEX_SUFFIX", "INFO", "KEY_NAME", "LOCK", "MANIFEST", "POINTER",
    "SHARDS", "SHARD_NAME", "SHARD_PREFIX", "SHARD_SUFFIX", "STAGING", "TEMP_PREFIX", "bulk_record", "check_generation",
    "check_key", "check_shard_name", "failure_record", "generation", "generation_of", "index_of", "is_temp", "kind_of",
    "shard", "shard_of_index", "staging", "staging_key"]

INFO = "info.json"
STAGING = "staging"
SHARDS = "shards"
MANIFEST = "manifest"
FAILURES = "failures"
BULK = "bulk"
POINTER = "CURRENT.json"
LOCK = f"{MANIFEST}/.commit.lock"
#: temp files of writers (atomic writes on local disk) start with this; never listed as objects
TEMP_PREFIX = ".tmp-"

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".tar"
INDEX_SUFFIX = ".index.json"
#: The only shard names latentds writes (content hash). Names read from a manifest, a shard
#: index or a bulk record are checked against it before they become a path: a crafted
#: ``../../x`` would otherwise make ``export`` write, and reads open, outside the cache.
SHARD_NAME = re.compile(r"shard-[0-9a-f]{32}\.tar")
#: Sample keys (``latentds.store.entries.sample_key``): 40 hex digits, no separators.
KEY_NAME = re.compile(r"[0-9a-f]{40}")
#: Generation names (``latentds.store.manifest.new_generation``): sortable by time, then unique.
GENERATION_NAME = re.compile(r"g-[0-9]{20}-[0-9a-f]{8}")
#: Failure records are named by the hash of the source's relative path; partition ids by hash.
_RECORD_NAME = re.compile(r"[0-9A-Za-z_-]{1,128}")


def check_shard_name(name: Any, where: str) -> str:
    """``name`` if it is a shard name latentds writes, else :class:`ShardError` naming ``where``."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise ShardError(f"{where}: names shard {str(name)[:80]!r}, which is not a shard name "
                         f"(shard-<32 hex digits>.tar); refused, the file is corrupt or crafted (such a name could "
                         f"reach outside the cache). Restore it from a good copy or remove it with `latentds gc`")
    return name


def check_generation(name: Any, where: str) -> str:
    if not isinstance(name, str) or not GENERATION_NAME.fullmatch(name):
        raise ManifestError(f"{where}: generation {str(name)[:80]!r} is not a generation name "
                            f"(g-<20 digits>-<8 hex digits>); refused, the pointer is corrupt or crafted")
    return name


def check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not KEY_NAME.fullmatch(key):
        raise ShardError(f"{where}: {str(key)[:80]!r} is not a sample key (40 hex digits); refused")
    return key


def _check_record(name: str, where: str) -> str:
    if not _RECORD_NAME.fullmatch(name):
        raise ShardError(f"{where}: record name {name[:80]!r} is not one latentds writes; refused")
    return name


# -- names -> relative paths (every path the store uses is made here) -----------------------------

def staging(key: str) -> str:
    """The staging object of one sample (two-hex-digit fan-out keeps directories small)."""
    check_key(key, STAGING)
    return f"{STAGING}/{key[:2]}/{key}.npz"


def shard(name: str) -> str:
    """A shard (``shard-<hash>.tar``) or its index (``shard-<hash>.index.json``)."""
    if name.endswith(INDEX_SUFFIX):
        check_shard_name(name[: -len(INDEX_SUFFIX)] + SHARD_SUFFIX, SHARDS)
    else:
        check_shard_name(name, SHARDS)
    return f"{SHARDS}/{name}"


def index_of(shard_name: str) -> str:
    """The index file name of a shard name."""
    return shard_name[: -len(SHARD_SUFFIX)] + INDEX_SUFFIX


def generation(gen: str) -> str:
    check_generation(gen, MANIFEST)
    return f"{MANIFEST}/{gen}.parquet"


def failure_record(relpath_hash: str) -> str:
    return f"{FAILURES}/{_check_record(relpath_hash, FAILURES)}.json"


def bulk_record(partition: str) -> str:
    return f"{BULK}/{_check_record(partition, BULK)}.json"


# -- relative paths from listings -> names (or None when it is not such an object) ----------------

def is_temp(rel: str) -> bool:
    return rel.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)


def staging_key(rel: str) -> str | None:
    """The sample key of a listed staging object, or None (temp files, foreign names)."""
    base = rel.rsplit("/", 1)[-1]
    if not base.endswith(".npz") or base.startswith(TEMP_PREFIX):
        return None
    key = base[: -len(".npz")]
    return key if KEY_NAME.fullmatch(key) else None


def shard_of_index(base: str) -> str | None:
    """The shard a listed shard or index file belongs to, or None."""
    name = base[: -len(INDEX_SUFFIX)] + SHARD_SUFFIX if base.endswith(INDEX_SUFFIX) else base
    return name if SHARD_NAME.fullmatch(name) else None


def generation_of(base: str) -> str | None:
    if not base.endswith(".parquet"):
        return None
    gen = base[: -len(".parquet")]
    return gen if GENERATION_NAME.fullmatch(gen) else None


def kind_of(rel: str) -> str:
    """What a listed object is: ``temp``, ``staging``, ``shard``, ``generation``, ``pointer``,
    ``bulk``, ``failure``, ``info`` or ``other`` (never deleted or read as data)."""
    if is_temp(rel):
        return "temp"
    top, _, rest = rel.partition("/")
    base = rel.rsplit("/", 1)[-1]
    if top == STAGING and staging_key(rel):
        return "staging"
    if top == SHARDS and "/" not in rest and shard_of_index(base):
        return "shard"
    if top == MANIFEST and "/" not in rest:
        if base == POINTER:
            return "pointer"
        if generation_of(base):
            return "generation"
    if top in (BULK, FAILURES) and "/" not in rest and base.endswith(".json"):
        return "bulk" if top == BULK else "failure"
    if rel == INFO:
        return "info"
    return "other"
