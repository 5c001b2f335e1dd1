"""What every task adapter shares: samples, patient-disjoint splits, label-table reading, and
the export of a sample list to an ImageFolder tree that ``LatentDataset`` reads."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

from ..errors import LatentdsError

__all__ = [
    "class_folder_names", "column", "find_label_file", "finish", "index_files", "link_name", "patient_split",
    "read_table", "report_missing", "Sample", "SPLIT_SALT", "SPLITS", "TaskDataError", "TaskInfo",
    "to_imagefolder",
]

#: Default salt of the split hash; change it to draw a different (still deterministic) split.
SPLIT_SALT = "latentds-split-v1"
SPLITS = ("train", "test")


class TaskDataError(LatentdsError):
    """A task's label file or image tree is missing, unreadable or not in the dataset's
    published layout; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Sample:
    """One image of a task: absolute ``path``, integer ``label``, ``patient_id`` (as the
    dataset's label file gives it) and ``split`` (``"train"`` or ``"test"``)."""

    path: str
    label: int
    patient_id: str
    split: str


def patient_split(patient_id: str, test_fraction: float = 0.2, salt: str = SPLIT_SALT) -> str:
    """``"test"`` or ``"train"`` for a patient, from a hash of ``salt`` and the id alone:
    every image of a patient lands in the same split (patient-disjoint), the assignment
    never depends on the order or the other patients, and it is the same on every machine.
    About ``test_fraction`` of the patients go to test."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    digest = hashlib.sha256(f"{salt}\0{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2 ** 64
    return "test" if u < test_fraction else "train"


# ----------------------------------------------------------------------------- label tables

def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        head = fh.read(8192)
        fh.seek(0)
        try:
            dialect: Any = csv.Sniffer().sniff(head, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(fh, dialect=dialect)
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return rows


_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
_REL_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def _col_index(ref: str) -> int:
    letters = re.match(r"[A-Z]+", ref.upper())
    n = 0
    for ch in letters.group(0) if letters else "A":
        n = n * 26 + ord(ch) - 64
    return n - 1


def _cell_text(v: str) -> str:
    # Excel stores integers as floats ("1.0"); give them back as "1".
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() and "e" not in v.lower() else v


def _read_xlsx(path: Path) -> list[dict[str, str]]:
    """The first worksheet of an .xlsx file as rows of strings (header row = keys), with the
    standard library only (shared strings, inline strings, numbers; no formulas evaluated)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            shared: list[str] = []
            if "xl/sharedStrings.xml" in names:
                root = ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
                for si in root.findall("m:si", _NS):
                    shared.append("".join(t.text or "" for t in si.iter(f"{{{_NS['m']}}}t")))
            sheet = "xl/worksheets/sheet1.xml"
            if "xl/workbook.xml" in names and "xl/_rels/workbook.xml.rels" in names:
                wb = ElementTree.fromstring(z.read("xl/workbook.xml"))
                first = wb.find("m:sheets/m:sheet", _NS)
                rels = ElementTree.fromstring(z.read("xl/_rels/workbook.xml.rels"))
                if first is not None:
                    rid = first.get(_REL_NS)
                    for rel in rels:
                        if rel.get("Id") == rid:
                            target = rel.get("Target", "").lstrip("/")
                            sheet = target if target.startswith("xl/") else f"xl/{target}"
            root = ElementTree.fromstring(z.read(sheet))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError) as e:
        raise TaskDataError(f"{path}: not a readable .xlsx workbook ({e}); export it to CSV and pass that") from e
    grid: list[list[str]] = []
    for row in root.iterfind("m:sheetData/m:row", _NS):
        cells: dict[int, str] = {}
        for i, c in enumerate(row.findall("m:c", _NS)):
            idx = _col_index(c.get("r", "")) if c.get("r") else i
            kind = c.get("t", "n")
            if kind == "s":
                v = c.find("m:v", _NS)
                text = shared[int(v.text)] if v is not None and v.text else ""
            elif kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{{{_NS['m']}}}t"))
            else:
                v = c.find("m:v", _NS)
                text = v.text if v is not None and v.text is not None else ""
                if kind == "n":
                    text = _cell_text(text)
            cells[idx] = text.strip()
        if cells:
            width = max(cells) + 1
            grid.append([cells.get(j, "") for j in range(width)])
    if not grid:
        return []
    header = [h.strip() for h in grid[0]]
    return [{h: (r[j] if j < len(r) else "") for j, h in enumerate(header) if h} for r in grid[1:]
            if any(x for x in r)]


def read_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of a label file (CSV with ``,``/``;``/tab delimiter, or .xlsx) as dicts of
    stripped strings keyed by the header row."""
    p = Path(path)
    if not p.is_file():
        raise TaskDataError(f"label file not found: {p}")
    if p.suffix.lower() in (".xlsx", ".xlsm"):
        return _read_xlsx(p)
    try:
        return _read_csv(p)
    except (UnicodeDecodeError, csv.Error) as e:
        raise TaskDataError(f"{p}: not a readable CSV file ({e})") from e


def column(rows: Sequence[dict[str, str]], *candidates: str, source: Any = "") -> str:
    """The header of ``rows`` matching one of ``candidates`` (case and punctuation ignored)."""
    if not rows:
        raise TaskDataError(f"{source}: the label file has no data rows")
    by_norm = {_norm(k): k for k in rows[0]}
    for c in candidates:
        if _norm(c) in by_norm:
            return by_norm[_norm(c)]
    raise TaskDataError(f"{source}: no column {' / '.join(candidates)} (columns: {', '.join(rows[0])})")


def find_label_file(root: Path, names: Iterable[str], given: str | os.PathLike[str] | None) -> Path:
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise TaskDataError(f"label file not found: {p}")
        return p
    names = list(names)
    for base in (root, root.parent):
        for n in names:
            if (base / n).is_file():
                return base / n
    raise TaskDataError(f"none of {', '.join(names)} found in {root} (or its parent); pass labels=<path>")


def index_files(root: Path, suffixes: Sequence[str], dirs: Sequence[str] | None = None) -> dict[str, Path]:
    """File stem -> path for files with one of ``suffixes`` under ``root`` (or only under its
    sub-folders whose names match one of the glob patterns ``dirs``); a stem found twice is
    an error."""
    bases = [root] if dirs is None else sorted({p for pat in dirs for p in root.glob(pat) if p.is_dir()})
    out: dict[str, Path] = {}
    sfx = tuple(s.lower() for s in suffixes)
    for base in bases:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(sfx):
                    stem = fn[: fn.rfind(".")]
                    p = Path(dirpath) / fn
                    if stem in out and out[stem] != p:
                        raise TaskDataError(f"two images named {stem!r}: {out[stem]} and {p}")
                    out[stem] = p
    return out


def report_missing(task: str, missing: list[str], total: int, allow_missing: bool) -> None:
    """Images named by the label file but absent: an error, or a warning with ``allow_missing``."""
    if not missing:
        return
    msg = (f"{task}: {len(missing)} of {total} labelled images not found "
           f"(first: {', '.join(missing[:3])})")
    if not allow_missing:
        raise TaskDataError(msg + "; pass allow_missing=True to skip them")
    warnings.warn(msg + "; skipped", stacklevel=3)


def finish(task: str, samples: list[Sample]) -> list[Sample]:
    if not samples:
        raise TaskDataError(f"{task}: no labelled image found")
    return sorted(samples, key=lambda s: s.path)


# ----------------------------------------------------------------------------- ImageFolder export

def class_folder_names(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """Folder names whose sorted order is the label order (``"00-age-0"``, ``"01-..."``):
    ImageFolder's classes are the sorted sub-folders, so label ``k`` maps to index ``k``."""
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    width = len(str(max(num_classes - 1, 0)))
    return [f"{k:0{width}d}" + (f"-{class_names[k]}" if class_names else "") for k in range(num_classes)]


def link_name(sample: Sample) -> str:
    """The file name a sample gets in an exported tree: a hash of its source path plus its
    extension, so the tree (and any cache manifest built on it) names no patient."""
    src = os.path.abspath(sample.path)
    suffix = Path(src).suffix.lower()
    return hashlib.sha256(src.encode()).hexdigest()[:24] + suffix


def to_imagefolder(samples: Iterable[Sample], root: str | os.PathLike[str], *,
                   class_names: Sequence[str] | None = None, num_classes: int | None = None,
                   mode: Literal["symlink", "hardlink", "copy"] = "symlink") -> dict[str, Path]:
    """Lay ``samples`` out as one ImageFolder tree per split, ``root/<split>/<class>/<file>``,
    and return ``{split: tree}`` for ``LatentDataset(tree, ...)`` / ``ImageFolder(tree)``.

    Every split gets a folder for every class (``num_classes`` or ``len(class_names)``, else
    the largest label + 1), named by :func:`class_folder_names` so that ImageFolder's class
    index equals the label; a split that lacks a class then needs ``allow_empty=True``.
    Files are symlinks (default), hard links or copies named by :func:`link_name`. Running
    it again is a no-op; a name that already points elsewhere is an error. Sources keep
    their mtime and size, so a changed source is still a cache miss.
    """
    samples = list(samples)
    if mode not in ("symlink", "hardlink", "copy"):
        raise ValueError(f"mode must be 'symlink', 'hardlink' or 'copy', got {mode!r}")
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else max((s.label for s in samples), default=-1) + 1
    folders = class_folder_names(num_classes, class_names)
    root = Path(root)
    splits = sorted({s.split for s in samples} | set(SPLITS))
    out: dict[str, Path] = {}
    for split in splits:
        for name in folders:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        out[split] = root / split
    for s in samples:
        if not 0 <= s.label < num_classes:
            raise ValueError(f"label {s.label} of {s.path} outside 0..{num_classes - 1}")
        src = Path(s.path).resolve()
        if not src.is_file():
            raise TaskDataError(f"source image not found: {s.path}")
        dst = root / s.split / folders[s.label] / link_name(s)
        if dst.is_symlink() or dst.exists():
            if dst.is_symlink() and Path(os.readlink(dst)) == src:
                continue
            if not dst.is_symlink() and mode != "symlink" and dst.stat().st_size == src.stat().st_size:
                continue
            raise TaskDataError(f"{dst} already exists and is not {src}")
        tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
        if mode == "symlink":
            os.symlink(src, tmp)
        elif mode == "hardlink":
            os.link(src, tmp)
        else:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    return out


@dataclass(frozen=True)
class TaskInfo:
    """A registered task: its ``name``, the ``dataset`` it reads, class names (index = label)
    and the ``loader(root, **kwargs) -> list[Sample]``."""

    name: str
    dataset: str
    class_names: tuple[str, ...]
    description: str
    loader: Callable[..., list[Sample]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
