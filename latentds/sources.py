"""Sources for bulk encoding: a folder (ImageFolder layout or flat), an ``s3://`` (any fsspec)
prefix, or a CSV / Parquet table of ``(path, label[, split])``.

:func:`list_sources` returns the samples sorted by relative path, each with the *source
identity* that keys it in the cache (relative path, size, mtime_ns locally or ETag on object
stores) exactly as :class:`latentds.LatentDataset` computes it, so a cache filled in bulk is
read by a ``LatentDataset`` over the same ImageFolder tree without any encoding.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from . import discovery
from .sample.source import identity, legacy_key, read_local, relative_path, relpath_hash, root_identity
from .store.entries import sample_key
from .store.fsio import Location

__all__ = ["SourceItem", "SourceList", "legacy_key", "list_sources", "read_local", "root_identity"]

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class SourceItem:
    """One source sample: where to read it, its relative path, target and identity."""

    url: str                  # local absolute path or fsspec URL
    rel: str                  # relative path (to the folder, or as written in the table)
    target: int               # class index, -1 when the source has no labels
    identity: tuple[tuple[str, Any], ...]  # (relative path, size, mtime_ns or etag, root identity)
    split: str | None = None

    @property
    def key(self) -> str:
        return sample_key(dict(self.identity))

    @property
    def legacy_key(self) -> str:
        return legacy_key(dict(self.identity))

    @property
    def relpath_hash(self) -> str:
        return relpath_hash(self.rel)


@dataclass
class SourceList:
    items: list[SourceItem]
    classes: list[str]
    root: str
    kind: str  # "imagefolder" | "flat" | "table"


def _identity(url: str, rel: str, root: str, loc: Location | None, info: dict[str, Any] | None = None) -> tuple:
    # sorted (name, value) pairs: dict(identity) is the very identity LatentDataset keys by
    return tuple(sorted(identity(url, rel, root, loc=loc, info=info, missing_ok=True).items()))


def _identities(pairs: list[tuple[str, str, str]], loc: Location | None, infos: dict[str, dict] | None = None,
                threads: int = 16) -> list[tuple]:
    if loc is None or infos is not None:
        return [_identity(u, r, root, loc, (infos or {}).get(u)) for u, r, root in pairs]
    with ThreadPoolExecutor(threads) as ex:  # object stores: one HEAD per file, in parallel
        return list(ex.map(lambda p: _identity(p[0], p[1], p[2], loc), pairs))


def list_sources(source: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
                 extensions: Sequence[str] | None = None, split: str | None = None,
                 source_id: str | None = None) -> SourceList:
    """Discover the samples of ``source`` sorted by relative path (deterministic partitions).

    ``source_id``: the tree's identity in every key (default :func:`root_identity` of the
    folder, or of the directory a table's relative paths are relative to); give the same
    value as to ``LatentDataset(source_id=...)``."""
    src = os.fspath(source)
    so = dict(storage_options or {})
    exts = tuple(e.lower() for e in (extensions or discovery.DEFAULT_EXTENSIONS))
    if src.lower().endswith(TABLE_SUFFIXES):
        out = _from_table(src, so, split, source_id)
    else:
        out = _from_folder(src, so, exts, source_id)
    out.items.sort(key=lambda it: it.rel)
    return out


def _from_folder(src: str, so: dict[str, Any], exts: tuple[str, ...], source_id: str | None) -> SourceList:
    remote = discovery.is_remote(src)
    root_id = source_id if source_id is not None else root_identity(src, so)
    loc = Location(src, so) if remote else None
    root_local = os.path.abspath(discovery._local(src)) if not remote else None
    try:
        classes, class_to_idx = discovery.find_classes(src, so)
    except FileNotFoundError:
        classes, class_to_idx = [], {}
    pairs: list[tuple[str, str, int]] = []
    infos: dict[str, dict] | None = None
    if classes:
        kind = "imagefolder"
        samples = discovery.make_dataset(src, class_to_idx, exts, None, allow_empty=True, storage_options=so)
        for url, target in samples:
            pairs.append((url, _rel(url, src, loc, root_local), target))
    else:
        kind = "flat"
        if remote:
            assert loc is not None
            protocol = src.split("://", 1)[0]
            found = loc.fs.find(loc.path, detail=True)
            infos = {}
            for p, info in sorted(found.items()):
                url = f"{protocol}://{p}"
                if url.lower().endswith(exts):
                    infos[url] = info
                    pairs.append((url, _rel(url, src, loc, root_local), -1))
        else:
            assert root_local is not None
            if not os.path.isdir(root_local):
                raise FileNotFoundError(f"{src}: no such source folder")
            for name in sorted(os.listdir(root_local)):
                p = os.path.join(root_local, name)
                if os.path.isfile(p) and name.lower().endswith(exts):
                    pairs.append((p, name, -1))
    if remote and infos is None:
        assert loc is not None
        # one listing with details instead of a HEAD per object
        protocol = src.split("://", 1)[0]
        infos = {f"{protocol}://{p}": i for p, i in loc.fs.find(loc.path, detail=True).items()}
    ids = _identities([(u, r, root_id) for u, r, _ in pairs], loc, infos)
    items = [SourceItem(u, r, t, i) for (u, r, t), i in zip(pairs, ids)]
    return SourceList(items, classes, src, kind)


def _rel(url: str, root: str, loc: Location | None, root_local: str | None) -> str:
    return relative_path(url, root, loc)


def _from_table(src: str, so: dict[str, Any], split: str | None, source_id: str | None) -> SourceList:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    remote = discovery.is_remote(src)
    if remote:
        loc = Location(src, so)
        raw = loc.fs.cat_file(loc.path)
        base_url = src.rsplit("/", 1)[0]
    else:
        loc = None
        with open(discovery._local(src), "rb") as fh:
            raw = fh.read()
        base_url = os.path.dirname(os.path.abspath(discovery._local(src)))
    # pa.BufferReader and use_threads=False, not io.BytesIO: pq.read_table over a Python file leaves
    # clean-up work on Arrow's I/O threads that takes the GIL after it returns; a process exiting
    # right then aborts ("terminate called without an active exception", apache/arrow#33975, #34314)
    if src.lower().endswith(".csv"):
        table = pacsv.read_csv(pa.BufferReader(raw), convert_options=pacsv.ConvertOptions(
            column_types={"path": "string", "label": "string", "split": "string"}))
    else:
        table = pq.read_table(pa.BufferReader(raw), use_threads=False)
    if "path" not in table.column_names:
        raise ValueError(f"{src}: a source table needs a 'path' column (and optionally 'label', 'split'); "
                         f"found {table.column_names}")
    cols = table.to_pydict()
    paths = [str(p) for p in cols["path"]]
    labels = cols.get("label") or [None] * len(paths)
    splits = cols.get("split") or [None] * len(paths)
    str_labels = sorted({str(v) for v in labels if v is not None and str(v) != ""})
    numeric = all(s.lstrip("-").isdigit() for s in str_labels)
    classes = [] if numeric else str_labels
    class_to_idx = {c: i for i, c in enumerate(classes)}
    rows: list[tuple[str, str, int, str | None, str]] = []
    src_loc = Location(base_url, so) if remote else None
    # what each row's relative path is relative to: the table's folder for relative paths (the
    # ImageFolder root when the table sits there, so the keys equal LatentDataset's), the
    # filesystem root for absolute paths, the protocol for URLs
    base_id = source_id if source_id is not None else root_identity(base_url, so)
    for p, lab, sp in zip(paths, labels, splits):
        if split is not None and (sp is None or str(sp) != split):
            continue
        if "://" in p:
            url, rel = p, p.split("://", 1)[1]
            root_id = source_id if source_id is not None else p.split("://", 1)[0] + "://"
        elif os.path.isabs(p):
            url, rel = p, p.lstrip("/")
            root_id = source_id if source_id is not None else "/"
        else:
            url = f"{base_url}/{p}" if remote else os.path.join(base_url, p)
            rel = p.replace(os.sep, "/").lstrip("/")
            root_id = base_id
        if lab is None or str(lab) == "":
            target = -1
        else:
            target = int(str(lab)) if numeric else class_to_idx[str(lab)]
        rows.append((url, rel, target, None if sp is None else str(sp), root_id))
    item_loc = src_loc if remote or any(discovery.is_remote(r[0]) for r in rows) else None
    if item_loc is None and any(discovery.is_remote(r[0]) for r in rows):
        item_loc = Location(rows[0][0], so)
    ids = _identities([(u, r, root_id) for u, r, _, _, root_id in rows], item_loc)
    items = [SourceItem(u, r, t, i, sp) for (u, r, t, sp, _), i in zip(rows, ids)]
    return SourceList(items, classes, src, "table")
