"""Sample discovery with torchvision ``ImageFolder`` rules, on local disk or any fsspec URL.

Local roots use torchvision's own functions, so classes, order and errors are exactly
ImageFolder's. Remote roots (``s3://...``) follow the same rules through fsspec: classes are
the sorted sub-folders, files are taken in sorted order, and the same errors are raised.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes as tv_find_classes
from torchvision.datasets.folder import has_file_allowed_extension, make_dataset as tv_make_dataset

from .errors import ConfigError, SourceError
from .preprocess import DICOM_EXTENSIONS
from .store.fsio import Location, call

__all__ = ["DEFAULT_EXTENSIONS", "LAYOUT_HINT", "check_nonempty", "find_classes", "is_remote", "make_dataset"]

#: Appended to every discovery error: what layout is expected and how to fix the tree.
LAYOUT_HINT = ("Expected an ImageFolder tree: ROOT/<class>/<image>.dcm|.png|... (one sub-folder per class); "
               "a flat folder or a CSV/Parquet table of paths is accepted by `latentds encode` too.")

#: Default extensions: ImageFolder's plus DICOM's, so a tree of PNGs is discovered exactly as
#: ImageFolder discovers it and DICOM files are accepted too.
DEFAULT_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS) + tuple(DICOM_EXTENSIONS)


def is_remote(root: str | os.PathLike[str]) -> bool:
    s = os.fspath(root)
    return "://" in s and not s.startswith("file://")


def find_classes(directory: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
                 ) -> tuple[list[str], dict[str, int]]:
    if not is_remote(directory):
        try:
            return tv_find_classes(_local(directory))
        except FileNotFoundError as exc:  # torchvision's own message first, then how to fix it
            raise SourceError(f"{exc} {_missing(directory)}{LAYOUT_HINT}") from None
    loc = Location(os.fspath(directory), dict(storage_options or {}))
    # through `call`: missing credentials or a denied listing is a StoreAccessError saying what to fix
    entries = call(lambda: loc.fs.ls(loc.path, detail=True) if loc.fs.exists(loc.path) else [],
                   os.fspath(directory), storage_options=loc.storage_options)
    classes = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
    if not classes:
        raise SourceError(f"Couldn't find any class folder in {directory}. {LAYOUT_HINT}")
    return classes, {c: i for i, c in enumerate(classes)}


def make_dataset(
    directory: str | os.PathLike[str],
    class_to_idx: dict[str, int] | None = None,
    extensions: str | tuple[str, ...] | None = None,
    is_valid_file: Callable[[str], bool] | None = None,
    allow_empty: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> list[tuple[str, int]]:
    if not is_remote(directory):
        try:
            return tv_make_dataset(_local(directory), class_to_idx, extensions, is_valid_file,
                                   allow_empty=allow_empty)
        except FileNotFoundError as exc:
            raise SourceError(f"{exc} (in {directory}) Add images to those class folders, remove the "
                              "empty folders, or pass allow_empty=True.") from None
    if class_to_idx is None:
        _, class_to_idx = find_classes(directory, storage_options)
    elif not class_to_idx:
        raise ConfigError("'class_to_index' must have at least one entry to collect any samples.")
    both_none = extensions is None and is_valid_file is None
    both_something = extensions is not None and is_valid_file is not None
    if both_none or both_something:
        raise ConfigError("Both extensions and is_valid_file cannot be None or not None at the same time")
    if extensions is not None:
        exts = extensions

        def is_valid_file(x: str) -> bool:  # noqa: F811 - same rule as torchvision
            return has_file_allowed_extension(x, exts)  # type: ignore[arg-type]

    loc = Location(os.fspath(directory), dict(storage_options or {}))
    protocol = os.fspath(directory).split("://", 1)[0]
    instances: list[tuple[str, int]] = []
    available: set[str] = set()
    for target_class in sorted(class_to_idx):
        class_index = class_to_idx[target_class]
        base = loc.join(target_class)
        for path in sorted(call(lambda: loc.fs.find(base), base, storage_options=loc.storage_options)):
            url = f"{protocol}://{path}"
            if is_valid_file(url):
                instances.append((url, class_index))
                available.add(target_class)
    empty = set(class_to_idx) - available
    if empty and not allow_empty:
        msg = f"Found no valid file for the classes {', '.join(sorted(empty))}. "
        if extensions is not None:
            msg += f"Supported extensions are: {extensions if isinstance(extensions, str) else ', '.join(extensions)}"
        raise SourceError(f"{directory}: {msg} Add images to those class folders, remove the empty folders, "
                          "or pass allow_empty=True.")
    return instances


def check_nonempty(source: str, classes: list[str], targets: list[int], *, extensions: tuple[str, ...],
                   allow_empty: bool = False) -> None:
    """Reject what ``ImageFolder`` rejects, for listings made outside it (the Dask bulk path), so
    that ``latentds encode`` accepts and refuses exactly the same sources with or without
    ``--workers``: no sample at all, or (ImageFolder layout) a class folder with no image."""
    if not targets and not classes:
        raise SourceError(f"{source}: no image files found (extensions: {', '.join(extensions)}). {LAYOUT_HINT}")
    if classes and not allow_empty:
        present = set(targets)
        empty = [c for i, c in enumerate(classes) if i not in present]
        if empty:
            # word for word what LatentDataset (ImageFolder) says for the same tree
            raise SourceError(f"Found no valid file for the classes {', '.join(sorted(empty))}. "
                              f"Supported extensions are: {', '.join(extensions)} (in {source}) Add images to "
                              "those class folders, remove the empty folders, or pass allow_empty=True.")


def _missing(directory: str | os.PathLike[str]) -> str:
    return "" if os.path.isdir(_local(directory)) else "(no such folder) "


def _local(directory: str | os.PathLike[str]) -> str:
    s = os.fspath(directory)
    return s[len("file://"):] if s.startswith("file://") else s
