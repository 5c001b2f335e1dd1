"""CMMD (The Chinese Mammography Database, TCIA): malignancy and calcification tasks.

Published layout (TCIA download, NBIA Data Retriever)::

    <root>/CMMD_clinicaldata_revision.xlsx     (or a CSV export of it; ',' or ';' delimited)
    <root>/CMMD/<ID1>/<study>/<series>/1-1.dcm ...   (also accepted: DICOMs anywhere under
                                                      <root>/CMMD or <root>)

The clinical table has one row per breast with a lesion: ``ID1`` (patient, ``D1-0001``),
``LeftRight`` (``L``/``R``), ``Age``, ``number``, ``abnormality`` (``calcification``, ``mass``
or ``both``), ``classification`` (``Benign``/``Malignant``), ``subtype``. Images carry no
breast label in their path, so each DICOM header is read (no pixels): ``PatientID`` (else the
folder right under ``CMMD/``) gives the patient, ``ImageLaterality`` (else ``Laterality``)
the breast; a patient with a single row needs no laterality. Labels, per image:

* malignancy: ``classification == "Malignant"`` -> 1, ``"Benign"`` -> 0;
* calcification: ``abnormality`` in {``calcification``, ``both``} -> 1, ``mass`` -> 0.

DICOMs with no matching row are skipped with a warning (counted, never silently).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

from .base import (
    SPLIT_SALT, Sample, TaskDataError, column, find_label_file, finish, patient_split, read_table,
)

__all__ = ["CALCIFICATION_CLASSES", "LABEL_FILES", "load_cmmd", "MALIGNANCY_CLASSES"]

LABEL_FILES = ("CMMD_clinicaldata_revision.xlsx", "CMMD_clinicaldata_revision.csv", "CMMD_clinicaldata.xlsx",
               "CMMD_clinicaldata.csv")

MALIGNANCY_CLASSES = ("benign", "malignant")
CALCIFICATION_CLASSES = ("no-calcification", "calcification")


def _label(target: str, row: dict[str, str], cls_col: str, abn_col: str, source: Path) -> int:
    if target == "malignancy":
        v = row[cls_col].strip().lower()
        if v in ("malignant", "benign"):
            return int(v == "malignant")
        raise TaskDataError(f"{source}: patient {row.get('ID1', '?')}: classification {row[cls_col]!r} is "
                            "neither Benign nor Malignant")
    v = row[abn_col].strip().lower()
    if v in ("calcification", "both", "mass"):
        return int(v != "mass")
    raise TaskDataError(f"{source}: patient {row.get('ID1', '?')}: abnormality {row[abn_col]!r} is not "
                        "calcification, mass or both")


def _header(path: Path) -> tuple[str, str]:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "ImageLaterality", "Laterality"])
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise TaskDataError(f"{path}: cannot read the DICOM header ({e})") from e
    pid = str(getattr(ds, "PatientID", "") or "").strip()
    lat = str(getattr(ds, "ImageLaterality", "") or getattr(ds, "Laterality", "") or "").strip().upper()[:1]
    return pid, lat


def load_cmmd(root: str | os.PathLike[str], target: Literal["malignancy", "calcification"] = "malignancy", *,
              labels: str | os.PathLike[str] | None = None, test_fraction: float = 0.2,
              salt: str = SPLIT_SALT) -> list[Sample]:
    """CMMD samples for ``target``; see the module docstring for the layout and labels."""
    if target not in ("malignancy", "calcification"):
        raise ValueError(f"target must be 'malignancy' or 'calcification', got {target!r}")
    root = Path(root)
    table_path = find_label_file(root, LABEL_FILES, labels)
    rows = read_table(table_path)
    id_col = column(rows, "ID1", "ID", source=table_path)
    lr_col = column(rows, "LeftRight", "Laterality", source=table_path)
    cls_col = column(rows, "classification", source=table_path) if target == "malignancy" else ""
    abn_col = column(rows, "abnormality", source=table_path) if target == "calcification" else ""
    by_breast: dict[tuple[str, str], int] = {}
    by_patient: dict[str, list[int]] = {}
    for r in rows:
        pid, lr = r[id_col].strip(), r[lr_col].strip().upper()[:1]
        if not pid:
            continue
        label = _label(target, r, cls_col, abn_col, table_path)
        if (pid, lr) in by_breast and by_breast[(pid, lr)] != label:
            raise TaskDataError(f"{table_path}: patient {pid} breast {lr} has two rows with different labels")
        by_breast[(pid, lr)] = label
        by_patient.setdefault(pid, []).append(label)

    image_root = root / "CMMD" if (root / "CMMD").is_dir() else root
    dicoms = sorted(p for p in image_root.rglob("*") if p.suffix.lower() in (".dcm", ".dicom") and p.is_file())
    if not dicoms:
        raise TaskDataError(f"no DICOM file (.dcm) under {image_root}")
    samples: list[Sample] = []
    unmatched: list[str] = []
    for p in dicoms:
        pid, lat = _header(p)
        if pid not in by_patient:
            folder = p.relative_to(image_root).parts[0] if len(p.relative_to(image_root).parts) > 1 else ""
            pid = folder if folder in by_patient else pid
        if pid not in by_patient:
            unmatched.append(str(p))
            continue
        if (pid, lat) in by_breast:
            label = by_breast[(pid, lat)]
        elif len(by_patient[pid]) == 1 and lat not in ("L", "R"):
            label = by_patient[pid][0]
        else:
            unmatched.append(str(p))
            continue
        samples.append(Sample(str(p.resolve()), label, pid, patient_split(pid, test_fraction, salt)))
    if unmatched:
        warnings.warn(f"CMMD: {len(unmatched)} of {len(dicoms)} DICOM files match no row of {table_path.name} "
                      f"(patient and breast); skipped (first: {unmatched[0]})", stacklevel=2)
    return finish(f"CMMD {target}", samples)
